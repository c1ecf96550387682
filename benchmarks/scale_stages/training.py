"""
Training at scale: one pretraining (collaborative and content) and one fine-tuning step of CLLM4Rec with a tiny
backbone (2-layer GPT-2, width 64, frozen as in the paper) at 1M users x 1M items, with the ID tables under dense
AdamW or under the row-sparse update (`id_embeddings_optimizer="sparse_adamw"`), at two batch shapes each.

    python benchmarks/scale_stages/training.py --workdir DIR --out ROWS.json [--quick]

Each case runs in a process of its own (forked from this one, the libraries already imported), which builds the
model, takes one warm-up step (the optimizer allocates its state) and times the next steps (forward, backward,
gradient clipping and the optimizer step, as the Trainer does): `step_s` is their mean (`optimizer_s` of it clipping
and the update), `peak_rss_gib` the process's peak resident memory. `--quick` shrinks the catalogue to 1,000 users x
1,000 items and the batches, for CI.
"""

import argparse
import json
import multiprocessing
import resource
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hf_cllm4rec import CLLM4RecConfig, CLLM4RecForCollaborativeLM, CLLM4RecForItemPrediction  # noqa: E402
from hf_cllm4rec.training import apply_backbone_training  # noqa: E402
from hf_cllm4rec.training.optimization import ID_EMBEDDINGS_OPTIMIZERS, clip_grad_norm, id_tables_optimizer  # noqa: E402

WORDS = 1000
BACKBONE = {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 512, "vocab_size": WORDS}
BACKBONE.update(bos_token_id=WORDS - 1, eos_token_id=WORDS - 1)
# Each measured step: the model and the document type of its batch. A collaborative or fine-tuning step trains the
# user table and the item head (the tied collaborative item table: a dense gradient); a content step trains the two
# content tables alone, by lookups.
STAGES = {
    "pretraining": (CLLM4RecForCollaborativeLM, "collaborative"),
    "content pretraining": (CLLM4RecForCollaborativeLM, "content"),
    "fine-tuning": (CLLM4RecForItemPrediction, "recommendation"),
}
# Batch x length per stage. A pretraining target is scored over all items (4 MB of float32 logits at 1M items); the
# loss holds at most LOSS_CHUNK_ELEMENTS logits at once, so memory stays flat from the smaller shape to the larger,
# while the time grows with the targets: pretraining shapes are smaller to keep a step within a minute on a CPU.
FULL = {
    "users": 1_000_000,
    "items": 1_000_000,
    "shapes": {
        "pretraining": [(16, 32), (32, 64)],
        "content pretraining": [(64, 64), (128, 128)],
        "fine-tuning": [(64, 64), (128, 128)],
    },
    "timed_steps": 3,
}
QUICK = {
    "users": 1000,
    "items": 1000,
    "shapes": dict.fromkeys(STAGES, [(4, 16), (8, 32)]),
    "timed_steps": 1,
}
FINE_TUNING_TARGETS = 8  # held-out items per masked-history prompt


def batch(stage: str, config: CLLM4RecConfig, batch_size: int, length: int, generator) -> dict:
    """A batch of random ids of the stage's documents: a user token, then items (content documents: an item, words)."""
    document_type = STAGES[stage][1]
    users = torch.randint(config.num_users, (batch_size, 1), generator=generator) + config.user_token_offset
    items = torch.randint(config.num_items, (batch_size, length - 1), generator=generator) + config.item_token_offset
    if document_type == "content":
        items[:, 1:] = torch.randint(WORDS - 1, (batch_size, length - 2), generator=generator)
    input_ids = torch.cat([users, items], dim=1)
    if document_type == "recommendation":
        targets = torch.randint(config.num_items, (batch_size, FINE_TUNING_TARGETS), generator=generator)
        return {"input_ids": input_ids, "labels": targets, "document_type": document_type}
    labels = input_ids.clone()
    labels[:, : 2 if document_type == "content" else 1] = -100
    return {"input_ids": input_ids, "labels": labels, "document_type": document_type}


def measure(case: dict) -> dict:
    """Runs the case's steps in this process; returns its figures."""
    torch.manual_seed(0)
    config = CLLM4RecConfig(text_config=BACKBONE, num_users=case["users"], num_items=case["items"])
    start = time.perf_counter()
    model = STAGES[case["stage"]][0](config).train()
    build_s = time.perf_counter() - start
    apply_backbone_training(model, "frozen")
    trainable = [param for param in model.parameters() if param.requires_grad]
    args = SimpleNamespace(id_embeddings_optimizer=case["optimizer"], world_size=1, optim="adamw_torch")
    optimizer = id_tables_optimizer(model, args, torch.optim.AdamW(trainable, lr=1e-3, weight_decay=0.01))
    generator = torch.Generator().manual_seed(0)
    times, optimizer_times = [], []
    for step in range(1 + case["timed_steps"]):
        inputs = batch(case["stage"], config, case["batch_size"], case["length"], generator)
        start = time.perf_counter()
        model(**inputs).loss.backward()
        backward_end = time.perf_counter()
        clip_grad_norm(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first step allocates the optimizer's state
            times.append(time.perf_counter() - start)
            optimizer_times.append(time.perf_counter() - backward_end)
    return {
        "build_s": round(build_s, 2),
        "step_s": round(sum(times) / len(times), 4),
        "optimizer_s": round(sum(optimizer_times) / len(optimizer_times), 4),  # clipping and the update
        "trainable_parameters": sum(param.numel() for param in trainable),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
    }


def in_child_process(function, *arguments):
    """`function(*arguments)` in a forked process of its own, so that its peak memory is its own."""
    context = multiprocessing.get_context("fork")
    with context.Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(function, arguments)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="Scratch folder (this stage writes nothing there).")
    parser.add_argument("--out", required=True, help="The JSON list of rows.")
    parser.add_argument("--quick", action="store_true", help="1,000 users x 1,000 items and small batches.")
    args = parser.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    rows = []
    for stage in STAGES:
        for batch_size, length in sizes["shapes"][stage]:
            for optimizer in ID_EMBEDDINGS_OPTIMIZERS:
                case = {"stage": stage, "optimizer": optimizer, "batch_size": batch_size, "length": length}
                case.update(users=sizes["users"], items=sizes["items"], timed_steps=sizes["timed_steps"])
                figures = in_child_process(measure, case)
                row = {
                    "stage": "training",
                    "case": f"{stage} step, {optimizer}, batch {batch_size} x length {length}",
                    "users": case["users"],
                    "items": case["items"],
                    "interactions": None,
                    "training_stage": stage,
                    "id_embeddings_optimizer": optimizer,
                    "batch_size": batch_size,
                    "length": length,
                    "wall_s": figures["step_s"],
                    **figures,
                }
                print(
                    f"{row['case']}: {row['step_s']} s per step ({row['optimizer_s']} s clipping and update), "
                    f"peak RSS {row['peak_rss_gib']} GiB",
                    flush=True,
                )
                rows.append(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
