"""The benchmark scripts run end to end on the built-in data set and a tiny backbone (a smoke test, not a timing)."""

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[1]


def run(*arguments: str, cwd: Path = ROOT) -> str:
    result = subprocess.run([sys.executable, *arguments], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
def test_quality_speed_and_report_scripts(tmp_path):
    results = tmp_path / "results"
    run(
        "benchmarks/quality.py", "--data", "builtin", "--backbone", "builtin-tiny-gpt2", "--name", "smoke",
        "--warmup_epochs", "2", "--pretrain_rounds", "1", "--finetune_rounds", "2", "--baselines", "popularity,ease",
        "--train_sampling_strategy", "group_by_length", "--history_attention", "set",
        "--output_dir", str(tmp_path / "runs"), "--results_dir", str(results),
    )  # fmt: skip
    quality = json.loads((results / "quality-smoke.json").read_text())
    finetuned_config = json.loads((tmp_path / "runs" / "smoke" / "finetune" / "config.json").read_text())
    assert finetuned_config["history_attention"] == "set"
    assert not {"output_dir", "results_dir"} & set(quality["configuration"])  # where it wrote is not what produced it
    assert len(quality["cllm4rec"]["validation_per_round"]) == 2
    assert set(quality["baselines"]) == {"popularity", "ease"}
    for test in (quality["cllm4rec"]["test"], quality["cllm4rec_pretrained"]["test"]):
        assert 0 < test["recall@20"] <= test["recall@40"] <= 1
    assert len(quality["cllm4rec_pretrained"]["validation_per_round"]) == 1
    assert (results / "quality-smoke.png").stat().st_size > 0

    # the smoke run's pretrained model fine-tuned apart, with a fine-tuning batch of its own
    smoke_pretrained = tmp_path / "runs" / "smoke" / "pretrain"
    run(
        "benchmarks/quality.py", "--data", "builtin", "--pretrained", str(smoke_pretrained), "--name", "apart",
        "--finetune_rounds", "1", "--batch_size", "8", "--history_attention", "set", "--baselines", "",
        "--output_dir", str(tmp_path / "runs"), "--results_dir", str(results),
    )  # fmt: skip
    apart = json.loads((results / "quality-apart.json").read_text())
    assert apart["cllm4rec_pretrained"]["test"] == quality["cllm4rec_pretrained"]["test"]  # the same model's test
    assert (
        apart["cllm4rec_pretrained"]["validation_per_round"] == quality["cllm4rec_pretrained"]["validation_per_round"]
    )
    assert apart["pretrained"]["model"] == "pretrain" and apart["pretrained"]["train_runtime_s"] > 0
    assert apart["pretrained"]["training_arguments"]["num_train_epochs"] == 3  # 2 warm-up epochs and a round
    assert not {"backbone", "pretrain_rounds", "warmup_epochs"} & set(apart["configuration"])
    assert apart["configuration"]["pretrained"] == "pretrain" and apart["baselines"] == {}
    fine_tuned = tmp_path / "runs" / "apart" / "finetune"
    assert json.loads((fine_tuned / "config.json").read_text())["history_attention"] == "set"
    assert json.loads((fine_tuned / "training_args.json").read_text())["per_device_train_batch_size"] == 8
    assert len(apart["cllm4rec"]["validation_per_round"]) == 1 and 0 < apart["cllm4rec"]["test"]["recall@20"] <= 1

    run(
        "benchmarks/quality.py", "--data", "builtin", "--backbone", "builtin-tiny-gpt2", "--name", "pretrain-only",
        "--warmup_epochs", "0", "--pretrain_rounds", "2", "--finetune_rounds", "0", "--history_permutations", "2",
        "--pretrain_backbone_training", "lora", "--lora_rank", "4", "--lora_dropout", "0.1", "--id_embedding_dropout", "0.2", "--id_embedding_init", "vocabulary", "--untie_item_head",
        "--item_bias", "--weight_decay", "0.1", "--collaborative_targets", "remaining_items", "--item_softmax", "interacted", "--baselines", "popularity",
        "--read_out", "mean", "--read_out_prefix_powers", "0", "2.5",
        "--output_dir", str(tmp_path / "runs"), "--results_dir", str(results),
    )  # fmt: skip
    pretrain_only = json.loads((results / "quality-pretrain-only.json").read_text())
    pretrained = tmp_path / "runs" / "pretrain-only" / "pretrain"
    saved_config = json.loads((pretrained / "config.json").read_text())
    assert saved_config["id_embedding_dropout"] == 0.2 and saved_config["id_embedding_init"] == "vocabulary"
    assert saved_config["tie_item_head"] is False and saved_config["item_bias"] is True
    saved_training = json.loads((pretrained / "training_args.json").read_text())
    assert saved_training["backbone_training"] == "lora" and saved_training["lora_rank"] == 4
    assert saved_training["lora_dropout"] == 0.1 and saved_training["weight_decay"] == 0.1
    assert saved_training["collaborative_targets"] == "remaining_items"
    assert saved_training["item_softmax"] == "interacted"
    assert saved_training["read_out_prefix_powers"] == [0, 2.5]
    choice = pretrain_only["cllm4rec_pretrained"]["read_out_prefix_powers"]  # validation score of each power
    assert list(choice) == ["0", "2.5"] and all(0 < score <= 3 for score in choice.values())
    chosen = pretrain_only["cllm4rec_pretrained"]["read_out_prefix_power"]
    assert chosen == saved_config["read_out_prefix_power"] and choice[f"{chosen:g}"] == max(choice.values())
    with safe_open(pretrained / "model.safetensors", "pt") as stored:  # the adapters merged into the backbone
        assert not any("lora_" in name for name in stored.keys())
    assert pretrain_only["cllm4rec"]["test"] is None
    assert len(pretrain_only["cllm4rec_pretrained"]["validation_per_round"]) == 2
    training_loss = pretrain_only["cllm4rec_pretrained"]["training_loss"]
    assert training_loss[0]["step"] == 1 and all(entry["loss"] > 0 for entry in training_loss)
    over_orders = pretrain_only["cllm4rec_pretrained"]["test_over_history_orders"]
    assert 0 < over_orders["recall@20"] <= over_orders["recall@40"] <= 1
    assert over_orders != pretrain_only["cllm4rec_pretrained"]["test"]

    run(
        "benchmarks/speed.py", "--data", "builtin", "--backbone", "builtin-tiny-gpt2", "--sample", "64",
        "--batch_size", "16", "--scaling_items", "500,1000", "--scaling_users", "16",
        "--eval_batch_size", "32", "--eval_max_tokens", "300", "--dtype", "bfloat16", "--prediction_weights", "bfloat16",
        "--output", str(results / "speed-smoke.json"),
    )  # fmt: skip
    speed = json.loads((results / "speed-smoke.json").read_text())
    assert {"content", "collaborative", "finetuning", "prediction"} <= set(speed["stages"])
    prediction = speed["stages"]["prediction"]
    assert sum(batch["users"] for batch in prediction["batches"]) == prediction["users"] == 64
    assert all(batch["users"] <= 32 and batch["users"] * batch["width"] <= 300 for batch in prediction["batches"])
    assert prediction["prompt_tokens"] <= prediction["padded_tokens"]
    assert [entry["num_items"] for entry in speed["prediction_scaling"]] == [500, 1000]
    assert speed["stages"]["content"]["extrapolated"]
    for stage in ("content", "collaborative", "finetuning"):
        assert 0 < speed["stages"][stage]["loading_epoch_s"] < speed["stages"][stage]["epoch_s"]

    run(
        "benchmarks/speed.py", "--data", "builtin", "--backbone", "builtin-tiny-gpt2", "--sample", "64",
        "--stages", "collaborative,prediction", "--batch_size", "16", "--scaling_items", "", "--output", str(results / "speed-two-stages.json"),
    )  # fmt: skip
    two_stages = json.loads((results / "speed-two-stages.json").read_text())
    assert set(two_stages["stages"]) == {"collaborative", "prediction"} and two_stages["prediction_scaling"] == []

    run(
        "benchmarks/speed.py", "--data", "builtin", "--backbone", "builtin-tiny-gpt2", "--sample", "64",
        "--batch_size", "16", "--loading_only", "--output", str(results / "speed-loading.json"),
    )  # fmt: skip
    loading = json.loads((results / "speed-loading.json").read_text())
    assert loading["loading_only"] and set(loading["stages"]) == {"content", "collaborative", "finetuning"}
    assert loading["prediction_scaling"] == [] and loading["speedup_vs_authors_h200"] is None
    for stage in loading["stages"].values():
        assert stage["documents_timed"] == 64 - 2 * 16 and stage["loading_epoch_s"] <= stage["epoch_s"]

    # the smoke run's pretrained model and the pretraining-only one, averaged per user, against popularity
    run(
        "benchmarks/significance.py", "--data", "builtin", "--name", "smoke", "--baseline", "popularity",
        "--models", str(tmp_path / "runs" / "smoke" / "pretrain"), str(pretrained), "--num_resamples", "100",
        "--batch_size", "7", "--results_dir", str(results / "significance"),
    )  # fmt: skip
    significance = json.loads((results / "significance" / "significance-smoke.json").read_text())
    for model, run_result in zip(significance["models"], (quality, pretrain_only), strict=True):
        assert model["test"] == pytest.approx(run_result["cllm4rec_pretrained"]["test"])  # as its run measured it
    assert [model["model"] for model in significance["models"]] == ["smoke/pretrain", "pretrain-only/pretrain"]
    assert significance["baseline"]["test"] == quality["baselines"]["popularity"]["test"]
    ndcg = significance["comparison"]["ndcg@100"]
    mean_test = sum(model["test"]["ndcg@100"] for model in significance["models"]) / 2
    assert ndcg["mean"] == pytest.approx(mean_test)
    assert ndcg["relative_low"] <= ndcg["relative"] <= ndcg["relative_high"] and 0 <= ndcg["below"] <= 1
    ndcg_users = significance["num_users"]
    assert ndcg_users == significance["baseline"]["test"]["num_users"]

    # a second seed of the pretraining-only recipe, in a subfolder as archived runs are: other test figures
    seed = json.loads((results / "quality-pretrain-only.json").read_text())
    seed["cllm4rec_pretrained"]["test"] = {
        key: value / 2 for key, value in seed["cllm4rec_pretrained"]["test"].items()
    }
    (results / "archive").mkdir()
    (results / "archive" / "seed1.json").write_text(json.dumps(seed))
    readme = tmp_path / "README.md"
    readme.write_text(
        "intro\n<!-- headline:start -->\nold\n<!-- headline:end -->\n<!-- scale:start -->\n<!-- scale:end -->\nend\n"
    )
    benchmarks_readme = tmp_path / "benchmarks-README.md"
    sections = "<!-- datasets:start -->\n<!-- datasets:end -->\n<!-- results:start -->\nstale\n<!-- results:end -->\n"
    benchmarks_readme.write_text(f"notes\n{sections}end\n")
    headline = tmp_path / "headline.json"
    recipe = {"label": "smoke recipe", "stage": "cllm4rec_pretrained", "test": "test"}
    two_seeds = {**recipe, "files": ["quality-pretrain-only.json", "archive/seed1.json"]}
    dataset = {"data": "smoke data", "baselines": "quality-smoke.json", "recipes": [two_seeds]}
    headline.write_text(json.dumps({"baselines": "quality-smoke.json", "recipes": [two_seeds], "datasets": [dataset]}))
    report = ["benchmarks/report.py", "--results_dir", str(results), "--headline", str(headline)]
    report += ["--readme", str(readme), "--benchmarks_readme", str(benchmarks_readme)]
    run(*report)
    text = readme.read_text()
    assert "old" not in text and text.startswith("intro\n") and text.endswith("end\n")
    assert "No full-size `benchmarks/scale.py` result yet." in text
    assert (results / "headline.png").stat().st_size > 0
    wall_s = pretrain_only["cllm4rec"]["wall_s"]  # both seeds: the same run's time
    cost = "<0.01" if wall_s < 36 else f"{wall_s / 3600:.2f}"
    recipe_row = next(line for line in text.splitlines() if line.startswith("| smoke recipe |"))
    assert recipe_row.startswith(f"| smoke recipe | 2 | 1 | 4 | {cost} CPU |")  # 2 rounds, each with a content epoch
    tests = [pretrain_only["cllm4rec_pretrained"]["test"], seed["cllm4rec_pretrained"]["test"]]
    mean = (tests[0]["ndcg@100"] + tests[1]["ndcg@100"]) / 2
    relative = mean / quality["baselines"]["ease"]["test"]["ndcg@100"] - 1
    assert f"| {mean:.4f} ({relative:+.0%}) |" in recipe_row
    ease_l2 = quality["baselines"]["ease"]["l2"]
    assert f"| EASE (L2 {ease_l2:g}) | 1 | 1 | - |" in text

    text = benchmarks_readme.read_text()  # the data sets' table, then the tables of every run
    assert "stale" not in text and text.startswith("notes\n") and text.endswith("end\n")
    dataset_row = next(line for line in text.splitlines() if line.startswith("| smoke data | smoke recipe |"))
    assert dataset_row == f"| smoke data {recipe_row}"  # the headline's row, in the table of its data set
    every_run = [line for line in text.splitlines() if line.startswith("| `")]
    ease_rows = [line for line in every_run if f"| EASE (L2 {ease_l2:g}) |" in line]
    assert len(ease_rows) == 1 and "`quality-smoke.json`" in ease_rows[0]
    assert f"{quality['baselines']['ease']['test']['recall@20']:.4f}" in ease_rows[0]
    popularity_rows = [line for line in every_run if line.split(" | ")[1] == "popularity"]
    assert len(popularity_rows) == 1  # three runs with the same popularity figures: listed once
    assert "speed-smoke.json" in text and "prediction batch 32 and 300 tokens at most from bfloat16 weights" in text
    two_stages_row = next(line for line in text.splitlines() if "speed-two-stages.json" in line)
    collaborative_s = two_stages["stages"]["collaborative"]["epoch_s"]
    collaborative_cell = f"{collaborative_s:.{1 if collaborative_s >= 10 else 2}f} s"  # two decimals under 10 s
    assert (
        f"| - | {collaborative_cell} | - | {two_stages['stages']['prediction']['users_per_s']:,.0f} |"
        in two_stages_row
    )
    loading_row = next(line for line in text.splitlines() if "speed-loading.json" in line)
    assert "batch 16, data loader only (no model steps)" in loading_row and "prediction batch" not in loading_row
    pretrain_only_rows = [line for line in text.splitlines() if line.startswith("| `quality-pretrain-only.json` |")]
    assert [row.split(" | ")[1:3] for row in pretrain_only_rows] == [["CLLM4Rec, pretrained", "1"]] + [
        ["CLLM4Rec, pretrained", "2"]
    ]  # one row per history-order count, none for the fine-tuning it skipped
    assert f"{over_orders['ndcg@100']:.4f}" in pretrain_only_rows[1]
    smoke_rows = [line for line in text.splitlines() if line.startswith("| `quality-smoke.json` | CLLM4Rec")]
    # epochs up to each stage's model: 2 warm-up epochs, each as long as a round, 1 pretraining round, then 2
    # fine-tuning rounds, each round a content epoch and another
    assert [row.split(" | ")[1:4] for row in smoke_rows] == [
        ["CLLM4Rec, pretrained", "1", "6"],
        ["CLLM4Rec, fine-tuned", "1", "10"],
    ]
    apart_rows = [line for line in text.splitlines() if line.startswith("| `quality-apart.json` | CLLM4Rec")]
    # the smoke run's 6 epochs up to its pretrained model, then 1 fine-tuning round of two epochs
    assert [row.split(" | ")[1:4] for row in apart_rows] == [
        ["CLLM4Rec, pretrained", "1", "6"],
        ["CLLM4Rec, fine-tuned", "1", "8"],
    ]
    assert any(line.startswith("| `archive/seed1.json` |") for line in text.splitlines())
    significance_row = next(line for line in text.splitlines() if "significance-smoke.json" in line)
    assert significance_row.startswith(
        f"| `significance/significance-smoke.json` | 2 | popularity | {ndcg_users} | 95% |"
    )
    assert f"{ndcg['relative']:+.1%} [{ndcg['relative_low']:+.1%}, {ndcg['relative_high']:+.1%}]" in significance_row

    run(*report, "--check")
    benchmarks_readme.write_text(text.replace("| popularity |", "| popularity (typed by hand) |"))
    stale = subprocess.run([sys.executable, *report, "--check"], cwd=ROOT, capture_output=True, text=True)
    assert stale.returncode == 1 and str(benchmarks_readme) in stale.stderr
    early_stopped_apart = {**recipe, "files": ["quality-smoke.json", "quality-pretrain-only.json"]}
    headline.write_text(json.dumps({"baselines": "quality-smoke.json", "recipes": [early_stopped_apart]}))
    run(*report)  # runs of one recipe that trained different numbers of epochs: their range
    assert next(line for line in readme.read_text().splitlines() if line.startswith("| smoke recipe |")).startswith(
        "| smoke recipe | 2 | 1 | 4-6 |"
    )
    (results / "archive" / "on-a-gpu.json").write_text(json.dumps({**seed, "device": "NVIDIA H200"}))
    mixed = {**recipe, "files": ["quality-pretrain-only.json", "archive/on-a-gpu.json"]}
    headline.write_text(json.dumps({"baselines": "quality-smoke.json", "recipes": [mixed]}))
    failed = subprocess.run([sys.executable, *report], cwd=ROOT, capture_output=True, text=True)
    assert failed.returncode != 0 and "differ in passes per user or device" in failed.stderr
    headline.write_text(
        json.dumps({"baselines": "quality-smoke.json", "recipes": [{**recipe, "files": ["gone.json"]}]})
    )
    failed = subprocess.run([sys.executable, *report], cwd=ROOT, capture_output=True, text=True)
    assert failed.returncode != 0 and "result files that do not exist: gone.json" in failed.stderr


@pytest.mark.parametrize(
    "first_evaluation_epoch, pretrained_epochs, fine_tuned_epochs",
    [
        (0.07, "12", "14"),  # all of pretraining one Trainer epoch: a warm-up epoch was one content epoch
        (3.0, "14", "16"),  # warm-up epochs are Trainer epochs, as long as a round: the first evaluation at epoch 3
    ],
)
def test_a_content_warmup_epoch_counts_the_epochs_its_steps_take(
    first_evaluation_epoch, pretrained_epochs, fine_tuned_epochs
):
    from benchmarks.report import quality_epochs

    result = {
        "_file": "quality-warmup.json",
        "configuration": {"warmup_epochs": 2, "pretrain_rounds": 5, "finetune_rounds": 1, "no_content_steps": False},
        "cllm4rec_pretrained": {"validation_per_round": [{"epoch": first_evaluation_epoch, "eval_recall@20": 0.1}]},
    }
    assert quality_epochs(result) == pretrained_epochs
    assert quality_epochs(result, fine_tuned=True) == fine_tuned_epochs
    result["cllm4rec_pretrained"]["validation_per_round"] = []
    with pytest.raises(SystemExit, match="quality-warmup.json has a content warm-up but no validation log"):
        quality_epochs(result)


def test_a_search_counts_the_rounds_of_every_trial():
    from benchmarks.report import quality_epochs

    trials = [
        {"settings": {"backbone_dropout": dropout}, "rounds": rounds} for dropout, rounds in ((0.2, 9), (0.4, 5))
    ]
    result = {
        "configuration": {"pretrain_rounds": 100, "finetune_rounds": 0, "no_content_steps": True},
        "cllm4rec_pretrained": {"validation_per_round": [{"eval_recall@20": 0.1}] * 9, "search": trials},
    }
    assert quality_epochs(result) == "14"  # the best trial's 9 rounds and the other's 5


def pretraining_quality(tmp_path, name: str, rounds: int, *options: str) -> dict:
    """The result of `quality.py` pretraining the tiny backbone on the built-in data for `rounds` rounds."""
    run(
        "benchmarks/quality.py", "--data", "builtin", "--backbone", "builtin-tiny-gpt2", "--name", name,
        "--warmup_epochs", "0", "--pretrain_rounds", str(rounds), "--finetune_rounds", "0",
        "--lr_scheduler_type", "constant", "--baselines", "", *options,
        "--output_dir", str(tmp_path / "runs"), "--results_dir", str(tmp_path / "results"),
    )  # fmt: skip
    return json.loads((tmp_path / "results" / f"quality-{name}.json").read_text())


def test_quality_resumes_a_stopped_run_and_counts_the_training_of_its_earlier_attempt(tmp_path):
    from benchmarks.quality import training_seconds

    def quality(name: str, rounds: int, *options: str) -> dict:
        return pretraining_quality(tmp_path, name, rounds, *options)

    uninterrupted = quality("whole", 3)
    # a run stopped after its first round: its checkpoint is there, its model was never saved
    quality("stopped", 1)
    stopped = tmp_path / "runs" / "stopped" / "pretrain"
    first_attempt_seconds, _ = training_seconds(stopped)
    (stopped / "test_results.json").unlink()
    (checkpoint,) = stopped.glob("checkpoint-*")
    resumed = quality("stopped", 3, "--resume")
    assert resumed["resumed"]["pretraining"]["from"] == checkpoint.name
    before = resumed["resumed"]["pretraining"]["train_seconds_before"]
    assert 0 < before <= first_attempt_seconds  # the clock as the checkpoint saved it
    assert resumed["cllm4rec"]["wall_s"] > before
    validation = [round_["eval_selection_score"] for round_ in resumed["cllm4rec_pretrained"]["validation_per_round"]]
    whole = [round_["eval_selection_score"] for round_ in uninterrupted["cllm4rec_pretrained"]["validation_per_round"]]
    assert validation == pytest.approx(whole)  # the rounds of the run that was never stopped
    assert resumed["cllm4rec_pretrained"]["test"] == pytest.approx(uninterrupted["cllm4rec_pretrained"]["test"])

    # resumed again once finished: the saved model is kept, and all its training counts as before this attempt
    model_file = stopped / "model.safetensors"
    written = model_file.stat().st_mtime_ns
    again = quality("stopped", 3, "--resume")
    assert again["resumed"]["pretraining"]["from"] == "saved model" and model_file.stat().st_mtime_ns == written
    assert again["resumed"]["pretraining"]["train_seconds_before"] == training_seconds(stopped)[0] > before
    assert again["cllm4rec_pretrained"]["test"] == resumed["cllm4rec_pretrained"]["test"]


def test_quality_resumes_a_stopped_search_trial_by_trial_and_counts_every_trials_earlier_seconds(tmp_path):
    from benchmarks.quality import search_trials

    search = ("--search", "--early_stopping_patience", "5")
    uninterrupted = pretraining_quality(tmp_path, "whole", 2, *search)
    pretraining_quality(tmp_path, "stopped", 2, *search)
    folder = tmp_path / "runs" / "stopped" / "pretrain"
    # stopped before the last trial saved a checkpoint: the others are finished
    (folder / "test_results.json").unlink()
    shutil.rmtree(folder / "trial-3")
    resumed = pretraining_quality(tmp_path, "stopped", 2, *search, "--resume")
    origins = resumed["resumed"]["pretraining"]["from"]
    assert list(origins) == [f"trial-{index}" for index in range(4)] and origins["trial-3"] == "start"
    assert [origins[f"trial-{index}"] for index in range(3)] == ["finished"] * 3
    trials = search_trials(folder)
    assert [trial["validation_selection_score"] for trial in trials] == pytest.approx(
        [trial["validation_selection_score"] for trial in uninterrupted["cllm4rec_pretrained"]["search"]]
    )
    assert resumed["cllm4rec_pretrained"]["test"] == pytest.approx(uninterrupted["cllm4rec_pretrained"]["test"])
    before = resumed["resumed"]["pretraining"]["train_seconds_before"]
    assert before == pytest.approx(sum(trial["train_runtime_before_resume_s"] for trial in trials))
    assert trials[3]["train_runtime_before_resume_s"] == 0
    assert all(trial["train_runtime_before_resume_s"] == trial["train_runtime_s"] > 0 for trial in trials[:3])
    assert resumed["cllm4rec"]["wall_s"] > before


def test_round_oracle_tests_every_round_of_every_trial_without_changing_the_run(tmp_path):
    from benchmarks.report import round_oracle_rows

    options = ("--search", "--early_stopping_patience", "5")
    plain = pretraining_quality(tmp_path, "plain", 2, *options)
    run(
        "benchmarks/round_oracle.py", "--data", "builtin", "--backbone", "builtin-tiny-gpt2", "--name", "oracle",
        "--warmup_epochs", "0", "--pretrain_rounds", "2", "--finetune_rounds", "0", "--lr_scheduler_type", "constant",
        "--baselines", "ease", *options,
        "--output_dir", str(tmp_path / "runs"), "--results_dir", str(tmp_path / "results"),
    )  # fmt: skip
    quality = json.loads((tmp_path / "results" / "quality-oracle.json").read_text())
    assert quality["cllm4rec_pretrained"]["test"] == plain["cllm4rec_pretrained"]["test"]  # trained alike
    oracle = json.loads((tmp_path / "results" / "round-oracle-oracle.json").read_text())
    assert oracle["benchmark"] == "round_oracle" and "finetune" not in oracle
    rounds = oracle["pretrain"]["rounds"]
    assert list(rounds) == [f"pretrain/trial-{index}" for index in range(4)]
    trials = quality["cllm4rec_pretrained"]["search"]
    for trial, entries in zip(trials, rounds.values(), strict=True):
        assert len(entries) == trial["rounds"] == 2
        assert max(entry["eval_selection_score"] for entry in entries) == trial["validation_selection_score"]
    summary = oracle["pretrain"]["summary"]
    best = max(range(len(trials)), key=lambda index: trials[index]["validation_selection_score"])
    assert [trial["kept"] for trial in trials] == [index == best for index in range(4)]
    assert summary["rounds"] == 8 and summary["kept"]["folder"] == f"pretrain/trial-{best}"
    kept_round = max(rounds[f"pretrain/trial-{best}"], key=lambda entry: entry["eval_selection_score"])
    assert summary["kept"]["step"] == kept_round["step"]
    ease = quality["baselines"]["ease"]["test"]
    for metric in ("recall@20", "recall@40", "ndcg@100"):
        # the kept round (no read-out power chosen after training) is the model quality.py tested
        assert summary[metric]["kept"] == pytest.approx(quality["cllm4rec_pretrained"]["test"][metric])
        tests = [entry[f"test_{metric}"] for entries in rounds.values() for entry in entries]
        assert summary[metric]["oracle"] == max(tests) >= summary[metric]["kept"]
        assert summary[metric]["rounds_at_or_above_ease"] == sum(test >= ease[metric] for test in tests)
    (row,) = round_oracle_rows([{**oracle, "_file": "round-oracle-oracle.json"}])
    ndcg = summary["ndcg@100"]
    expected = f"{ndcg['kept']:.4f} / {ndcg['oracle']:.4f} / {ndcg['rounds_at_or_above_ease']} |"
    assert row.startswith("| `round-oracle-oracle.json` | pretrain | 8 | ") and row.endswith(expected)
    # resumed, the rounds of the earlier attempt would be missing: refused before anything runs
    refused = subprocess.run(
        [sys.executable, "benchmarks/round_oracle.py", "--name", "again", "--resume", "--output_dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert (
        refused.returncode != 0 and "--resume: round_oracle.py ranks the test split at the rounds it" in refused.stderr
    )


def test_a_model_pretrained_apart_counts_the_epochs_and_seconds_of_its_search(tmp_path):
    from benchmarks.quality import pretrained_model_record
    from benchmarks.report import quality_epochs, run_seconds

    folder = tmp_path / "pretrain"
    folder.mkdir()
    (folder / "training_args.json").write_text(json.dumps({"content_steps": False, "content_warmup_epochs": 0}))
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": [{"train_runtime": 30.0}]}))
    trials = [
        {"settings": {}, "rounds": 9, "train_runtime_s": 30.0},
        {"settings": {}, "rounds": 5, "train_runtime_s": 20.0},
    ]
    (folder / "recipe.json").write_text(json.dumps({"search": trials}))
    pretrained = pretrained_model_record(folder)
    assert pretrained["train_runtime_s"] == 50.0  # every trial's, not the kept one's alone
    result = {
        "configuration": {"finetune_rounds": 100, "early_stopping_patience": 3, "no_content_steps": True},
        "pretrained": pretrained,
        "cllm4rec_pretrained": {"validation_per_round": [{}] * 9, "search": trials},
        "cllm4rec": {"validation_per_round": [{}] * 4, "wall_s": 10.0},
    }
    assert (quality_epochs(result), quality_epochs(result, fine_tuned=True)) == ("14", "18")
    assert run_seconds(result) == 60.0
    del trials[1]["train_runtime_s"]  # a search recorded before trials recorded their seconds
    (folder / "recipe.json").write_text(json.dumps({"search": trials}))
    with pytest.raises(SystemExit, match="its search records no training seconds per trial"):
        pretrained_model_record(folder)


def test_results_record_local_folders_by_name_and_not_where_outputs_went():
    from benchmarks.provenance import recorded_arguments, recorded_location

    arguments = argparse.Namespace(
        backbone="/models/SmolLM2-135M", tokenizer="../tokenizers/gpt2", data="data/beauty", output_dir="/runs", seed=1
    )
    recorded = {"backbone": "SmolLM2-135M", "tokenizer": "gpt2", "data": "data/beauty", "seed": 1}
    assert recorded_arguments(arguments) == recorded
    assert recorded_location("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    assert recorded_location(None) is None


@pytest.mark.parametrize("flags", [["--paper"], ["--recipe", "paper"]])
def test_paper_flag_sets_the_paper_configuration_and_explicit_options_win(flags):
    from benchmarks.quality import parse_args, recipe_options

    expected = recipe_options("paper")
    assert (expected["warmup_epochs"], expected["pretrain_rounds"], expected["finetune_rounds"]) == (10, 100, 150)
    assert (expected["batch_size"], expected["finetune_learning_rate"]) == (20, 1e-4)
    paper = vars(parse_args(["--name", "paper", *flags]))
    assert {key: paper[key] for key in expected} == expected and paper["recipe"] == "paper"
    shorter = vars(parse_args(["--name", "short", *flags, "--pretrain_rounds", "3", "--finetune_rounds", "2"]))
    assert (shorter["pretrain_rounds"], shorter["finetune_rounds"]) == (3, 2)
    assert {key: shorter[key] for key in expected if "rounds" not in key} == {
        key: value for key, value in expected.items() if "rounds" not in key
    }
    assert vars(parse_args(["--name", "ours"]))["batch_size"] != expected["batch_size"]


def test_a_recipe_of_the_training_commands_is_this_scripts_defaults():
    from benchmarks.quality import parse_args, training_arguments

    args = parse_args(["--name", "small", "--recipe", "small-cpu", "--tokenizer", "t"])
    assert (args.random_init, args.backbone_dropout, args.no_content_steps) == (True, 0.4, True)
    assert (args.finetune_rounds, args.early_stopping_patience, args.weight_average_decay) == (0, 10, 0.999)
    training = training_arguments(args, "pretraining", Path("runs/x"))
    assert (training.num_train_epochs, training.early_stopping_patience) == (100, 10)
    own = parse_args(["--name", "own", "--recipe", "small-cpu", "--backbone", "builtin-tiny-gpt2"])
    assert (own.random_init, own.backbone_overrides, own.backbone_dropout) == (False, None, 0.4)


@pytest.mark.parametrize(
    "options, stages",
    [
        ([], ("frozen", "frozen")),
        (["--backbone_training", "full"], ("full", "full")),
        (["--backbone_training", "lora"], ("frozen", "lora")),
        (["--backbone_training", "lora", "--pretrain_backbone_training", "lora"], ("lora", "lora")),
        # adapters of pretraining are merged into the backbone that fine-tuning starts from
        (["--pretrain_backbone_training", "lora"], ("lora", "frozen")),
    ],
)
def test_backbone_training_per_stage(options, stages, tmp_path):
    from benchmarks.quality import parse_args, training_arguments

    lora_rank = ["--lora_rank", "4"] if "lora" in stages else []  # refused where no stage trains adapters
    args = parse_args(["--name", "stages", *lora_rank, *options])
    assert (args.pretrain_backbone_training, args.backbone_training) == stages
    for stage, backbone_training in zip(("pretraining", "finetuning"), stages, strict=True):
        arguments = training_arguments(args, stage, tmp_path)
        assert arguments.backbone_training == backbone_training
        assert arguments.lora_rank == (4 if backbone_training == "lora" else 8)


def test_each_stage_gets_its_schedule(tmp_path):
    from benchmarks.quality import parse_args, training_arguments

    args = parse_args(["--name", "stages", "--warmup_epochs", "1", "--pretrain_rounds", "3", "--finetune_rounds", "2"])
    pretraining = training_arguments(args, "pretraining", tmp_path)
    assert type(pretraining).__name__ == "PretrainingArguments"
    assert (pretraining.num_train_epochs, pretraining.content_warmup_epochs) == (4, 1)  # the warm-up, then 3 rounds
    finetuning = training_arguments(args, "finetuning", tmp_path)
    assert type(finetuning).__name__ == "FineTuningArguments" and finetuning.num_train_epochs == 2
    assert parse_args(["--name", "ids", "--no_content_steps"]).warmup_epochs == 0


def test_a_content_warmup_needs_content_steps(capsys):
    from benchmarks.quality import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--name", "ids", "--no_content_steps", "--warmup_epochs", "1"])
    assert "--no_content_steps" in capsys.readouterr().err


def test_unknown_baselines_are_refused_before_anything_runs(capsys):
    from benchmarks.quality import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--name", "x", "--baselines", "ease,knn"])
    assert "unknown baselines ['knn']" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # what a shell variable holding `--baselines ''` passes on
        parse_args(["--name", "x", "--baselines", "''"])
    assert "unknown baselines [\"''\"]" in capsys.readouterr().err
    assert parse_args(["--name", "x", "--baselines", ""]).baselines == ""
    assert parse_args(["--name", "x"]).baselines == "popularity,ease,multivae"


def test_pretrained_refuses_what_only_pretraining_reads(tmp_path, capsys):
    from benchmarks.quality import parse_args

    run_folder = tmp_path / "pretrain"
    run_folder.mkdir()
    with pytest.raises(SystemExit):
        parse_args(["--name", "x", "--pretrained", str(run_folder), "--finetune_rounds", "2"])
    assert "no trainer_state.json or test_results.json or training_args.json there" in capsys.readouterr().err
    for name in ("trainer_state.json", "test_results.json", "training_args.json"):
        (run_folder / name).write_text("{}")
    with pytest.raises(SystemExit):
        parse_args(["--name", "x", "--pretrained", str(run_folder), "--backbone_dropout", "0.2", "--search"])
    assert "--backbone_dropout, --search: options of pretraining, which --pretrained skips." in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--name", "x", "--pretrained", str(run_folder), "--read_out_prefix_powers", "0", "2"])
    assert "--read_out_prefix_powers: options of pretraining" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--name", "x", "--recipe", "small-cpu", "--pretrained", str(run_folder)])
    assert "--pretrained is fine-tuned: give --finetune_rounds above 0." in capsys.readouterr().err
    args = parse_args(
        ["--name", "x", "--recipe", "small-cpu", "--pretrained", str(run_folder), "--finetune_rounds", "5"]
    )
    assert (args.pretrained, args.finetune_rounds, args.finetune_learning_rate) == (str(run_folder), 5, 1e-4)


def test_read_out_prefix_powers_need_the_mean_read_out(capsys):
    from benchmarks.quality import parse_args

    refused = "--read_out_prefix_powers weighs the mean read-out: it cannot go with --read_out last."
    with pytest.raises(SystemExit):  # the script's own read-out is the last token's
        parse_args(["--name", "x", "--read_out_prefix_powers", "0", "2"])
    assert refused in capsys.readouterr().err
    # an explicit --read_out drops the recipe's powers, and refuses explicit ones
    assert parse_args(["--name", "x", "--recipe", "small-cpu", "--read_out", "last"]).read_out_prefix_powers is None
    with pytest.raises(SystemExit):
        parse_args(["--name", "x", "--recipe", "small-cpu", "--read_out", "last", "--read_out_prefix_powers", "0"])
    assert refused in capsys.readouterr().err
    args = parse_args(["--name", "x", "--recipe", "small-cpu", "--read_out_prefix_powers", "0", "3"])
    assert (args.read_out, args.read_out_prefix_powers) == ("mean", [0, 3])


@pytest.mark.parametrize(
    "options, message",
    [
        (["--finetune_rounds", "0", "--history_attention", "set"], "--history_attention: options of fine-tuning"),
        (["--finetune_rounds", "0", "--finetune_learning_rate", "1e-4"], "--finetune_learning_rate: options of"),
        # the recipe's own schedule fine-tunes for no round
        (["--recipe", "small-cpu", "--recommendation_prompt", "{user} has interacted with {history}"], "skips"),
        (["--backbone_training", "lora", "--finetune_rounds", "0"], "it needs --finetune_rounds above 0"),
        (["--lora_rank", "4"], "--lora_rank: no stage trains LoRA adapters here."),
        (["--backbone_training", "full", "--lora_dropout", "0.1"], "--lora_dropout: no stage trains LoRA"),
        (["--no_content_steps", "--content_documents", "user_item"], "--content_documents: no stage trains"),
        (["--recipe", "small-cpu", "--content_documents", "item"], "--content_documents: no stage trains"),
    ],
)
def test_options_no_stage_reads_are_refused(options, message, capsys):
    from benchmarks.quality import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--name", "x", *options])
    assert message in capsys.readouterr().err


def test_lora_options_go_with_the_stage_that_trains_adapters():
    from benchmarks.quality import parse_args

    pretraining = ["--finetune_rounds", "0", "--pretrain_backbone_training", "lora"]
    args = parse_args(["--name", "x", *pretraining, "--lora_rank", "4"])
    assert (args.lora_rank, args.backbone_training) == (4, "frozen")
    recipe = parse_args(["--name", "x", "--recipe", "smollm2"])  # the recipe's adapters, in pretraining alone
    assert (recipe.pretrain_backbone_training, recipe.backbone_training, recipe.finetune_rounds) == ("lora", "lora", 0)


@pytest.mark.parametrize("backbone_training", ["full", "frozen"])
def test_backbone_training_replaces_the_recipes_pretraining_adapters(backbone_training):
    from benchmarks.quality import parse_args

    args = parse_args(["--name", "x", "--recipe", "smollm2", "--backbone_training", backbone_training])
    assert (args.pretrain_backbone_training, args.backbone_training) == (backbone_training, backbone_training)
    both = ["--backbone_training", backbone_training, "--pretrain_backbone_training", "lora"]
    assert parse_args(["--name", "x", "--recipe", "smollm2", *both]).pretrain_backbone_training == "lora"


@pytest.mark.parametrize(
    "options, message",
    [
        (["--finetune_rounds", "-1"], "--finetune_rounds counts rounds (0: no fine-tuning), got -1."),
        (["--finetune_rounds", "-3"], "--finetune_rounds counts rounds (0: no fine-tuning), got -3."),
        (["--pretrain_rounds", "0"], "--pretrain_rounds counts rounds: at least 1, got 0."),
        (["--warmup_epochs", "-1"], "content_warmup_epochs must be a whole number of at least 0"),
        (["--recommendation_prompt", "{user} likes"], "`recommendation_prompt` must contain the placeholders"),
        (["--history_permutations", "65"], "--history_permutations takes 1 to 64, got 65."),
        (["--lr_scheduler_type", "sometimes"], "sometimes is not a valid SchedulerType"),
        (["--lambda_v", "-1"], "lambda_v must be a finite number >= 0"),
        (["--name", "runs/x"], "--name names the run's files and folders: no path separator, got 'runs/x'."),
        # abbreviations would slip past the refusals of options given explicitly
        (["--search", "--early_stopping_patience", "1", "--batch", "16"], "unrecognized arguments: --batch 16"),
    ],
)
def test_quality_refuses_bad_values_before_any_stage_trains(options, message, capsys):
    from benchmarks.quality import parse_args

    with pytest.raises(SystemExit) as refused:
        parse_args(["--name", "x", *options])
    assert refused.value.code == 2 and message in capsys.readouterr().err


def test_quality_refuses_an_abbreviated_pretraining_option_with_pretrained(tmp_path, capsys):
    from benchmarks.quality import parse_args

    for name in ("trainer_state.json", "test_results.json", "training_args.json"):
        (tmp_path / name).write_text("{}")
    with pytest.raises(SystemExit):
        parse_args(["--name", "x", "--pretrained", str(tmp_path), "--finetune_rounds", "1", "--pretrain_r", "5"])
    assert "unrecognized arguments: --pretrain_r 5" in capsys.readouterr().err


@pytest.mark.parametrize(
    "options, message",
    [
        (["--loading_only", "--stages", "content,prediction"], "--stages prediction: of prediction, which"),
        (["--loading_only", "--dtype", "bfloat16", "--prediction_weights", "bfloat16"], "--dtype, --prediction_w"),
        (["--loading_only", "--scaling_items", "1000"], "--scaling_items: of prediction, which --loading_only"),
        (["--scaling_items", "1k"], "catalogue sizes are whole numbers separated by commas, got '1k'."),
        (["--scaling_items", "1000,50"], "a catalogue holds 110 items at least, got [50]."),
        (["--sample", "-5"], "--sample must be at least 1, got -5."),
        (["--sample", "64", "--batch_size", "256"], "give more than 512."),
        (["--samp", "64"], "unrecognized arguments: --samp 64"),
    ],
)
def test_speed_refuses_what_it_would_ignore_or_fail_on_late(options, message, capsys):
    from benchmarks.speed import parse_args

    with pytest.raises(SystemExit) as refused:
        parse_args(options)
    assert refused.value.code == 2 and message in capsys.readouterr().err


def test_speed_reads_its_options_up_front():
    from benchmarks.speed import parse_args

    assert parse_args(["--scaling_items", "1000, 20000"]).scaling_items == [1000, 20000]
    assert parse_args(["--scaling_items", ""]).scaling_items == []
    loading = parse_args(["--loading_only", "--sample", "64", "--batch_size", "16"])
    assert loading.stages == ["content", "collaborative", "finetuning"] and loading.scaling_items == []
    assert parse_args(["--stages", "prediction", "--sample", "8"]).sample == 8  # no training batches to time


def test_catalogue_scaling_predicts_with_the_weights_and_batches_of_prediction(monkeypatch):
    from benchmarks import speed

    from hf_cllm4rec.training.recipes import (
        DataArguments,
        PretrainingModelArguments,
        build_pretraining_model,
        load_data,
    )

    model, tokenizer = build_pretraining_model(
        PretrainingModelArguments(backbone="builtin-tiny-gpt2"), load_data(DataArguments(data="builtin"))
    )
    options = ["--scaling_items", "200", "--scaling_users", "8", "--eval_max_tokens", "64"]
    args = speed.parse_args([*options, "--prediction_weights", "bfloat16"])
    calls = []

    class RecordingRecommender(speed.Recommender):
        def recommend_batch(self, user_ids, histories, k=10):
            calls.append((len(user_ids), self.model.dtype, torch.is_autocast_enabled("cpu")))
            return super().recommend_batch(user_ids, histories, k)

    monkeypatch.setattr(speed, "Recommender", RecordingRecommender)
    tokenizer_factory = lambda scaled: type(tokenizer)(tokenizer.base_tokenizer, scaled)  # noqa: E731
    [scaling] = speed.time_catalogue_scaling(model.config, tokenizer_factory, args, torch.device("cpu"))
    assert scaling["num_items"] == 200 and scaling["users"] == 8
    timed = calls[1:]  # after the warm-up batch
    assert sum(users for users, _, _ in timed) == 8 and max(users for users, _, _ in timed) < 8  # 64 tokens a batch
    assert {(dtype, autocast) for _, dtype, autocast in calls} == {(torch.bfloat16, False)}


@pytest.mark.parametrize(
    "options, message",
    [
        (["--baselines", ""], "--baselines names none"),
        (["--vae_epochs", "0"], "--vae_epochs must be at least 1, got 0."),
        (["--baselines", "popularity,ease", "--vae_epochs", "5"], "--vae_epochs trains Multi-VAE: it needs multivae"),
        (["--vae_ep", "5"], "unrecognized arguments: --vae_ep 5"),
    ],
)
def test_baselines_refuse_what_they_cannot_run_before_any_runs(options, message, capsys):
    from benchmarks.baselines import parse_args

    with pytest.raises(SystemExit) as refused:
        parse_args(["--data", "builtin", "--name", "x", *options])
    assert refused.value.code == 2 and message in capsys.readouterr().err
    assert (
        parse_args(["--data", "builtin", "--name", "x", "--baselines", "multivae", "--vae_epochs", "3"]).vae_epochs
        == 3
    )


def test_report_refuses_a_figure_it_would_not_draw_before_writing_anything(tmp_path):
    readme, benchmarks_readme = tmp_path / "README.md", tmp_path / "benchmarks-README.md"
    readme.write_text(
        "<!-- headline:start -->\nold\n<!-- headline:end -->\n<!-- scale:start -->\n<!-- scale:end -->\n"
    )
    benchmarks_readme.write_text(
        "<!-- datasets:start -->\n<!-- datasets:end -->\n<!-- results:start -->\nold\n<!-- results:end -->\n"
    )
    report = ["benchmarks/report.py", "--readme", str(readme), "--benchmarks_readme", str(benchmarks_readme)]
    for options, message in (
        (["--check", "--figure", str(tmp_path / "headline.png")], "--figure: --check compares the text sections"),
        (["--figure", str(tmp_path / "missing" / "headline.png")], f"no folder {tmp_path / 'missing'} to draw it in"),
    ):
        refused = subprocess.run([sys.executable, *report, *options], cwd=ROOT, capture_output=True, text=True)
        assert refused.returncode == 2 and message in refused.stderr
        assert "old" in readme.read_text() and "old" in benchmarks_readme.read_text()


@pytest.mark.parametrize("folder", ["missing", "empty"])
def test_regenerate_cards_refuses_a_folder_without_cards(folder, tmp_path):
    (tmp_path / "empty").mkdir()
    command = [sys.executable, "benchmarks/regenerate_cards.py", "--check", "--cards_dir", str(tmp_path / folder)]
    refused = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 2 and "no cllm4rec-*.md card there" in refused.stderr


def test_cold_start_refuses_an_output_file_in_a_missing_folder_before_evaluating(tmp_path):
    output = tmp_path / "missing" / "cold_start.json"
    command = [
        sys.executable,
        "-m",
        "benchmarks.cold_start",
        "--model",
        str(tmp_path / "no-model"),
        "--data",
        "builtin",
    ]
    refused = subprocess.run([*command, "--output_file", str(output)], cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 2 and f"no folder {output.parent} to write it in" in refused.stderr


@pytest.mark.parametrize("script", ["quality", "speed"])
def test_no_cudnn_attention_switches_the_kernel_off(script):
    import importlib

    module = importlib.import_module(f"benchmarks.{script}")
    name_options = ["--name", "x"] if script == "quality" else []
    enabled = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        module.apply_cudnn_attention_option(module.parse_args(name_options))
        assert torch.backends.cuda.cudnn_sdp_enabled() == enabled
        module.apply_cudnn_attention_option(module.parse_args([*name_options, "--no_cudnn_attention"]))
        assert not torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(enabled)


def test_bf16_runs_where_the_machine_has_no_gpu(tmp_path):
    from benchmarks.quality import parse_args, training_arguments

    args = parse_args(["--name", "bf16", "--bf16"])
    arguments = training_arguments(args, "finetuning", tmp_path)
    assert arguments.bf16 and arguments.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_report_tables_in_the_readmes_are_those_of_the_result_files():
    run("benchmarks/report.py", "--check")
    lines = (ROOT / "README.md").read_text().splitlines()
    commands = lines[lines.index("```bash") + 1 : lines.index("```")]  # the set-up commands, kept on one line each
    assert len(lines) <= 150 and all(len(line) <= 119 for line in lines if line not in commands)


def test_committed_model_cards_are_what_the_template_renders_from_them():
    run("benchmarks/regenerate_cards.py", "--check")


def test_a_card_is_regenerated_with_its_figures_and_checked_against_the_result_it_cites(tmp_path):
    card = "cllm4rec-amazon-beauty-gpt2-256d.md"
    committed = (ROOT / "model_cards" / card).read_text()
    stale = committed.replace("history_permutations=24)", "history_permutations=24, outdated=True)", 1)
    assert stale != committed
    (tmp_path / card).write_text(stale)
    run("benchmarks/regenerate_cards.py", "--cards_dir", str(tmp_path))
    assert (tmp_path / card).read_text() == committed

    measured = "      value: 0.18209215660888173\n"
    (tmp_path / card).write_text(committed.replace(measured, "      value: 0.19\n"))
    failed = subprocess.run(
        [sys.executable, "benchmarks/regenerate_cards.py", "--cards_dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert failed.returncode != 0 and "test_recall@20: card 0.19, result 0.18209215660888173" in failed.stderr


def test_gpu_script_drives_the_benchmarks_with_options_they_accept(tmp_path):
    """`benchmarks/gpu.sh` runs with a `python` that only records its calls: every benchmark call must parse."""
    from benchmarks import quality, speed

    calls = tmp_path / "calls.jsonl"
    recorder = tmp_path / "record.py"
    recorder.write_text(
        "import json, sys\n"
        "if sys.argv[1] == '-c':\n    print('h200')\n"
        f"else:\n    open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    (tmp_path / "bin").mkdir()
    fake_python = tmp_path / "bin" / "python"
    fake_python.write_text(f'#!/bin/sh\nexec {sys.executable} {recorder} "$@"\n')
    fake_python.chmod(0o755)
    environment = {"PATH": f"{fake_python.parent}:/usr/bin:/bin"}
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "SMOLLM2", "TOKENIZER"], env=environment, capture_output=True
    )
    assert result.returncode == 0, result.stderr.decode()

    invocations = [json.loads(line) for line in calls.read_text().splitlines()]
    scripts = sorted(Path(invocation[0]).name for invocation in invocations)
    assert scripts == ["quality.py", "quality.py", "speed.py", "speed.py"]
    quality_runs = []
    for script, *argv in invocations:
        is_quality = script.endswith("quality.py")
        parsed = (quality if is_quality else speed).parse_args(argv)
        assert parsed.data == "data/beauty" and parsed.backbone in ("SMOLLM2", "gpt2")
        assert (parsed.name if is_quality else Path(parsed.output).stem).endswith("-h200")
        assert parsed.no_cudnn_attention
        if is_quality:
            quality_runs.append(parsed)
    assert all(run.early_stopping_patience == 3 for run in quality_runs)
    recipe, regularized = sorted(quality_runs, key=lambda run: run.recipe is None)
    assert recipe.recipe == "smollm2" and recipe.no_content_steps
    assert not regularized.no_content_steps and regularized.lambda_v > 0
    # "the same with what a CPU cannot afford": no fine-tuning in either, and no other pretraining setting differs
    assert recipe.finetune_rounds == regularized.finetune_rounds == 0
    what_a_cpu_cannot_afford = {"no_content_steps", "warmup_epochs", "lambda_v"}
    run_settings = {"name", "recipe", "pretrain_rounds", "backbone_training", "finetune_learning_rate"}
    differing = {key for key, value in vars(recipe).items() if vars(regularized)[key] != value}
    assert differing <= what_a_cpu_cannot_afford | run_settings


@pytest.mark.slow
def test_quality_search_pretrains_the_grid_and_records_every_trial(tmp_path):
    from hf_cllm4rec.training.presets import SEARCH_GRIDS

    results = tmp_path / "results"
    run(
        "benchmarks/quality.py", "--data", "builtin", "--backbone", "builtin-tiny-gpt2", "--name", "search",
        "--warmup_epochs", "0", "--pretrain_rounds", "1", "--finetune_rounds", "0", "--early_stopping_patience", "1",
        "--search", "--baselines", "", "--output_dir", str(tmp_path / "runs"), "--results_dir", str(results),
    )  # fmt: skip
    pretrained = json.loads((results / "quality-search.json").read_text())["cllm4rec_pretrained"]
    trials = pretrained["search"]
    assert [set(trial["settings"]) for trial in trials] == [set(SEARCH_GRIDS["pretrain"])] * len(trials)
    assert len(trials) == math.prod(len(values) for values in SEARCH_GRIDS["pretrain"].values())
    best = max(trials, key=lambda trial: trial["validation_selection_score"])
    config = json.loads((tmp_path / "runs" / "search" / "pretrain" / "config.json").read_text())
    assert config["text_config"]["attn_pdrop"] == best["settings"]["backbone_dropout"]
    assert max(entry["eval_selection_score"] for entry in pretrained["validation_per_round"]) == pytest.approx(
        best["validation_selection_score"]
    )


@pytest.mark.parametrize(
    "options, message",
    [
        (["--backbone_dropout", "0.1"], "--search tries its own values of backbone_dropout"),
        (["--batch_size", "32"], "--batch_size: --search tries its own values of batch_size"),
        ([], "give --early_stopping_patience"),
    ],
)
def test_quality_search_refuses_what_it_cannot_compare(options, message, capsys):
    from benchmarks.quality import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--name", "x", "--search", *options])
    assert message in capsys.readouterr().err


def test_quality_refuses_to_start_over_a_run_of_the_same_name(tmp_path, capsys):
    from benchmarks.quality import parse_args

    (tmp_path / "runs" / "x" / "pretrain").mkdir(parents=True)
    with pytest.raises(SystemExit):
        parse_args(["--name", "x", "--output_dir", str(tmp_path / "runs")])
    message = f"--name x: {tmp_path / 'runs' / 'x'} holds an earlier run: continue it with --resume, or give another"
    assert message in capsys.readouterr().err
    assert parse_args(["--name", "x", "--output_dir", str(tmp_path / "runs"), "--resume"]).resume
