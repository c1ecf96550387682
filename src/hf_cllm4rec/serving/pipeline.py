"""
The `"item-recommendation"` pipeline: ranked items for users named by the data set's own ids.

Importing `hf_cllm4rec` registers it, so that

```python
>>> import hf_cllm4rec
>>> from transformers import pipeline
>>> recommender = pipeline("item-recommendation", model="runs/beauty-finetune")
>>> recommender("A3CIUOJXQ5VDQ2", top_k=3)  # a known user, prompted with the training history the checkpoint ships
[{'item_id': 'B00016XJ4M', 'score': 14.2, 'text': '...'}, ...]
>>> recommender({"history": ["B00016XJ4M", "B0009RF9DW"]})  # a new user (the cold-start prompt)
>>> recommender({"user": "A3CIUOJXQ5VDQ2", "history": [...]})  # a known user with a history given explicitly
>>> recommender(["A3CIUOJXQ5VDQ2", {"history": [...]}])  # several inputs: one list of items each
>>> recommender(raw_user_ids, batch_size=256)  # 256 users per forward pass
```

Items of a history that the model does not know are left out with a warning naming them; recommendations never
repeat an item of the history.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sized

from torch.utils.data import DataLoader
from transformers import Pipeline
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

from ..configuration_cllm4rec import CLLM4RecConfig
from ..modeling_cllm4rec import saved_model_class
from ..tokenization_cllm4rec import CLLM4RecTokenizer
from .id_mappings import IdMappings
from .recommender import Recommender

TASK = "item-recommendation"


class ItemRecommendationPipeline(Pipeline):
    """
    Top-k items of a CLLM4Rec model, in the data set's own ids, with their text and score: a [`Recommender`] behind
    the transformers pipeline API.

    The [`CLLM4RecTokenizer`] and the [`IdMappings`] (`id_mappings.json`) are loaded from the model's folder or Hub
    repository unless given.

    Args:
        model: a [`CLLM4RecForItemPrediction`], or a pretraining [`CLLM4RecForCollaborativeLM`] (its users only; a
            folder or repository loads as the class it was saved as).
        tokenizer (`CLLM4RecTokenizer` or `str`, *optional*): the model's tokenizer, or where to load it from.
        id_mappings (`IdMappings`, *optional*): raw ids, item texts and training histories of the model's users.
        top_k (`int`, *optional*, defaults to 10): how many items to return, also a call argument.
        max_length (`int`, *optional*): longest prompt in tokens; longer histories lose their oldest items.
        history_permutations (`int`, *optional*, defaults to 1): history orders the scores average over.

    Inputs are a raw user id (prompted with the training history from the mappings), a dict with `"history"` (raw
    item ids) and optionally `"user"`, or a list of those. Each input gives
    `[{"item_id": raw id, "score": float, "text": str}, ...]`, best first. With `batch_size`, that many inputs share
    a forward pass.
    """

    _load_tokenizer = False
    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False

    def __init__(self, model, tokenizer=None, id_mappings: IdMappings | None = None, **kwargs):
        source = getattr(model, "name_or_path", None)
        if not isinstance(tokenizer, CLLM4RecTokenizer):
            tokenizer_source = tokenizer or source
            if not tokenizer_source:
                raise ValueError("Pass the model's CLLM4RecTokenizer, or load the model from a folder or repository.")
            tokenizer = CLLM4RecTokenizer.from_pretrained(tokenizer_source)
        if id_mappings is None:
            if not source:
                raise ValueError("Pass `id_mappings`, or load the model from a folder or repository that has them.")
            id_mappings = IdMappings.load(source)
        self.recommender = Recommender(model, tokenizer, id_mappings, disable_tqdm=True)
        super().__init__(model=model, tokenizer=tokenizer, **kwargs)

    @property
    def id_mappings(self) -> IdMappings:
        return self.recommender.id_mappings

    def __call__(self, inputs, *args, **kwargs):
        if isinstance(inputs, (list, tuple)) and not inputs:
            raise ValueError(
                "Got an empty list of inputs: pass a raw user id, a dict with 'history', or a list of them."
            )
        return super().__call__(inputs, *args, **kwargs)

    def _sanitize_parameters(
        self,
        top_k: int | None = None,
        max_length: int | None = None,
        history_permutations: int | None = None,
        **kwargs,
    ):
        if kwargs:
            raise TypeError(f"Unknown arguments of the item-recommendation pipeline: {', '.join(kwargs)}.")
        given = {"top_k": top_k, "max_length": max_length, "history_permutations": history_permutations}
        return {}, {name: value for name, value in given.items() if value is not None}, {}

    def get_iterator(self, inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params):
        """As `Pipeline.get_iterator`, with batches collated by joining their inputs' user and history lists."""
        if isinstance(inputs, Sized):
            dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)
        else:
            dataset, num_workers = PipelineIterator(inputs, self.preprocess, preprocess_params), min(num_workers, 1)
        loader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=_join_inputs)
        model_iterator = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)

    def preprocess(self, inputs) -> dict:
        """User ids (0-based, `None` for a new user) and histories (0-based item ids) from raw ids: one of each."""
        user, history = self.recommender.resolve(inputs)
        return {"users": [user], "histories": [history]}

    def _forward(self, model_inputs: dict, top_k: int = 10, **recommender_settings) -> dict:
        recommender = dataclasses.replace(self.recommender, **recommender_settings)
        output = recommender.recommend_batch(model_inputs["users"], model_inputs["histories"], k=top_k)
        return {"item_ids": output.item_ids, "scores": output.scores}

    def postprocess(self, model_outputs: dict) -> list[dict]:
        return self.id_mappings.ranked_items(model_outputs["item_ids"][0], model_outputs["scores"][0])


def _join_inputs(inputs: list[dict]) -> dict:
    return {key: [value for model_inputs in inputs for value in model_inputs[key]] for key in ("users", "histories")}


class SavedCLLM4RecModel:
    """
    The pipeline's model class: `from_pretrained` loads a checkpoint as the class it was saved as
    ([`saved_model_class`]), so that the pipeline ranks a pretraining checkpoint as evaluation and `cllm4rec
    recommend` do.
    """

    @staticmethod
    def from_pretrained(pretrained_model_name_or_path, *args, **kwargs):
        stored = CLLM4RecConfig.get_config_dict(pretrained_model_name_or_path, **kwargs)[0]
        model_class = saved_model_class(stored.get("architectures"))
        return model_class.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


def register_pipeline() -> None:
    """Registers [`ItemRecommendationPipeline`] as the transformers task `"item-recommendation"`."""
    from transformers.pipelines import PIPELINE_REGISTRY

    if TASK not in PIPELINE_REGISTRY.supported_tasks:
        PIPELINE_REGISTRY.register_pipeline(
            TASK, pipeline_class=ItemRecommendationPipeline, pt_model=SavedCLLM4RecModel
        )


__all__ = ["ItemRecommendationPipeline", "register_pipeline", "TASK"]
