"""Warm versus cold-start-style serving of a fine-tuned CLLM4Rec model: how much does the user token add?

For every user with held-out items in `--split`, the model ranks all items twice, with the paper's full-ranking
protocol (training items excluded, Recall@20, Recall@40, NDCG@100):

- **warm**: the recommendation prompt, `<user_i> has interacted with <history>, <user_i> will interact with`;
- **cold**: the config's cold-start prompt, with the same training history and no user token
  (`A new user has interacted with <history>, the user will interact with`), as `recommend` serves a new user.

Read the cold figures for what they are. These users are *not* new: their tokens were trained, their training
items shaped the item embeddings, and their held-out items come from the same split. The comparison measures
cold-start-style *serving* of known users (the history alone, without the user token), which bounds from above
what a genuinely unseen user with a similar history could get; it is not an evaluation on users held out of
training, which needs a user-level split. Fine-tuning trains the recommendation prompt only, so the cold-start
prompt is read by a model that never saw it during training.

```bash
python -m benchmarks.cold_start --model runs/quickstart/finetuned --data builtin --output_file cold_start.json
```
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.provenance import git_commit, recorded_arguments, write_result
from hf_cllm4rec import CLLM4RecForItemPrediction, CLLM4RecTokenizer
from hf_cllm4rec.evaluation import check_model_fits_data, evaluate_model
from hf_cllm4rec.training.recipes import DataArguments, load_data

METRICS = ("recall@20", "recall@40", "ndcg@100")


def warm_and_cold_metrics(model, tokenizer, data, split: str = "test", batch_size: int = 128, max_length=None) -> dict:
    """Recall@20/40 and NDCG@100 on `split` with the user token (warm) and without it (cold), and their ratio."""
    check_model_fits_data(model, data)
    results = {}
    for name, cold_start in (("warm", False), ("cold", True)):
        start = time.perf_counter()
        metrics = evaluate_model(
            model, tokenizer, data, split, batch_size=batch_size, max_length=max_length, cold_start=cold_start
        )
        results[name] = {metric: metrics[metric] for metric in (*METRICS, "num_users")}
        results[name]["seconds"] = round(time.perf_counter() - start, 3)
    results["cold_over_warm"] = {
        metric: results["cold"][metric] / results["warm"][metric] if results["warm"][metric] else None
        for metric in METRICS
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--model", required=True, help="Folder or Hub name of a fine-tuned CLLM4Rec model.")
    parser.add_argument("--data", required=True, help="The prepared data set it was trained on, or 'builtin'.")
    parser.add_argument("--split", default="test", choices=["validation", "test"])
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument(
        "--max_length", type=int, default=None, help="Longest prompt; default: the backbone's context."
    )
    parser.add_argument("--output_file", default="cold_start.json")
    args = parser.parse_args()
    if not Path(args.output_file).parent.is_dir():
        parser.error(f"--output_file {args.output_file}: no folder {Path(args.output_file).parent} to write it in.")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    commit = git_commit()
    model = CLLM4RecForItemPrediction.from_pretrained(args.model).to(device).eval()
    tokenizer = CLLM4RecTokenizer.from_pretrained(args.model)
    data = load_data(DataArguments(data=args.data))
    results = warm_and_cold_metrics(model, tokenizer, data, args.split, args.batch_size, args.max_length)
    report = {
        "benchmark": "cold_start",
        "data": data.name,
        "configuration": recorded_arguments(args),
        **results,
    }
    write_result(args.output_file, report, commit)
    label = f"{args.split}, {results['warm']['num_users']} users"
    print(f"{label:<24}" + "".join(f"{metric:>11}" for metric in METRICS))
    for name in ("warm", "cold"):
        print(f"{name:<24}" + "".join(f"{results[name][metric]:>11.4f}" for metric in METRICS))


if __name__ == "__main__":
    main()
