"""CLLM4Rec models: a causal-LM backbone with collaborative and content embeddings for user and item tokens."""

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.pytorch_utils import Conv1D
from transformers.utils import ModelOutput

from .configuration_cllm4rec import RETIRED_FIELDS, CLLM4RecConfig

DOCUMENT_TYPES = ("collaborative", "content")
# What each position of a collaborative document is trained to predict: the item that follows it (the paper), or the
# items that follow it to the end of the document, each weighted 1 / their number.
COLLABORATIVE_TARGETS = ("next_item", "remaining_items")

# Logits (targets x head width) the language-modelling losses hold at once: the targets are scored in chunks of
# `LOSS_CHUNK_ELEMENTS // width` rows (at least one), whose logits are recomputed in backward. 2**26 float32 logits
# are 256 MiB: 1,280 targets over GPT-2's words, 64 over a million items.
LOSS_CHUNK_ELEMENTS = 2**26

# Items scored at once by the top k and the fine-tuning loss: a batch's scores are never held for more items than this.
ITEM_CHUNK_SIZE = 65536

# LoRA adapters saved beside the weights of the modules they adapt, by the checkpoints of a training run with LoRA
# (their rank and alpha in `lora_adapters.json`) and by earlier versions (in config.json).
LORA_WEIGHT_SUFFIXES = (".lora_A.default.weight", ".lora_B.default.weight")
LORA_ADAPTERS_NAME = "lora_adapters.json"


@dataclass
class CLLM4RecLMOutput(ModelOutput):
    """
    Output of [`CLLM4RecForCollaborativeLM`].

    Args:
        loss: language-modelling loss on the main text plus the mutual-regularization term.
        lm_loss: next-token loss over main-text tokens (item space or vocabulary, by document type), per target.
        regularization_loss: `lambda_v / 2 * ||z - stopgrad(z_other)||^2` over the batch's ID tokens, per target.
        logits: next-token logits `(batch, length, space)` over the document type's token space; only computed when
            no `labels` are given (with labels, logits are computed at target positions alone and not returned).
        last_hidden_state: the backbone's last hidden states.
    """

    loss: torch.FloatTensor | None = None
    lm_loss: torch.FloatTensor | None = None
    regularization_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None


@dataclass
class CLLM4RecItemPredictionOutput(ModelOutput):
    """
    Output of [`CLLM4RecForItemPrediction`].

    Args:
        loss: multinomial negative log-likelihood of the target items plus the mutual-regularization term.
        recommendation_loss: the multinomial negative log-likelihood of the targets, per target.
        regularization_loss: the mutual-regularization term, per target.
        logits: item scores `(batch, num_items)` of each prompt's query vector (`config.read_out`); with `labels`,
            only for a catalogue of at most `ITEM_CHUNK_SIZE` items (the loss of a larger one scores them in chunks).
    """

    loss: torch.FloatTensor | None = None
    recommendation_loss: torch.FloatTensor | None = None
    regularization_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


@dataclass
class RecommendationOutput(ModelOutput):
    """Top-k recommendations: `item_ids` and `scores`, both `(batch, k)`, best first."""

    item_ids: torch.LongTensor | None = None
    scores: torch.FloatTensor | None = None


class CLLM4RecPreTrainedModel(PreTrainedModel):
    config_class = CLLM4RecConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    # saved LoRA adapters are folded into the weights they adapt (see `from_pretrained`)
    _keys_to_ignore_on_load_unexpected = [r"\.lora_[AB]\.default\.weight$"]

    def get_input_embeddings(self) -> nn.Module:
        """The backbone's word embeddings (user and item tokens have tables of their own)."""
        return self.base_model.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.base_model.backbone.set_input_embeddings(value)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """
        Like `PreTrainedModel.from_pretrained`, but a checkpoint that does not fit the requested config fails, and
        LoRA adapters saved in the checkpoint (by a training run in progress, or an earlier version) are folded into
        the backbone's weights: the model loads with plain weights.

        A damaged checkpoint fails with a `ValueError` that names the problem: a weights file that is not a valid
        safetensors file, counts of the config that the weights do not have, weights missing, unexpected or of
        another shape, weights that are not finite. Pass `output_loading_info=True` to judge missing and unexpected
        weights yourself, `ignore_mismatched_sizes=True` to initialize weights of another shape anew.
        """
        refuse_retired_fields(kwargs)
        check_keys = not kwargs.get("output_loading_info", False)
        check_shapes = not kwargs.get("ignore_mismatched_sizes", False)
        kwargs.update(output_loading_info=True, ignore_mismatched_sizes=True)  # judged below instead
        lora_scaling = None
        if pretrained_model_name_or_path is not None:
            hub_kwargs = {
                key: kwargs[key]
                for key in ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")
                if key in kwargs
            }
            stored, _ = CLLM4RecConfig.get_config_dict(pretrained_model_name_or_path, **hub_kwargs)
            check_checkpoint_compatibility(stored, kwargs, pretrained_model_name_or_path)
            check_weight_files(pretrained_model_name_or_path, stored if check_shapes else None, hub_kwargs)
            lora_scaling = saved_lora_scaling(pretrained_model_name_or_path, stored, hub_kwargs)
            if lora_scaling is not None:  # the adapted modules' own weights are saved as `<module>.base_layer.*`
                kwargs["key_mapping"] = {r"\.base_layer\.": "."}
        model, loading_info = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        if lora_scaling is not None:
            adapters = saved_lora_adapters(pretrained_model_name_or_path, hub_kwargs)
            fold_lora_adapters(model, adapters, lora_scaling)
        source = pretrained_model_name_or_path or "the given state dict"
        check_loading_info(loading_info, source, check_keys, check_shapes)
        check_finite_weights(model, source)
        return model if check_keys else (model, loading_info)

    @classmethod
    def from_backbone(
        cls, backbone_name_or_path: str | os.PathLike, num_users: int, num_items: int, **kwargs
    ) -> "CLLM4RecPreTrainedModel":
        """
        Builds a CLLM4Rec model around a pretrained causal LM (a Hub name or a local folder).

        Keyword arguments that `CLLM4RecConfig` knows go to the config; the rest (`dtype`, `attn_implementation`,
        `revision`, ...) go to `AutoModelForCausalLM.from_pretrained`. The new ID embeddings are initialized as
        `id_embedding_init` says (default N(0, `initializer_range`)); the backbone keeps its pretrained weights.
        """
        refuse_retired_fields(kwargs)
        config_fields = set(CLLM4RecConfig.__dataclass_fields__) - {"text_config"}
        config_kwargs = {key: kwargs.pop(key) for key in list(kwargs) if key in config_fields}
        backbone = AutoModelForCausalLM.from_pretrained(backbone_name_or_path, **kwargs)
        config = CLLM4RecConfig(
            text_config=backbone.config,
            num_users=num_users,
            num_items=num_items,
            # the config's constructor sets the attention implementation on its sub-config: keep the backbone's
            attn_implementation=backbone.config._attn_implementation,
            **config_kwargs,
        )
        config.base_model_name_or_path = str(backbone_name_or_path)
        return cls(config, backbone=backbone)


def refuse_retired_fields(kwargs: dict) -> None:
    """Raises a `ValueError` for keyword arguments that were config fields of earlier versions."""
    retired = sorted(set(kwargs) & set(RETIRED_FIELDS))
    if retired:
        raise ValueError(
            f"{', '.join(retired)} no longer belong to the model's config: `mask_ratio`, `backbone_training` and "
            "the LoRA options are training arguments (see `hf_cllm4rec.training`), `history_permutations` an option "
            "of scoring (`Recommender`, `evaluate_model`)."
        )


def saved_lora_scaling(pretrained_model_name_or_path, stored: dict, hub_kwargs: dict) -> float | None:
    """The scaling of the LoRA adapters a checkpoint holds (`lora_alpha / r`), `None` when it holds none."""
    from transformers.utils import cached_file

    if stored.get("backbone_training") == "lora":  # a config of an earlier version
        return stored.get("lora_alpha", 16) / stored.get("lora_rank", 8)
    path = cached_file(
        pretrained_model_name_or_path, LORA_ADAPTERS_NAME, _raise_exceptions_for_missing_entries=False, **hub_kwargs
    )
    if path is None:
        return None
    with open(path) as file:
        lora_config = json.load(file)
    rank = lora_config["r"]
    return lora_config["lora_alpha"] / (rank**0.5 if lora_config.get("use_rslora") else rank)


def saved_lora_adapters(pretrained_model_name_or_path, hub_kwargs: dict) -> dict[str, torch.Tensor]:
    """The LoRA adapter weights saved in a checkpoint's safetensors files, by name."""
    from transformers.modeling_utils import load_state_dict
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file
    from transformers.utils.hub import get_checkpoint_shard_files

    options = {**hub_kwargs, "_raise_exceptions_for_missing_entries": False}
    single = cached_file(pretrained_model_name_or_path, SAFE_WEIGHTS_NAME, **options)
    if single is not None:
        files = [single]
    else:
        index = cached_file(pretrained_model_name_or_path, SAFE_WEIGHTS_INDEX_NAME, **hub_kwargs)
        files, _ = get_checkpoint_shard_files(pretrained_model_name_or_path, index, **hub_kwargs)
    weights = {}
    for file in files:  # memory-mapped: only the adapters are read
        weights.update(load_state_dict(file))
    return {key: value for key, value in weights.items() if key.endswith(LORA_WEIGHT_SUFFIXES)}


@torch.no_grad()
def fold_lora_adapters(model: nn.Module, adapters: dict[str, torch.Tensor], scaling: float) -> None:
    """Adds `scaling * B @ A` of each saved adapter to the weight of the module it adapts (transposed for `Conv1D`)."""
    down_suffix, up_suffix = LORA_WEIGHT_SUFFIXES
    for key, down in adapters.items():
        if not key.endswith(down_suffix):
            continue
        name = key.removesuffix(down_suffix)
        module = model.get_submodule(name)
        delta = scaling * (adapters[name + up_suffix].float() @ down.float())
        weight = module.weight
        weight.add_((delta.T if isinstance(module, Conv1D) else delta).to(weight.dtype))


def check_checkpoint_compatibility(stored: dict, kwargs: dict, source) -> None:
    """
    Raises a `ValueError` when a stored CLLM4Rec config does not fit the config or overrides asked for (the config of
    another model type is refused as it is read, by `CLLM4RecConfig`).
    """
    requested = kwargs.get("config")
    requested = requested.to_dict() if isinstance(requested, CLLM4RecConfig) else {}
    # the fields that set the item head's weights, with their defaults
    head_fields = {"tie_item_head": True, "item_bias": False}
    overridable = ("num_users", "num_items", *head_fields)
    requested.update({key: kwargs[key] for key in overridable if key in kwargs})
    for key in ("num_users", "num_items"):
        if key in requested and requested[key] != stored.get(key):
            raise ValueError(
                f"The checkpoint {source} has {key}={stored.get(key)}, but {key}={requested[key]} was requested: "
                f"a checkpoint only loads into a model of the same user and item catalogue."
            )
    for key, default in head_fields.items():
        if key in requested and requested[key] != stored.get(key, default):
            raise ValueError(
                f"The checkpoint {source} has {key}={stored.get(key, default)}, but {key}={requested[key]} was "
                f"requested: an item head loads only as it was saved (tied or with a table of its own, with or "
                f"without an item bias)."
            )
    if "text_config" in requested:
        for key in ("model_type", "vocab_size", "hidden_size", "n_embd", "num_hidden_layers", "n_layer"):
            want, have = requested["text_config"].get(key), stored.get("text_config", {}).get(key)
            if want is not None and have is not None and want != have:
                raise ValueError(
                    f"The checkpoint {source} has a backbone with {key}={have}, but the requested config has "
                    f"{key}={want}: the backbones do not match."
                )


# The config count that gives the rows of each ID-sized weight (keys as a head model saves them, less `model.`).
ID_TABLE_COUNTS = {
    "user_collaborative_embeddings.weight": "num_users",
    "user_content_embeddings.weight": "num_users",
    "item_collaborative_embeddings.weight": "num_items",
    "item_content_embeddings.weight": "num_items",
    "item_head.weight": "num_items",
    "item_bias": "num_items",
}


# The largest header the safetensors library reads: a longer one is garbage, not read into memory.
SAFETENSORS_MAX_HEADER_SIZE = 100_000_000


def check_weight_files(source, stored: dict | None, hub_kwargs: dict) -> None:
    """
    Raises a `ValueError` naming a safetensors file of checkpoint `source` that is not valid, or a count of its config
    `stored` (`num_users`, `num_items`) that its ID tables do not have (unless `stored` is `None`). Reads the files'
    headers only, before any weight is allocated.
    """
    shapes = {}
    for path in checkpoint_safetensors_files(source, hub_kwargs):
        shapes.update(safetensors_shapes(path))
    for key, shape in shapes.items() if stored is not None else ():
        field = ID_TABLE_COUNTS.get(key.removeprefix("model."))
        if field is not None and isinstance(stored.get(field), int) and shape[:1] != [stored[field]]:
            raise ValueError(
                f"The config of {source} has {field}={stored[field]}, but its weights `{key}` have the shape "
                f"{tuple(shape)}: config.json does not describe these weights."
            )


def checkpoint_safetensors_files(source, hub_kwargs: dict) -> list[str]:
    """The safetensors files of checkpoint `source`: one, or the shards its index names; none if it has none."""
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file
    from transformers.utils.hub import get_checkpoint_shard_files

    options = {**hub_kwargs, "_raise_exceptions_for_missing_entries": False}
    single = cached_file(source, SAFE_WEIGHTS_NAME, **options)
    if single is not None:
        return [single]
    index = cached_file(source, SAFE_WEIGHTS_INDEX_NAME, **options)
    return [] if index is None else get_checkpoint_shard_files(source, index, **hub_kwargs)[0]


def safetensors_shapes(path) -> dict[str, list[int]]:
    """
    The shape of each tensor of the safetensors file `path`, from its header alone; a `ValueError` naming the file
    when it is not a valid safetensors file: empty, cut short, or something else altogether.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as file:
        header_size = int.from_bytes(file.read(8), "little")
        header = file.read(header_size) if header_size <= min(size - 8, SAFETENSORS_MAX_HEADER_SIZE) else None
    try:
        tensors = json.loads(header) if header else None
    except (ValueError, RecursionError):
        tensors = None
    if not isinstance(tensors, dict):
        problem = "it is empty" if size == 0 else "its header is cut short or is not a safetensors header"
        raise ValueError(f"{path} is not a valid safetensors file: {problem}. Save or download the checkpoint again.")
    tensors.pop("__metadata__", None)
    is_valid = all(
        isinstance(entry, dict)
        and all(isinstance(entry.get(name), list) for name in ("shape", "data_offsets"))
        and all(type(value) is int and value >= 0 for value in entry["shape"] + entry["data_offsets"])
        and len(entry["data_offsets"]) == 2
        for entry in tensors.values()
    )
    data_size = size - 8 - header_size
    if not is_valid or max((entry["data_offsets"][1] for entry in tensors.values()), default=0) != data_size:
        raise ValueError(
            f"{path} is not a valid safetensors file: its header does not describe its {data_size} bytes of data "
            "(cut short?). Save or download the checkpoint again."
        )
    return {key: entry["shape"] for key, entry in tensors.items()}


def check_loading_info(loading_info: dict, source, check_keys: bool, check_shapes: bool) -> None:
    """
    Raises a `ValueError` naming the weights that a checkpoint lacks or holds in excess (when `check_keys`), and those
    it holds in another shape (when `check_shapes`). Weights tied by design (a backbone's LM head tied to its word
    embeddings) are not saved, and transformers does not count them missing.
    """
    problems = []
    if check_keys and loading_info["missing_keys"]:
        problems.append(f"missing {listed(loading_info['missing_keys'])}")
    if check_keys and loading_info["unexpected_keys"]:
        problems.append(f"unexpected {listed(loading_info['unexpected_keys'])}")
    if check_shapes and loading_info["mismatched_keys"]:
        mismatched = [
            f"{key} {tuple(saved)} instead of {tuple(expected)}"
            for key, saved, expected in loading_info["mismatched_keys"]
        ]
        problems.append(f"of another shape {listed(mismatched)}")
    if problems:
        raise ValueError(
            f"The weights of {source} do not fit the model: {'; '.join(problems)}. The checkpoint is incomplete or "
            "damaged, or its config.json does not describe its weights."
        )


@torch.no_grad()
def check_finite_weights(model: nn.Module, source) -> None:
    """Raises a `ValueError` naming the parameters of a loaded model that hold NaN or infinite values."""
    non_finite = [
        name
        for name, parameter in model.named_parameters()
        # float8 has no reductions; offloaded parameters stay on the meta device
        if parameter.is_floating_point()
        and parameter.dtype.itemsize > 1
        and parameter.device.type != "meta"
        and parameter.numel()
        and not torch.isfinite(torch.stack(torch.aminmax(parameter))).all()
    ]
    if non_finite:
        raise ValueError(
            f"The weights of {source} hold NaN or infinite values, in {listed(non_finite)}: the checkpoint is damaged, "
            "or the training run that wrote it diverged."
        )


def check_collaborative_targets(collaborative_targets: str) -> None:
    """Raises a `ValueError` unless `collaborative_targets` is one of `COLLABORATIVE_TARGETS`."""
    if collaborative_targets not in COLLABORATIVE_TARGETS:
        raise ValueError(
            f"collaborative_targets must be one of {COLLABORATIVE_TARGETS}, got {collaborative_targets!r}."
        )


def check_softmax_items(softmax_items: torch.Tensor | None, targets: torch.LongTensor, num_items: int) -> None:
    """
    Raises a `ValueError` unless `softmax_items` is `None` or a boolean mask over the `num_items` items that holds
    every one of the 0-based `targets`.
    """
    if softmax_items is None:
        return
    if softmax_items.dtype != torch.bool or softmax_items.shape != (num_items,):
        raise ValueError(
            f"softmax_items must be a boolean mask of shape ({num_items},), one entry per item; got "
            f"{softmax_items.dtype} of shape {tuple(softmax_items.shape)}."
        )
    outside = targets[~softmax_items[targets]]
    if outside.numel():
        raise ValueError(
            f"Target item {int(outside[0])} is left out of softmax_items: a target must be among the items the "
            "softmax normalizes over."
        )


def check_token_inputs(input_ids, attention_mask, context_length: int | None) -> None:
    """
    Raises a `ValueError` unless `input_ids` is a non-empty `(batch, length)` tensor of integer token ids no longer
    than the backbone's context, and `attention_mask` (if given) a tensor that fits it.
    """
    for name, value in (("input_ids", input_ids), ("attention_mask", attention_mask)):
        if value is not None and not isinstance(value, torch.Tensor):
            raise ValueError(
                f"`{name}` must be a tensor of shape (batch, length), got {type(value).__name__}: the model's "
                "CLLM4RecTokenizer turns user ids and histories into them."
            )
    if input_ids.ndim != 2 or not input_ids.numel():
        raise ValueError(
            f"`input_ids` must be a (batch, length) tensor with at least one token, got shape {tuple(input_ids.shape)}."
        )
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise ValueError(f"`input_ids` must hold integer token ids, got {input_ids.dtype}.")
    if context_length is not None and input_ids.shape[1] > context_length:
        raise ValueError(
            f"`input_ids` holds {input_ids.shape[1]} tokens per row, more than the backbone's context of "
            f"{context_length}: shorten the prompts (the CLLM4RecTokenizer keeps them within the context)."
        )
    # a cache may make the mask longer than the new tokens, never shorter
    if attention_mask is not None and attention_mask.ndim == 2:
        if attention_mask.shape[0] != input_ids.shape[0] or attention_mask.shape[1] < input_ids.shape[1]:
            raise ValueError(
                f"`attention_mask` of shape {tuple(attention_mask.shape)} does not fit `input_ids` of shape "
                f"{tuple(input_ids.shape)}."
            )


def listed(names, shown: int = 5) -> str:
    """The first `shown` of `names`, sorted and comma-separated, with the number of the others."""
    names = sorted(names)
    listing = ", ".join(names[:shown])
    return listing if len(names) <= shown else f"{listing} and {len(names) - shown} more"


class CLLM4RecModel(CLLM4RecPreTrainedModel):
    """
    The backbone with the ID embedding tables and the routing of token ids to them.

    Token ids below `config.vocab_size` are words (the backbone's embeddings); then come `num_users` user tokens and
    `num_items` item tokens, each looked up in the collaborative or the content table, by document type.
    """

    def __init__(self, config: CLLM4RecConfig, backbone: PreTrainedModel | None = None):
        super().__init__(config)
        self.backbone = backbone or AutoModelForCausalLM.from_config(config.text_config)
        hidden_size = config.hidden_size
        self.user_collaborative_embeddings = nn.Embedding(config.num_users, hidden_size)
        self.item_collaborative_embeddings = nn.Embedding(config.num_items, hidden_size)
        self.user_content_embeddings = nn.Embedding(config.num_users, hidden_size)
        self.item_content_embeddings = nn.Embedding(config.num_items, hidden_size)
        self.item_head = None if config.tie_item_head else nn.Linear(hidden_size, config.num_items, bias=False)
        self.item_bias = nn.Parameter(torch.zeros(config.num_items)) if config.item_bias else None
        self.post_init()
        if config.id_embedding_init == "vocabulary":
            self.init_id_embeddings_from_vocabulary()

    def init_id_embeddings_from_vocabulary(self) -> None:
        """Draws each ID embedding's dimensions from the mean and standard deviation of the word embeddings' ones."""
        words = self.get_input_embeddings().weight.detach().float()
        mean, std = words.mean(0), words.std(0)
        for side in DOCUMENT_TYPES:
            for table in self.id_embedding_tables(side):
                drawn = mean + std * torch.randn(table.weight.shape, device=words.device)
                init.copy_(table.weight, drawn.to(table.weight.dtype))

    def id_embedding_tables(self, side: str) -> tuple[nn.Embedding, nn.Embedding]:
        """The (user, item) embedding tables of `side`, `"collaborative"` or `"content"`."""
        if side == "collaborative":
            return self.user_collaborative_embeddings, self.item_collaborative_embeddings
        if side == "content":
            return self.user_content_embeddings, self.item_content_embeddings
        raise ValueError(f"document type must be one of {DOCUMENT_TYPES}, got {side!r}.")

    def embed_tokens(self, input_ids: torch.LongTensor, side: str = "collaborative") -> torch.Tensor:
        """Embeddings of extended-vocabulary ids: words from the backbone, IDs from the tables of `side`."""
        config = self.config
        user_table, item_table = self.id_embedding_tables(side)
        low, high = torch.stack(torch.aminmax(input_ids)).tolist()  # the one host sync of the lookup
        if low < 0 or high >= config.extended_vocab_size:
            bad = low if low < 0 else high
            raise ValueError(
                f"Token id {bad} is outside the extended vocabulary: {config.vocab_size} words + {config.num_users} "
                f"users + {config.num_items} items = {config.extended_vocab_size} ids."
            )
        is_id = input_ids >= config.user_token_offset
        is_user = is_id & (input_ids < config.item_token_offset)
        embeddings = self.get_input_embeddings()(input_ids.masked_fill(is_id, 0))
        # every position looks up all three tables (clamped) and keeps its own: no data-dependent shapes, no syncs
        user_embeddings = user_table((input_ids - config.user_token_offset).clamp(0, config.num_users - 1))
        item_embeddings = item_table((input_ids - config.item_token_offset).clamp(0, config.num_items - 1))
        id_embeddings = torch.where(is_user[..., None], user_embeddings, item_embeddings)
        # the rate is read from the config, so setting it on a loaded model (as fine-tuning may) takes effect
        id_embeddings = F.dropout(id_embeddings, config.id_embedding_dropout, self.training)
        return torch.where(is_id[..., None], id_embeddings.to(embeddings.dtype), embeddings)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        document_type: str = "collaborative",
        **kwargs,
    ) -> BaseModelOutputWithPast:
        check_token_inputs(input_ids, attention_mask, self.config.context_length)
        inputs_embeds = self.embed_tokens(input_ids, document_type)
        return self.backbone.base_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)

    def item_head_weight(self) -> nn.Parameter:
        """The item head `(num_items, hidden)`: the collaborative item embeddings, or its own table when untied."""
        return (self.item_collaborative_embeddings if self.item_head is None else self.item_head).weight

    def item_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Scores over all items: the hidden states times the item head, plus the item bias where there is one."""
        return item_logits(hidden_states, self.item_head_weight(), self.item_bias)

    def word_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Scores over the word vocabulary: the backbone's LM head (tied to its word embeddings where it ties)."""
        return self.backbone.get_output_embeddings()(hidden_states)

    def read_out_hidden_states(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """
        The query vector `(batch, hidden)` of each prompt (left or right padding), its history read as
        `config.history_attention` says: with `config.read_out="last"` the hidden state of the last real token; with
        `"mean"` the mean of the hidden states from the token before the first history item to the last real token
        (every position that predicts a history item, and the last), weighted by `config.read_out_prefix_power`, or
        the last token's for a prompt without a history.
        """
        if self.config.history_attention == "causal":
            hidden_states = self(input_ids, attention_mask, "collaborative").last_hidden_state
        else:
            read_out_inputs = self.history_attention_inputs(input_ids, attention_mask)
            hidden_states = self(input_ids, document_type="collaborative", **read_out_inputs).last_hidden_state
        real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        last_positions = (real * positions).argmax(-1)
        if self.config.read_out == "last":
            return hidden_states[torch.arange(input_ids.shape[0], device=input_ids.device), last_positions]
        is_history = real & (input_ids >= self.config.item_token_offset)
        first_history = torch.where(is_history, positions, input_ids.shape[1]).amin(-1)
        first_positions = torch.where(is_history.any(-1), (first_history - 1).clamp(min=0), last_positions)
        read = (positions >= first_positions[:, None]) & (positions <= last_positions[:, None])
        if self.config.read_out_prefix_power:  # the position that has read k history items weighs (k + 1) ** power
            prefix_lengths = read.cumsum(-1) * read
            read = (prefix_lengths / prefix_lengths.amax(-1, keepdim=True)) ** self.config.read_out_prefix_power
        weights = (read / read.sum(-1, keepdim=True)).to(hidden_states.dtype)
        return (weights[..., None] * hidden_states).sum(1)

    def history_attention_inputs(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """
        The backbone's `attention_mask` `(batch, 1, length, length)` for a read-out prompt whose history (its item
        tokens) is read in both directions: a token sees the real tokens before it and, if it is a history item, every
        history item; each token sees itself, padding nothing else. With `history_attention="set"` also `position_ids`
        where the history takes one position, that of its first item.
        """
        implementation = self.backbone.config._attn_implementation
        if implementation not in ("eager", "sdpa"):
            raise ValueError(
                f"history_attention={self.config.history_attention!r} needs a backbone with 'eager' or 'sdpa' "
                f"attention, which take a 4D attention mask; this one has {implementation!r}."
            )
        real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        is_history = real & (input_ids >= self.config.item_token_offset)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        causal = positions[:, None] >= positions[None, :]
        visible = (causal | (is_history[:, :, None] & is_history[:, None, :])) & real[:, :, None] & real[:, None, :]
        visible = (visible | (positions[:, None] == positions[None, :]))[:, None]
        if implementation == "eager":  # an additive mask
            dtype = self.get_input_embeddings().weight.dtype
            visible = torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill(
                ~visible, torch.finfo(dtype).min
            )
        inputs = {"attention_mask": visible}
        if self.config.history_attention == "set":
            follows_history = is_history & F.pad(is_history[:, :-1], (1, 0))
            inputs["position_ids"] = (~follows_history).cumsum(-1) - 1
        return inputs

    def read_out_item_logits(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Item scores `(batch, num_items)` of each prompt's query vector (see [`read_out_hidden_states`])."""
        return self.item_logits(self.read_out_hidden_states(input_ids, attention_mask))

    def language_modeling(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        labels: torch.LongTensor | None,
        document_type: str,
        num_items_in_batch: int | torch.Tensor | None = None,
        collaborative_targets: str = "next_item",
        softmax_items: torch.BoolTensor | None = None,
        **kwargs,
    ) -> CLLM4RecLMOutput:
        """
        Next-token loss of collaborative (item space) or content (vocabulary) documents, with regularization; with
        `collaborative_targets="remaining_items"` each position of a collaborative document predicts the items that
        follow it to the document's end instead of the next one alone. `softmax_items` (collaborative documents)
        masks the items the softmax normalizes over.
        """
        check_collaborative_targets(collaborative_targets)
        config = self.config
        hidden_states = self(input_ids, attention_mask, document_type, **kwargs).last_hidden_state
        head = self.item_logits if document_type == "collaborative" else self.word_logits
        if labels is None:
            return CLLM4RecLMOutput(logits=head(hidden_states), last_hidden_state=hidden_states)

        if labels.shape != input_ids.shape:
            raise ValueError(
                f"`labels` must have the shape of `input_ids` {tuple(input_ids.shape)}, got {tuple(labels.shape)}."
            )
        targets = labels[:, 1:]
        is_target = targets != -100
        targets = targets[is_target]
        if not targets.numel():
            raise ValueError("The batch has no main-text token to predict: every label is -100.")
        if document_type == "collaborative":
            kind, low, high = "item", config.item_token_offset, config.extended_vocab_size
        else:
            kind, low, high = "word", 0, config.vocab_size
        outside = targets[(targets < low) | (targets >= high)]
        if outside.numel():
            raise ValueError(
                f"Targets of {document_type} documents must be {kind} tokens (ids {low} to {high - 1}) or -100, "
                f"got {int(outside[0])}."
            )
        if document_type == "collaborative":
            targets = targets - config.item_token_offset
            check_softmax_items(softmax_items, targets, config.num_items)
            if softmax_items is not None:
                head = masked_head(head, softmax_items)
        normalizer = targets.numel() if num_items_in_batch is None else num_items_in_batch
        if document_type == "collaborative" and collaborative_targets == "remaining_items":
            items = (labels[:, 1:] - config.item_token_offset).clamp(min=0)
            summed_loss = summed_remaining_items_nll(
                self.item_head_weight(), hidden_states[:, :-1], items, is_target, softmax_items, self.item_bias
            )
        else:
            chunk_size = max(1, LOSS_CHUNK_ELEMENTS // (high - low))  # targets per chunk of at most the logits budget
            summed_loss = summed_cross_entropy(head, hidden_states[:, :-1][is_target], targets, chunk_size)
        lm_loss = summed_loss / normalizer
        regularization_loss = self.mutual_regularization(input_ids, attention_mask, document_type) / normalizer
        return CLLM4RecLMOutput(
            loss=lm_loss + regularization_loss,
            lm_loss=lm_loss,
            regularization_loss=regularization_loss,
            last_hidden_state=hidden_states,
        )

    def mutual_regularization(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        side: str,
        extra_item_ids: torch.LongTensor | None = None,
    ) -> torch.Tensor:
        """
        `lambda_v / 2 * ||z_side - stopgrad(z_other)||^2` summed over the ID tokens of the batch (every occurrence).

        The losses divide it by the number of prediction targets, like the likelihood term, so the objective is the
        paper's MAP objective per target: independent of batch size and document length, and exact under gradient
        accumulation and data parallelism. `extra_item_ids` are 0-based item ids that take part without appearing in
        `input_ids` (prediction targets); negative entries are padding.
        """
        config = self.config
        if config.lambda_v == 0:
            return input_ids.new_zeros((), dtype=torch.float32)
        real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        user_tables, item_tables = zip(
            self.id_embedding_tables(side),
            self.id_embedding_tables("content" if side == "collaborative" else "collaborative"),
            strict=True,
        )
        # every position is looked up (clamped) and counted where it holds an ID: no data-dependent shapes
        occurrences = [
            (
                user_tables,
                (input_ids - config.user_token_offset).clamp(0, config.num_users - 1),
                real & (input_ids >= config.user_token_offset) & (input_ids < config.item_token_offset),
            ),
            (
                item_tables,
                (input_ids - config.item_token_offset).clamp(0, config.num_items - 1),
                real & (input_ids >= config.item_token_offset),
            ),
        ]
        if extra_item_ids is not None:
            occurrences.append((item_tables, extra_item_ids.clamp(min=0), extra_item_ids >= 0))
        squared_distance = input_ids.new_zeros((), dtype=torch.float32)
        for (table, other_table), ids, present in occurrences:
            difference = table(ids).float() - other_table(ids).detach().float()
            squared_distance = squared_distance + (difference.pow(2).sum(-1) * present).sum()
        return config.lambda_v / 2 * squared_distance


class ItemScoringMixin:
    """
    Item scores of a prompt's query vector (read as `config.read_out` says), and the best items from them, for
    tokenized prompts (see [`CLLM4RecTokenizer.__call__`]): the item predictor's recommendation, the collaborative
    LM's next item.
    """

    @torch.no_grad()
    def query_vectors(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Each prompt's query vector `(batch, hidden)` (`config.read_out`): the scores are it times the head."""
        if isinstance(attention_mask, torch.Tensor) and attention_mask.ndim == 2 and attention_mask.numel():
            if not bool(attention_mask.bool().any(-1).all()):
                raise ValueError("A row of `attention_mask` masks every token: each prompt needs a real token.")
        return self.model.read_out_hidden_states(input_ids, attention_mask)

    @torch.no_grad()
    def item_scores(self, query_vectors: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Float32 scores `(batch, stop - start)` of the items `start` to `stop` (default: all) for `query_vectors`."""
        bias = None if self.model.item_bias is None else self.model.item_bias[start:stop]
        return item_logits(query_vectors, self.model.item_head_weight()[start:stop], bias).float()

    @torch.no_grad()
    def score_items(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 scores `(batch, num_items)` of every item for each prompt's query vector."""
        return self.item_scores(self.query_vectors(input_ids, attention_mask))

    @torch.no_grad()
    def recommend(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        *,
        k: int = 10,
        exclude_item_ids: torch.LongTensor | None = None,
    ) -> RecommendationOutput:
        """
        The `k` best items for each prompt, in one forward pass, the items scored `ITEM_CHUNK_SIZE` at a time.

        `exclude_item_ids` `(batch, n)` holds the 0-based ids of items never to recommend to each row (its history),
        padded with -1.
        """
        queries = self.query_vectors(input_ids, attention_mask)
        return chunked_top_k_items(
            lambda start, stop: self.item_scores(queries, start, stop),
            len(queries),
            self.config.num_items,
            k,
            exclude_item_ids,
        )


def top_k_items(
    scores: torch.Tensor, k: int, exclude_item_ids: torch.LongTensor | None = None
) -> RecommendationOutput:
    """
    The `k` best-scored items of each row of `scores` `(batch, num_items)` outside `exclude_item_ids` (`(batch, n)`,
    0-based, padded with -1); a `ValueError` where fewer than `k` items are left or a score is NaN.
    """
    batch_size, num_items = scores.shape
    return chunked_top_k_items(
        lambda start, stop: scores[:, start:stop], batch_size, num_items, k, exclude_item_ids, max(num_items, 1)
    )


def chunked_top_k_items(
    item_scores,
    batch_size: int,
    num_items: int,
    k: int,
    exclude_item_ids: torch.LongTensor | None = None,
    chunk_size: int | None = None,
) -> RecommendationOutput:
    """
    [`top_k_items`] of scores computed `chunk_size` items at a time (default `ITEM_CHUNK_SIZE`): `item_scores(start,
    stop)` returns the scores `(batch_size, stop - start)` of items `start` to `stop`, and a running top k keeps the
    best of the chunks seen, so no more than one chunk of scores is held. A catalogue of one chunk is ranked by one
    `topk`, as the full score matrix would be.
    """
    check_top_k(k, num_items, exclude_item_ids, batch_size)
    chunk_size = ITEM_CHUNK_SIZE if chunk_size is None else chunk_size
    best_scores = best_item_ids = None
    for start in range(0, num_items, chunk_size):
        stop = min(start + chunk_size, num_items)
        scores = item_scores(start, stop)
        if exclude_item_ids is not None:
            # one column past the chunk takes the ids outside it (and the padding), and is dropped
            local = exclude_item_ids.to(scores.device, torch.long) - start
            local = local.masked_fill((local < 0) | (local >= stop - start), stop - start)
            excluded = torch.zeros(batch_size, stop - start + 1, dtype=torch.bool, device=scores.device)
            scores = scores.masked_fill(excluded.scatter_(1, local, True)[:, :-1], -torch.inf)
        top_scores, top_item_ids = scores.topk(min(k, stop - start), dim=-1)
        if top_scores.isnan().any():  # topk ranks NaN above every number: a NaN score of a rankable item is here
            raise ValueError(
                "The model's weights hold NaN: its item scores are NaN, which rank nothing. Check the checkpoint, or "
                "the training run that wrote it."
            )
        if best_scores is None:
            best_scores, best_item_ids = top_scores, top_item_ids + start
            continue
        # earlier (lower) item ids first, as in one topk over all items
        candidates = torch.cat([best_scores, top_scores], dim=-1)
        best_scores, positions = candidates.topk(min(k, candidates.shape[1]), dim=-1)
        best_item_ids = torch.cat([best_item_ids, top_item_ids + start], dim=-1).gather(1, positions)
    return RecommendationOutput(item_ids=best_item_ids, scores=best_scores)


def check_top_k(
    k: int, num_items: int, exclude_item_ids: torch.LongTensor | None = None, batch_size: int | None = None
) -> None:
    """
    Raises a `ValueError` unless `k` lies in `[1, num_items]` and `exclude_item_ids` (if given) is `(batch_size, n)`
    with item ids in `[0, num_items)` padded with -1, leaving at least `k` items to each row.
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= num_items:
        raise ValueError(f"k must lie in [1, {num_items}], got {k}.")
    if exclude_item_ids is None:
        return
    if exclude_item_ids.ndim != 2 or exclude_item_ids.shape[0] != batch_size:
        raise ValueError(
            f"`exclude_item_ids` must be (batch, n) with the batch size of the prompts ({batch_size}), "
            f"got shape {tuple(exclude_item_ids.shape)}."
        )
    if not exclude_item_ids.numel():
        return
    if not -1 <= exclude_item_ids.min() <= exclude_item_ids.max() < num_items:
        raise ValueError(f"`exclude_item_ids` must hold item ids in [0, {num_items}), padded with -1.")
    ordered = exclude_item_ids.sort(dim=-1).values
    is_new = torch.ones_like(ordered, dtype=torch.bool)
    is_new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    fewest_left = num_items - int(((ordered >= 0) & is_new).sum(-1).max())
    if k > fewest_left:
        raise ValueError(
            f"k={k}, but a user has only {fewest_left} items outside their history, and recommendations never "
            "repeat the history."
        )


class CLLM4RecForCollaborativeLM(ItemScoringMixin, CLLM4RecPreTrainedModel):
    """
    CLLM4Rec pretraining: language modelling of collaborative documents (next item over the item space) and of
    content documents (next word over the vocabulary), each with mutual regularization toward the other side.

    Labels hold the target token ids at main-text positions and -100 at prompt and padding positions; they are
    shifted inside, so the first main-text token is predicted from the prompt's last token.
    """

    def __init__(self, config: CLLM4RecConfig, backbone: PreTrainedModel | None = None):
        super().__init__(config)
        self.model = CLLM4RecModel(config, backbone=backbone)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        document_type: str = "collaborative",
        num_items_in_batch: int | torch.Tensor | None = None,
        collaborative_targets: str = "next_item",
        softmax_items: torch.BoolTensor | None = None,
        **kwargs,
    ) -> CLLM4RecLMOutput:
        r"""
        document_type (`str`, defaults to `"collaborative"`):
            `"collaborative"` (ID tokens use the collaborative tables, targets are items) or `"content"` (ID tokens
            use the content tables, targets are words).
        num_items_in_batch (`int`, *optional*):
            Number of target tokens in the whole (accumulated, all-process) batch, which the summed losses are
            divided by; defaults to this batch's. The Trainer passes it.
        collaborative_targets (`str`, defaults to `"next_item"`):
            What each position of a collaborative document predicts: `"next_item"` (the paper) or
            `"remaining_items"`, the items from the next to the document's end, each with weight 1 / their number
            (the rest of the user's history, which a random order leaves unordered).
        softmax_items (`torch.BoolTensor` of shape `(num_items,)`, *optional*):
            The items the item softmax of collaborative documents normalizes over (default: all). Leaving out the
            items no document holds keeps the loss from pushing them below every other item.
        """
        return self.model.language_modeling(
            input_ids,
            attention_mask,
            labels,
            document_type,
            num_items_in_batch,
            collaborative_targets,
            softmax_items,
            **kwargs,
        )


class CLLM4RecForItemPrediction(ItemScoringMixin, CLLM4RecPreTrainedModel):
    """
    CLLM4Rec fine-tuning and serving: the prompt's query vector (its last real token's hidden state, or with
    `config.read_out="mean"` the mean over its history) is scored against every collaborative item embedding;
    training maximizes the multinomial likelihood of the held-out items.
    """

    def __init__(self, config: CLLM4RecConfig, backbone: PreTrainedModel | None = None):
        super().__init__(config)
        self.model = CLLM4RecModel(config, backbone=backbone)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        document_type: str = "recommendation",
        num_items_in_batch: int | torch.Tensor | None = None,
        softmax_items: torch.BoolTensor | None = None,
        **kwargs,
    ) -> CLLM4RecItemPredictionOutput | CLLM4RecLMOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch, max_targets)`, *optional*):
            0-based ids of each user's target (held-out) items, padded with -100.
        document_type (`str`, defaults to `"recommendation"`):
            `"recommendation"` for masked-history prompts; `"content"` runs a content-LM step (the C-step that
            fine-tuning interleaves), with labels as in [`CLLM4RecForCollaborativeLM`].
        num_items_in_batch (`int`, *optional*):
            Number of targets in the whole (accumulated, all-process) batch, which the summed losses are divided by;
            defaults to this batch's. The Trainer passes it.
        softmax_items (`torch.BoolTensor` of shape `(num_items,)`, *optional*):
            The items the softmax of recommendation documents normalizes over (default: all), as in
            [`CLLM4RecForCollaborativeLM`].
        """
        if document_type == "content":
            return self.model.language_modeling(
                input_ids, attention_mask, labels, document_type, num_items_in_batch, **kwargs
            )
        if document_type != "recommendation":
            raise ValueError(f"document_type must be 'recommendation' or 'content', got {document_type!r}.")
        hidden_states = self.model.read_out_hidden_states(input_ids, attention_mask)
        if labels is None:
            return CLLM4RecItemPredictionOutput(logits=self.model.item_logits(hidden_states))

        if labels.ndim != 2 or labels.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"`labels` must be (batch, max_targets) with the batch size of `input_ids` ({input_ids.shape[0]}), "
                f"got shape {tuple(labels.shape)}."
            )
        is_target = labels != -100
        if not bool(is_target.any(-1).all()):
            raise ValueError("Every row of `labels` needs at least one target item; found a row with none.")
        if int(labels.max()) >= self.config.num_items or int(labels[is_target].min()) < 0:
            raise ValueError(f"Target item ids must lie in [0, {self.config.num_items}).")
        check_softmax_items(softmax_items, labels[is_target], self.config.num_items)
        normalizer = is_target.sum() if num_items_in_batch is None else num_items_in_batch
        if self.config.num_items <= ITEM_CHUNK_SIZE:
            logits = self.model.item_logits(hidden_states)
            kept_logits = logits if softmax_items is None else logits.masked_fill(~softmax_items, -torch.inf)
            target_log_probabilities = F.log_softmax(kept_logits.float(), dim=-1).gather(1, labels.clamp(min=0))
        else:  # the logits of a large catalogue are neither kept for backward nor returned
            logits, item_head, item_bias = None, self.model.item_head_weight(), self.model.item_bias
            target_logits = target_item_logits(hidden_states[:, None], item_head, item_bias, labels.clamp(min=0))[:, 0]
            log_normalizers = chunked_item_logsumexp(hidden_states, *kept_rows(item_head, item_bias, softmax_items))
            target_log_probabilities = target_logits - log_normalizers[:, None]
        recommendation_loss = -(target_log_probabilities * is_target).sum() / normalizer
        regularization_loss = (
            self.model.mutual_regularization(input_ids, attention_mask, "collaborative", extra_item_ids=labels)
            / normalizer
        )
        return CLLM4RecItemPredictionOutput(
            loss=recommendation_loss + regularization_loss,
            recommendation_loss=recommendation_loss,
            regularization_loss=regularization_loss,
            logits=logits,
        )


def saved_model_class(architectures: Sequence[str] | None) -> type[CLLM4RecPreTrainedModel]:
    """
    The CLLM4Rec class a checkpoint was saved as (its config's `architectures`), the item predictor where it names
    none: a pretraining checkpoint loaded as its own class reads users through the collaborative prompt it was trained
    and evaluated with.
    """
    classes = {cls.__name__: cls for cls in (CLLM4RecForItemPrediction, CLLM4RecForCollaborativeLM)}
    return classes.get((architectures or [""])[0], CLLM4RecForItemPrediction)


def summed_cross_entropy(
    head, hidden_states: torch.Tensor, targets: torch.LongTensor, chunk_size: int
) -> torch.Tensor:
    """
    Summed float32 cross-entropy of `head(hidden_states)` against `targets`, `chunk_size` rows at a time. The logits
    of a whole batch over a large vocabulary (targets x words, in float32, kept for backward) would dominate memory;
    chunks keep only their inputs and recompute their logits in the backward pass.
    """
    if len(targets) <= chunk_size:
        return _summed_cross_entropy(head, hidden_states, targets)
    return sum(
        checkpoint(
            _summed_cross_entropy,
            head,
            hidden_states[start : start + chunk_size],
            targets[start : start + chunk_size],
            use_reentrant=False,
        )
        for start in range(0, len(targets), chunk_size)
    )


def masked_head(head, softmax_items: torch.BoolTensor):
    """`head`, its logits of the items outside `softmax_items` set to minus infinity."""

    def kept_logits(hidden_states: torch.Tensor) -> torch.Tensor:
        return head(hidden_states).masked_fill(~softmax_items, -torch.inf)

    return kept_logits


def _summed_cross_entropy(head, hidden_states: torch.Tensor, targets: torch.LongTensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden_states).float(), targets, reduction="sum")


def summed_remaining_items_nll(
    item_head: torch.Tensor,
    hidden_states: torch.Tensor,
    items: torch.LongTensor,
    is_target: torch.Tensor,
    softmax_items: torch.BoolTensor | None = None,
    item_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    Summed over the target positions `t` of each document: the mean negative log-likelihood, under the item
    distribution of `hidden_states[:, t]` (over the `softmax_items`, default all), of the target items at positions `t`
    and after. `items` are 0-based item ids `(batch, length)` (anything where `is_target` is false). The normalizers
    come from the chunked `logsumexp`; the target scores take one `(batch, length, length)` product, not logits over
    the catalogue.
    """
    log_normalizers = chunked_item_logsumexp(hidden_states[is_target], *kept_rows(item_head, item_bias, softmax_items))
    scores = target_item_logits(hidden_states, item_head, item_bias, items)  # [b, t, s]: item s's logit at position t
    positions = torch.arange(items.shape[1], device=items.device)
    remaining = is_target[:, None, :] & (positions[None, :, None] <= positions[None, None, :])
    mean_scores = (scores * remaining).sum(-1) / remaining.sum(-1).clamp(min=1)
    return (log_normalizers - mean_scores[is_target]).sum()


def item_logits(
    hidden_states: torch.Tensor, item_head: torch.Tensor, item_bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The items' scores `hidden_states @ item_head.T`, plus `item_bias` where given, in the hidden states' dtype."""
    logits = hidden_states @ item_head.to(hidden_states.dtype).T
    return logits if item_bias is None else logits + item_bias.to(hidden_states.dtype)


def target_item_logits(
    hidden_states: torch.Tensor, item_head: torch.Tensor, item_bias: torch.Tensor | None, items: torch.LongTensor
) -> torch.Tensor:
    """
    Float32 logits `(batch, positions, targets)` of each row's `items` `(batch, targets)` at each of its positions
    `hidden_states` `(batch, positions, hidden)`: one product with the items' rows, not logits over the catalogue.
    """
    logits = (hidden_states @ item_head[items].to(hidden_states.dtype).transpose(1, 2)).float()
    return logits if item_bias is None else logits + item_bias[items].float()[:, None, :]


def kept_rows(
    item_head: torch.Tensor, item_bias: torch.Tensor | None, softmax_items: torch.BoolTensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The rows of the item head and bias that a softmax over `softmax_items` (default: all items) normalizes over."""
    if softmax_items is None:
        return item_head, item_bias
    return item_head[softmax_items], None if item_bias is None else item_bias[softmax_items]


def chunked_item_logsumexp(
    hidden_states: torch.Tensor, item_head: torch.Tensor, item_bias: torch.Tensor | None = None
) -> torch.Tensor:
    """
    Float32 `logsumexp` over all items of their logits (`item_logits`), per row, `ITEM_CHUNK_SIZE` items at a time:
    each chunk keeps only its inputs and recomputes its logits in the backward pass, so memory is bounded by the batch
    times one chunk rather than the batch times the catalogue.
    """
    chunks = [slice(start, start + ITEM_CHUNK_SIZE) for start in range(0, len(item_head), ITEM_CHUNK_SIZE)]
    return torch.stack(
        [
            checkpoint(
                _item_logsumexp,
                hidden_states,
                item_head[chunk],
                None if item_bias is None else item_bias[chunk],
                use_reentrant=False,
            )
            for chunk in chunks
        ],
        dim=-1,
    ).logsumexp(-1)


def _item_logsumexp(
    hidden_states: torch.Tensor, item_head: torch.Tensor, item_bias: torch.Tensor | None
) -> torch.Tensor:
    return item_logits(hidden_states, item_head, item_bias).float().logsumexp(-1)


__all__ = [
    "CLLM4RecPreTrainedModel",
    "CLLM4RecModel",
    "CLLM4RecForCollaborativeLM",
    "CLLM4RecForItemPrediction",
    "CLLM4RecLMOutput",
    "CLLM4RecItemPredictionOutput",
    "RecommendationOutput",
    "saved_model_class",
]
