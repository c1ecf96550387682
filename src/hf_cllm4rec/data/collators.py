"""Batching of CLLM4Rec documents."""

import itertools
from dataclasses import dataclass

import numpy as np
import torch


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


def pad_sequences(sequences: list[list[int]], pad_value: int) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Right-pads integer sequences with `pad_value`: `(padded, mask)`, both `(len(sequences), longest)`."""
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    mask = np.arange(lengths.max()) < lengths[:, None]
    padded = np.full(mask.shape, pad_value, dtype=np.int64)
    padded[mask] = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64, count=int(lengths.sum()))
    return torch.from_numpy(padded), torch.from_numpy(mask.astype(np.int64))


__all__ = ["CLLM4RecDataCollator"]
