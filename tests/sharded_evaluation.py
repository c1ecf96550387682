"""
Run by `tests/test_distributed.py` on two processes (`python -m torch.distributed.run --nproc_per_node 2`): evaluates
a tiny item predictor sharded across them, with FSDP2 (`fully_shard`) and with FSDP wrappers, a unit per transformer
block in both, and writes each process's metrics, with those of the unsharded model on one process, to
`argv[1]`-RANK.json.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from tiny_checkpoints import tiny_data, tiny_item_prediction_model
from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from transformers.models.gpt2.modeling_gpt2 import GPT2Block

from hf_cllm4rec.evaluation import evaluate_model, scoring_view


class WithoutFirstHistory:
    """The data set with the first user's training items left out of the prompts: that user gets no prompt."""

    def __init__(self, data):
        self.data = data

    def __getattr__(self, name):
        return getattr(self.data, name)

    def histories(self, split: str):
        histories = self.data.histories(split)
        histories[0] = histories[0][:0]
        return histories


def evaluations(model, tokenizer, data, distributed: bool) -> dict:
    # 24 users: batches of 5 leave one process a batch fewer; batches of 1 give the first user a batch of its own
    with scoring_view(model) as (scored, lockstep):
        return {
            "uneven_batches": evaluate_model(
                scored, tokenizer, data, "test", 5, distributed=distributed, lockstep=lockstep
            ),
            "user_without_prompt": evaluate_model(
                scored, tokenizer, WithoutFirstHistory(data), "test", 1, distributed=distributed, lockstep=lockstep
            ),
        }


def main() -> None:
    dist.init_process_group("gloo")
    data = tiny_data()
    model, tokenizer = tiny_item_prediction_model(data)
    results = {"one_process": evaluations(model, tokenizer, data, distributed=False)}
    # as `accelerate` wraps a model: a unit per transformer block inside the one of the whole model
    wrapped = FullyShardedDataParallel(
        tiny_item_prediction_model(data)[0],
        auto_wrap_policy=ModuleWrapPolicy({GPT2Block}),
        device_id=torch.device("cpu"),
        use_orig_params=True,
    )
    results["fsdp"] = evaluations(wrapped, tokenizer, data, distributed=True)
    sharded = tiny_item_prediction_model(data)[0]
    for module in sharded.modules():
        if isinstance(module, GPT2Block):
            fully_shard(module)
    fully_shard(sharded)
    results["fsdp2"] = evaluations(sharded, tokenizer, data, distributed=True)
    Path(f"{sys.argv[1]}-{dist.get_rank()}.json").write_text(json.dumps(results))
    dist.barrier()  # no process tears its connections down while the other still uses them
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
