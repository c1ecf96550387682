"""How far is what validation chooses from the best choice on test? A diagnostic of the selection of rounds and trials.

Runs `quality.py` with the options given and, at every validation round of every trial (and stage), also ranks the
test split with the same weights and read-out (that of training: a read-out power chosen after training is not
applied); nothing is chosen on it, and the run trains as it does without it.
Writes `<results_dir>/round-oracle-<name>.json` beside quality.py's own result: per trained folder, every round's
validation and test metrics; per metric, the test value of the round that validation kept (the best round of the
trial the search kept, or of the stage's one run), the best test value of any round (the oracle, which
no selection on validation can exceed), and how many rounds test at or above EASE where `--baselines` fits it.

```bash
python benchmarks/round_oracle.py --recipe small-cpu --data data/allbeauty --search --baselines ease \
  --name allbeauty-oracle --finetune_rounds 0
```
"""

import json
import sys
from pathlib import Path
from unittest import mock

from transformers import TrainerState
from transformers.trainer import TRAINER_STATE_NAME

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import quality  # noqa: E402
from benchmarks.provenance import git_commit, write_result  # noqa: E402
from hf_cllm4rec.training.trainer import CLLM4RecTrainer  # noqa: E402

METRICS = ("recall@20", "recall@40", "ndcg@100")


def kept_folder(stage: str, rounds: dict[str, list[dict]], trials: list[dict]) -> str:
    """The folder of the stage's kept model: the trial the search kept, or the stage's one folder."""
    if not trials:
        (folder,) = rounds
        return folder
    return f"{stage}/trial-{next(index for index, trial in enumerate(trials) if trial['kept'])}"


def summary(rounds: dict[str, list[dict]], kept_in: str, step: int, ease: dict | None) -> dict:
    """Per metric: the test value of the round validation kept (that of `step` in folder `kept_in`), the best test value
    of any round and, with `ease` (its test metrics), how many rounds reach it."""
    every_round = [entry for entries in rounds.values() for entry in entries]
    kept = next(entry for entry in rounds[kept_in] if entry["step"] == step)
    result = {"rounds": len(every_round), "kept": {"folder": kept["folder"], "step": kept["step"]}}
    for metric in METRICS:
        tests = [entry[f"test_{metric}"] for entry in every_round]
        result[metric] = {"kept": kept[f"test_{metric}"], "oracle": max(tests)}
        if ease is not None:
            result[metric]["rounds_at_or_above_ease"] = sum(test >= ease[metric] for test in tests)
    return result


def main() -> None:
    args = quality.parse_args()
    if args.resume:  # the rounds an earlier attempt trained were not ranked on test
        raise SystemExit(
            "--resume: round_oracle.py ranks the test split at the rounds it trains; run it from the start."
        )
    root = Path(args.output_dir) / args.name
    rounds: dict[str, list[dict]] = {}
    evaluate = CLLM4RecTrainer.evaluate

    def evaluate_and_test(trainer, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        metrics = evaluate(trainer, eval_dataset, ignore_keys, metric_key_prefix)
        if metric_key_prefix == "eval":  # a validation round, not the final test of the kept model
            folder = Path(trainer.args.output_dir).relative_to(root).as_posix()
            test = {f"test_{name}": value for name, value in trainer.split_metrics("test").items()}
            entry = {"folder": folder, "step": trainer.state.global_step, **metrics, **test}
            rounds.setdefault(folder, []).append(entry)
        return metrics

    commit = git_commit()
    with mock.patch.object(CLLM4RecTrainer, "evaluate", evaluate_and_test):
        quality.main(args)
    run = json.loads((Path(args.results_dir) / f"quality-{args.name}.json").read_text())
    ease = run["baselines"].get("ease", {}).get("test")
    stages = {}
    for stage, results in (("pretrain", run["cllm4rec_pretrained"]), ("finetune", run["cllm4rec"])):
        stage_rounds = {folder: entries for folder, entries in rounds.items() if folder.split("/")[0] == stage}
        if stage_rounds:
            kept_in = kept_folder(stage, stage_rounds, results.get("search", []))
            step = TrainerState.load_from_json(str(root / kept_in / TRAINER_STATE_NAME)).best_global_step
            stages[stage] = {"summary": summary(stage_rounds, kept_in, step, ease), "rounds": stage_rounds}
    result = {"benchmark": "round_oracle", "name": args.name, "quality": f"quality-{args.name}.json", **stages}
    if ease is not None:
        result["ease"] = ease
    print(f"wrote {write_result(Path(args.results_dir) / f'round-oracle-{args.name}.json', result, commit)}")


if __name__ == "__main__":
    main()
