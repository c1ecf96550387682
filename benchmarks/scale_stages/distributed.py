"""
Beyond one process: the same CLLM4Rec model (1M users x 1M items, 2-layer GPT-2 of width 64, frozen as in the paper)
trained a few steps by dense AdamW on one process, and sharded by FSDP2 over two CPU processes (gloo) started by
`accelerate launch` with the shipped `examples/accelerate_configs/fsdp_cpu_two_processes.yaml`, with the same seed
and the same global batch.

    python benchmarks/scale_stages/distributed.py --workdir DIR --out ROWS.json [--quick]

Accelerate engages its FSDP plugin on accelerators only (a CPU run is `MULTI_CPU`, data parallel), so on CPU the
script shards the model itself with `torch.distributed.fsdp.fully_shard`, the call accelerate makes with
`fsdp_version: 2`: the whole model one unit, every parameter, its gradient and its AdamW state split along the first
dimension. Rows: peak resident memory of each process and the ID-table rows it holds, step time, and the largest
difference between the final ID tables of the two runs (they should agree within 1e-5). `--quick` shrinks the
catalogue to 1,000 users x 1,000 items and forks the one-process run from this process instead of starting an
interpreter, for CI (its peak memory then includes the libraries it inherits).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPOSITORY = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPOSITORY))

from benchmarks.scale_stages.children import in_fork  # noqa: E402
from hf_cllm4rec import CLLM4RecConfig, CLLM4RecForCollaborativeLM  # noqa: E402
from hf_cllm4rec.training import apply_backbone_training  # noqa: E402

FSDP_CONFIG = REPOSITORY / "examples" / "accelerate_configs" / "fsdp_cpu_two_processes.yaml"
WORDS = 1000
BACKBONE = {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 512, "vocab_size": WORDS}
BACKBONE.update(bos_token_id=WORDS - 1, eos_token_id=WORDS - 1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
ID_TABLES = (
    "model.user_collaborative_embeddings.weight",
    "model.item_collaborative_embeddings.weight",
    "model.user_content_embeddings.weight",
    "model.item_content_embeddings.weight",
)
# Small batches: each pretraining target's float32 logits over 1M items take 4 MB.
FULL = {"users": 1_000_000, "items": 1_000_000, "global_batch": 8, "length": 16, "steps": 3}
QUICK = {"users": 1000, "items": 1000, "global_batch": 8, "length": 16, "steps": 2}


def global_batches(config: CLLM4RecConfig, sizes: dict):
    """The run's collaborative documents (a user token, then items), the same on every process."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(sizes["steps"]):
        shape = (sizes["global_batch"], 1)
        users = torch.randint(config.num_users, shape, generator=generator) + config.user_token_offset
        shape = (sizes["global_batch"], sizes["length"] - 1)
        items = torch.randint(config.num_items, shape, generator=generator) + config.item_token_offset
        input_ids = torch.cat([users, items], dim=1)
        labels = input_ids.clone()
        labels[:, 0] = -100
        yield input_ids, labels


def train(sizes: dict, tables_path: str, figures_path: str) -> None:
    """Trains on this process's share of each global batch; the main process saves the final ID tables."""
    import torch.distributed as dist
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    sharded = int(os.environ.get("WORLD_SIZE", 1)) > 1
    if sharded:
        dist.init_process_group("gloo")
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)
    torch.manual_seed(0)
    config = CLLM4RecConfig(text_config=BACKBONE, num_users=sizes["users"], num_items=sizes["items"])
    model = CLLM4RecForCollaborativeLM(config).train()
    apply_backbone_training(model, "frozen")
    if sharded:
        fully_shard(model)  # every parameter, gradient and optimizer state split along dim 0 over the processes
    trainable = [param for param in model.parameters() if param.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3, weight_decay=0.01)  # the recipes' pretraining rate
    share = sizes["global_batch"] // world_size
    own = slice(rank * share, (rank + 1) * share)
    times = []
    for input_ids, labels in global_batches(config, sizes):
        start = time.perf_counter()
        # every document has the same targets, so the mean over the processes' means is the global batch's mean
        model(input_ids[own], labels=labels[own], document_type="collaborative").loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    rows_held = {
        name: int(param.to_local().shape[0] if hasattr(param, "to_local") else param.shape[0])
        for name, param in model.named_parameters()
        if name in ID_TABLES
    }
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    if rank == 0:
        save_file({name: state[name].contiguous() for name in ID_TABLES}, tables_path)
    figures = {
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "step_s": round(sum(times[1:]) / max(len(times) - 1, 1), 4),
        "id_table_rows_held": rows_held,
    }
    Path(f"{figures_path}.{rank}").write_text(json.dumps(figures))
    if sharded:
        dist.barrier()  # every process has written its files
        # gloo's teardown (destroy_process_group, or the interpreter's exit) aborts now and then on CPU with
        # "terminate called without an active exception", after all the work is done: the process leaves without it
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def run(processes: int, sizes: dict, workdir: Path, fork: bool = False) -> tuple[list[dict], float]:
    """
    Runs the training on `processes` processes (one forked from this process if `fork`); returns each one's figures
    and the wall time.
    """
    tables, figures = workdir / f"tables-{processes}.safetensors", workdir / f"figures-{processes}"
    if fork and processes == 1:
        start = time.perf_counter()
        in_fork(train, sizes, str(tables), str(figures))
        return [json.loads(Path(f"{figures}.0").read_text())], time.perf_counter() - start
    worker = [__file__, "--worker", json.dumps(sizes), str(tables), str(figures)]
    if processes > 1:
        worker = ["-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG), *worker]
    environment = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *worker], env=environment, capture_output=True, text=True)
    wall_s = time.perf_counter() - start
    if result.returncode:
        raise RuntimeError(f"Training on {processes} process(es) failed:\n{result.stdout}\n{result.stderr}")
    return [json.loads(Path(f"{figures}.{rank}").read_text()) for rank in range(processes)], wall_s


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="Folder for the runs' final ID tables.")
    parser.add_argument("--out", help="The JSON list of rows.")
    parser.add_argument("--quick", action="store_true", help="1,000 users x 1,000 items and small batches.")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)  # sizes, tables file, figures file: train here
    args = parser.parse_args(argv)
    if args.worker:
        train(json.loads(args.worker[0]), args.worker[1], args.worker[2])
        return
    if not (args.workdir and args.out):
        parser.error("--workdir and --out are required.")

    from safetensors.numpy import load_file  # no torch operation in this process: its children may be forked

    sizes = QUICK if args.quick else FULL
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for processes in (1, 2):
        figures, wall_s = run(processes, sizes, workdir, fork=args.quick)
        for rank, process in enumerate(figures):
            setup = "one process" if processes == 1 else f"FSDP, 2 processes: process {rank}"
            row = {
                "stage": "distributed",
                "case": f"{sizes['steps']} pretraining steps, {setup}",
                "users": sizes["users"],
                "items": sizes["items"],
                "interactions": None,
                "processes": processes,
                "rank": rank,
                "global_batch": sizes["global_batch"],
                "length": sizes["length"],
                "wall_s": round(wall_s, 2),
                **process,
            }
            print(f"{row['case']}: peak RSS {row['peak_rss_gib']} GiB, {row['step_s']} s per step", flush=True)
            rows.append(row)
    one, two = (load_file(workdir / f"tables-{processes}.safetensors") for processes in (1, 2))
    difference = max(float(abs(one[name] - two[name]).max()) for name in ID_TABLES)
    for row in rows:
        row["id_tables_max_abs_difference"] = difference
    print(f"final ID tables, one process against FSDP on two: largest difference {difference:.2e}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
