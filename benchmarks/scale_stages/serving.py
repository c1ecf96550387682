"""
Serving at scale: top-100 recommendations for 10,000 users over 1M items through the `Recommender` (items scored in
chunks with a running top k), `cllm4rec export-embeddings` of a 1M users x 1M items model, and saving and loading its
id mappings (1M users with their training histories).

    python benchmarks/scale_stages/serving.py --workdir DIR --out ROWS.json [--quick]

A checkpoint is written first, untimed: a fine-tuning model with a tiny random backbone (2-layer GPT-2, width 64)
around 1M users x 1M items, a word-level tokenizer made in code, and id mappings whose histories come from
`make_power_law_interactions` (10 interactions per user on average, seeded). Each case then runs as a process of its
own on that checkpoint: `wall_s` times the work measured (the recommendations, the export command, the save or the
load), `peak_rss_gib` is the process's peak resident memory (from `wait4`), which includes the loaded model where the
case needs one. `--quick` shrinks the catalogue to 10k x 10k and the served users to 200, and forks each case from
this process instead of starting an interpreter, for CI: the peak memory then includes the libraries the child
inherits.
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from benchmarks.scale_stages.children import in_fork, in_interpreter  # noqa: E402

FULL = {"users": 1_000_000, "items": 1_000_000, "served_users": 10_000}
QUICK = {"users": 10_000, "items": 10_000, "served_users": 200}
K = 100
INTERACTIONS_PER_USER = 10
WORDS = ("<eos> [UNK] A a new user the has interacted with will interact writes following review for The tags of "
         "title is are , : . item").split()  # fmt: skip
BACKBONE = {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 512}
BACKBONE.update(vocab_size=len(WORDS), bos_token_id=0, eos_token_id=0)


def write_checkpoint(folder: Path, num_users: int, num_items: int) -> dict:
    """The untimed setup: a random 1M x 1M fine-tuning checkpoint with its tokenizer and id mappings."""
    import numpy as np
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    from hf_cllm4rec import CLLM4RecConfig, CLLM4RecForItemPrediction, CLLM4RecTokenizer, IdMappings
    from hf_cllm4rec.data import make_power_law_interactions

    torch.manual_seed(0)
    config = CLLM4RecConfig(text_config=dict(BACKBONE), num_users=num_users, num_items=num_items)
    CLLM4RecForItemPrediction(config).save_pretrained(folder)
    backend = Tokenizer(WordLevel({word: index for index, word in enumerate(WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    words = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="<eos>", pad_token="<eos>")
    CLLM4RecTokenizer(words, config).save_pretrained(folder)

    interactions = make_power_law_interactions(num_users, num_items, INTERACTIONS_PER_USER * num_users, seed=0)
    users, items = (interactions.column(name).to_numpy() for name in ("user", "item"))
    pairs = np.unique(users * num_items + items)  # sorted by user, each item once
    indptr = np.searchsorted(pairs // num_items, np.arange(num_users + 1))
    mappings = IdMappings.from_columns(
        raw_ids("U", num_users), raw_ids("I", num_items), raw_ids("item ", num_items), indptr, pairs % num_items
    )
    mappings.save(folder)
    return {"interactions": int(len(pairs))}


def raw_ids(prefix: str, count: int):
    """`prefix0`, `prefix1`, ... as an Arrow string array, built without a Python loop."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.binary_join_element_wise(prefix, pa.array(np.arange(count)).cast(pa.string()), "")


def measure_case(case: str, folder: Path, workdir: Path, served_users: int) -> dict:
    """Runs one case in this process and returns its figures (the parent adds the peak memory)."""
    if case == "export-embeddings":
        from hf_cllm4rec.cli import main

        start = time.perf_counter()
        main(["export-embeddings", "--model", str(folder), "--out", str(workdir / "embeddings"), "--overwrite"])
        return {"wall_s": time.perf_counter() - start}

    from hf_cllm4rec import IdMappings

    if case == "id mappings":
        start = time.perf_counter()
        mappings = IdMappings.load(folder)
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        path = mappings.save(workdir / "saved-mappings")
        save_s = time.perf_counter() - start
        return {"wall_s": load_s + save_s, "load_s": load_s, "save_s": save_s, "file_mib": path.stat().st_size / 2**20}

    import torch

    from hf_cllm4rec import CLLM4RecForItemPrediction, CLLM4RecTokenizer, Recommender

    start = time.perf_counter()
    model = CLLM4RecForItemPrediction.from_pretrained(folder).eval()
    recommender = Recommender(
        model, CLLM4RecTokenizer.from_pretrained(folder), IdMappings.load(folder), disable_tqdm=True
    )
    load_s = time.perf_counter() - start
    mappings = recommender.id_mappings
    users = mappings.users_with_histories()[:served_users].tolist()
    histories = [mappings.history(user) for user in users]
    start = time.perf_counter()
    output = recommender.recommend(users, histories, k=K)
    wall_s = time.perf_counter() - start
    assert output.item_ids.shape == (len(users), K)
    return {
        "wall_s": wall_s,
        "users_per_s": len(users) / wall_s,
        "served_users": len(users),
        "mean_history": sum(map(len, histories)) / len(histories),
        "k": K,
        "load_s": load_s,
        "threads": torch.get_num_threads(),
    }


def run_case(case: str, workdir: Path, quick: bool) -> tuple[dict, float]:
    """Runs `case` (or the `setup`) in a child process; its figures and peak RSS in GiB."""
    sizes = QUICK if quick else FULL
    folder = workdir / "serving-checkpoint"
    if quick:
        if case == "setup":
            return in_fork(write_checkpoint, folder, sizes["users"], sizes["items"])
        return in_fork(measure_case, case, folder, workdir, sizes["served_users"])
    command = [sys.executable, __file__, "--case", case, "--workdir", str(workdir)]
    output, peak_rss_gib = in_interpreter(command)  # the child prints its figures as JSON on its last line
    return json.loads(output.strip().splitlines()[-1]), peak_rss_gib


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # a child process: one case, figures as JSON on stdout
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    folder = args.workdir / "serving-checkpoint"
    if args.case == "setup":
        print(json.dumps(write_checkpoint(folder, sizes["users"], sizes["items"])))
        return
    if args.case is not None:
        print(json.dumps(measure_case(args.case, folder, args.workdir, sizes["served_users"])))
        return
    if args.out is None:
        parser.error("--out is required")
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.quick:  # the forked cases find the libraries imported
        import hf_cllm4rec.cli  # noqa: F401
    start = time.perf_counter()
    setup, _ = run_case("setup", args.workdir, args.quick)
    print(
        f"checkpoint of {sizes['users']:,} users x {sizes['items']:,} items written in {time.perf_counter() - start:.1f} s"
    )
    common = {"stage": "serving", "users": sizes["users"], "items": sizes["items"], **setup}
    rows = []
    for case, label in (
        ("recommend", f"top-{K} for {sizes['served_users']:,} users over {sizes['items']:,} items"),
        ("export-embeddings", f"export-embeddings, {sizes['users']:,} users x {sizes['items']:,} items"),
        ("id mappings", f"id mappings of {sizes['users']:,} users: save and load"),
    ):
        figures, peak_rss_gib = run_case(case, args.workdir, args.quick)
        row = {
            **common,
            "case": label,
            **{key: round(value, 4) if isinstance(value, float) else value for key, value in figures.items()},
        }
        row["peak_rss_gib"] = round(peak_rss_gib, 3)
        rows.append(row)
        details = ", ".join(f"{key} {value}" for key, value in row.items() if key not in common and key != "case")
        print(f"{label}: {details}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
