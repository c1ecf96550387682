"""
What CLLM4Rec costs as the data grows to a million users, a million items and a hundred million interactions.

    python benchmarks/scale.py                 # every stage at full size (about an hour on two CPU threads)
    python benchmarks/scale.py --quick         # every stage at small sizes, in seconds (a smoke test)
    python benchmarks/scale.py --stages preparation,serving

Each stage is a script of `benchmarks/scale_stages/`, run in a process of its own, which measures its work in child
processes (wall time and peak resident memory of the work, not of the harness). `--quick` runs the stages in this
process and forks their children from it, the libraries already imported, instead of starting fresh interpreters
(`benchmarks/scale_stages/children.py`; the two FSDP processes still come from `accelerate launch`): its peak
memories include those libraries.

- preparation: `cllm4rec prepare --source table` on Parquet files of 1M, 10M and 100M synthetic interactions
  (power-law user activity and item popularity), and the JSON-lines readers' rows per second;
- training: one pretraining and one fine-tuning step of a tiny backbone at 1M users x 1M items, with the dense and
  the row-sparse optimizer of the ID tables;
- serving: top-100 for 10,000 users over 1M items, exporting the embeddings and loading the id mappings at 1M users;
- distributed: a few training steps of the 1M x 1M model with FSDP on two CPU processes against one process.

Writes `benchmarks/results/<name>.json` (every row, the device, versions and git commit) and `<name>.png` (cost
against size); `python benchmarks/report.py` turns the JSON into the tables of the READMEs.
"""

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.provenance import device_name, git_commit, write_result  # noqa: E402

STAGES = ("preparation", "training", "serving", "distributed")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--quick", action="store_true", help="Small sizes: every stage in seconds.")
    parser.add_argument(
        "--stages", default=",".join(STAGES), help=f"Comma-separated stages to run, of {', '.join(STAGES)}."
    )
    parser.add_argument("--name", default=None, help="Result name (default: scale-cpu, or scale-quick with --quick).")
    parser.add_argument("--results_dir", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument(
        "--workdir", default=None, help="Where the stages write their data and models (default: a temporary folder)."
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="Take the rows of a stage that already finished in --workdir (its <stage>.json) instead of rerunning it; "
        "the earlier run must have been as --quick as this one.",
    )
    args = parser.parse_args(argv)
    args.stages = args.stages.split(",")
    unknown = [stage for stage in args.stages if stage not in STAGES]
    if unknown:
        parser.error(f"unknown stage {', '.join(unknown)}; expected some of {', '.join(STAGES)}")
    if args.resume and args.workdir is None:
        parser.error("--resume needs the --workdir of the earlier run")
    records = [Path(args.workdir, f"{stage}.json") for stage in args.stages] if args.resume else []
    for record in (record for record in records if record.is_file()):
        recorded = json.loads(record.read_text())
        if not isinstance(recorded, dict) or recorded.get("quick") != args.quick:
            parser.error(
                f"--resume: {record} is not the record of a run {'with' if args.quick else 'without'} --quick"
            )
    args.name = args.name or ("scale-quick" if args.quick else "scale-cpu")
    return args


def run_stage(stage: str, workdir: Path, quick: bool, resume: bool) -> list[dict]:
    """
    Runs `benchmarks/scale_stages/<stage>.py` in a process of its own (in this one if `quick`), returns its rows, and
    records them with `quick` in `<workdir>/<stage>.json` for `--resume`.
    """
    stage_dir, record = workdir / stage, workdir / f"{stage}.json"
    if resume and record.is_file():
        print(f"== {stage}: rows of the earlier run in {record}", flush=True)
        return json.loads(record.read_text())["rows"]
    stage_dir.mkdir(parents=True, exist_ok=True)
    rows_path = stage_dir / "rows.json"
    arguments = ["--workdir", str(stage_dir), "--out", str(rows_path), *(["--quick"] if quick else [])]
    print(f"== {stage}", flush=True)
    if quick:
        importlib.import_module(f"benchmarks.scale_stages.{stage}").main(arguments)
    else:
        script = ROOT / "benchmarks" / "scale_stages" / f"{stage}.py"
        subprocess.run([sys.executable, str(script), *arguments], cwd=ROOT, check=True)
    rows = json.loads(rows_path.read_text())
    record.write_text(json.dumps({"quick": quick, "rows": rows}, indent=1) + "\n")
    return rows


def draw_costs(rows: list[dict], path: Path) -> None:
    """Wall time and peak memory of each stage's cases against the number of interactions, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for stage in dict.fromkeys(row["stage"] for row in rows):
        points = sorted(
            (row["interactions"], row["wall_s"], row["peak_rss_gib"])
            for row in rows
            if row["stage"] == stage and row.get("interactions") and row.get("peak_rss_gib")
        )
        if not points:
            continue
        sizes, seconds, memory = zip(*points, strict=True)
        axes[0].plot(sizes, seconds, "o-", label=stage)
        axes[1].plot(sizes, memory, "o-", label=stage)
    for axis, label in zip(axes, ("wall seconds", "peak memory (GiB)"), strict=True):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("interactions")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.suptitle(f"CLLM4Rec at scale ({device_name()})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    commit, started = git_commit(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cllm4rec-scale-") as temporary:
        workdir = Path(args.workdir or temporary)
        rows = [row for stage in args.stages for row in run_stage(stage, workdir, args.quick, args.resume)]
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "scale",
        "name": args.name,
        "quick": args.quick,
        "stages": args.stages,
        "rows": rows,
        "wall_s": time.perf_counter() - started,
    }
    write_result(results_dir / f"{args.name}.json", result, commit)
    draw_costs(rows, results_dir / f"{args.name}.png")
    for row in rows:
        memory = f"{row['peak_rss_gib']:6.2f} GiB" if row.get("peak_rss_gib") else ""
        print(f"{row['stage']:>12}  {row['case']:<50} {row['wall_s']:9.1f} s  {memory}")
    print(f"wrote {results_dir / args.name}.json and .png")


if __name__ == "__main__":
    main()
