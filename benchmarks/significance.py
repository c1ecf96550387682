"""Is CLLM4Rec above a baseline, or only on these test users? A paired bootstrap over the test users.

Ranks the test split (all items, training items excluded) with one or more saved CLLM4Rec models, one forward pass
per user as `quality.py` tests them, and with a baseline fitted on the same training split (EASE with its L2 chosen
on validation, as `baselines.py` does, or popularity). The per-user metrics of several models (the seeds of one
recipe) are averaged per user. The test users are then resampled with replacement (`paired_bootstrap`): the interval
of the relative difference is how far another sample of users could move it. It holds the test users' sampling, not
training's seeds, which only the averaged models' spread shows. Writes
`<results_dir>/significance-<name>.json`, which `report.py` tabulates.

```bash
python benchmarks/significance.py --data data/allbeauty --name allbeauty-small-cpu \
  --models runs/quality/allbeauty-seed42/pretrain runs/quality/allbeauty-seed1/pretrain
```
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.baselines import PopularityRecommender, evaluate_baseline, tune_ease  # noqa: E402
from benchmarks.provenance import (  # noqa: E402
    git_commit,
    recorded_arguments,
    recorded_location,
    write_result,
)
from hf_cllm4rec import CLLM4RecConfig, CLLM4RecTokenizer  # noqa: E402
from hf_cllm4rec.evaluation import (  # noqa: E402
    average_per_user,
    check_model_fits_data,
    default_max_length,
    evaluate_model,
    paired_bootstrap,
)
from hf_cllm4rec.modeling_cllm4rec import saved_model_class  # noqa: E402
from hf_cllm4rec.training.recipes import DataArguments, load_data  # noqa: E402

METRICS = ("recall@20", "recall@40", "ndcg@100")
BASELINES = ("ease", "popularity")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--data", required=True, help="A folder written by `cllm4rec prepare`, or 'builtin'.")
    parser.add_argument(
        "--models", nargs="+", required=True, help="Saved CLLM4Rec model folders; several are averaged per user."
    )
    parser.add_argument("--name", required=True, help="Names the JSON: `<results_dir>/significance-<name>.json`.")
    parser.add_argument("--baseline", choices=BASELINES, default="ease")
    parser.add_argument("--num_resamples", type=int, default=10_000, help="Bootstrap resamples of the test users.")
    parser.add_argument("--confidence", type=float, default=0.95, help="Coverage of the intervals.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the resampling.")
    parser.add_argument("--batch_size", type=int, default=512, help="Users per forward pass.")
    parser.add_argument("--results_dir", default="benchmarks/results/significance")
    args = parser.parse_args(argv)
    for folder in args.models:
        if not (Path(folder) / "config.json").is_file():
            parser.error(f"--models {folder}: no model folder (it has no config.json).")
    if len({Path(folder).resolve() for folder in args.models}) < len(args.models):
        parser.error("--models names a folder twice: each model counts once in the average.")
    if args.num_resamples < 1 or args.batch_size < 1:
        parser.error("--num_resamples and --batch_size must be positive.")
    if not 0 < args.confidence < 1:
        parser.error(f"--confidence must lie in (0, 1), got {args.confidence}.")
    return args


def recorded_model(folder: str) -> str:
    """A model folder as the result records it: its parent's name too, as runs save their stages as `pretrain` and
    `finetune`."""
    path = Path(folder)
    return recorded_location(folder) if recorded_location(folder) == folder else f"{path.parent.name}/{path.name}"


def model_per_user(folder: str, data, batch_size: int) -> dict:
    """A saved model's test metrics and per-user metrics, one pass per user."""
    config = CLLM4RecConfig.from_pretrained(folder)
    model = saved_model_class(config.architectures).from_pretrained(folder)
    model = model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    check_model_fits_data(model, data)
    return evaluate_model(
        model,
        CLLM4RecTokenizer.from_pretrained(folder),
        data,
        "test",
        batch_size=batch_size,
        max_length=default_max_length(model.config),
        per_user=True,
    )


def baseline_per_user(name: str, data) -> tuple[dict, dict]:
    """The baseline's test metrics and per-user metrics, and what was chosen for it on validation."""
    train, validation, test = (data.to_sparse(split) for split in ("train", "validation", "test"))
    if name == "popularity":
        recommender, chosen = PopularityRecommender().fit(train), {}
    else:
        recommender, validation_metrics = tune_ease(train, validation)
        chosen = {"l2": recommender.l2, "validation": validation_metrics[recommender.l2]}
    return evaluate_baseline(recommender, train, test, per_user=True), chosen


def main() -> None:
    args = parse_args()
    commit = git_commit()
    start = time.perf_counter()
    data = load_data(DataArguments(data=args.data))
    models = {folder: model_per_user(folder, data, args.batch_size) for folder in args.models}
    baseline, chosen = baseline_per_user(args.baseline, data)
    comparison = paired_bootstrap(
        average_per_user([metrics["per_user"] for metrics in models.values()]),
        baseline["per_user"],
        metrics=METRICS,
        num_resamples=args.num_resamples,
        confidence=args.confidence,
        seed=args.seed,
    )
    wall = time.perf_counter() - start
    for metric, figures in comparison.items():
        print(
            f"{metric}: {figures['mean']:.4f} against {figures['baseline_mean']:.4f}, {figures['relative']:+.1%} "
            f"[{figures['relative_low']:+.1%}, {figures['relative_high']:+.1%}], below in {figures['below']:.1%} "
            "of resamples"
        )
    result = {
        "benchmark": "significance",
        "name": args.name,
        "data": recorded_location(args.data),
        "configuration": recorded_arguments(args) | {"models": [recorded_model(folder) for folder in args.models]},
        "models": [
            {"model": recorded_model(folder), "test": {k: v for k, v in metrics.items() if k != "per_user"}}
            for folder, metrics in models.items()
        ],
        "baseline": {"name": args.baseline, **chosen, "test": {k: v for k, v in baseline.items() if k != "per_user"}},
        "num_users": len(baseline["per_user"]["user_id"]),
        "comparison": comparison,
        "wall_s": wall,
    }
    output = write_result(Path(args.results_dir) / f"significance-{args.name}.json", result, commit)
    print(f"wrote {output} [{wall:.0f} s]")


if __name__ == "__main__":
    main()
