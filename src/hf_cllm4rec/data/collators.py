"""Batching of CLLM4Rec documents."""

from dataclasses import dataclass

from ..modeling_cllm4rec import pad_sequences


@dataclass
class CLLM4RecDataCollator:
    """
    Right-pads a batch of documents of one type into tensors.

    Language-modelling documents (`"collaborative"`, `"content"`) get `input_ids`, `attention_mask` and `labels`
    (-100 on prompt and padding); `"recommendation"` documents get `input_ids`, `attention_mask` and `labels`
    holding the target item ids, padded with -100. The batch carries its `document_type` for the model.
    """

    pad_token_id: int

    def __call__(self, features: list[dict]) -> dict:
        document_types = {feature["document_type"] for feature in features}
        if len(document_types) != 1:
            raise ValueError(f"A batch must hold documents of one type, got {sorted(document_types)}.")
        input_ids, attention_mask = pad_sequences([feature["input_ids"] for feature in features], self.pad_token_id)
        labels, _ = pad_sequences([feature["labels"] for feature in features], -100)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "document_type": document_types.pop(),
        }


__all__ = ["CLLM4RecDataCollator"]
