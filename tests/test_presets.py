"""Named recipes of the training commands (`--recipe`), and early stopping on the validation selection score."""

import itertools
import json
import shutil
from pathlib import Path

import pytest
from test_prepare_cli import assert_usage_error, run_cli

from hf_cllm4rec.cli.train import stage_parser
from hf_cllm4rec.data import make_synthetic_data
from hf_cllm4rec.training import CLLM4RecTrainer, FineTuningArguments, PretrainingArguments
from hf_cllm4rec.training.presets import DEFAULT_RECIPE, RECIPES, SEARCH_GRIDS, apply_recipe, get_recipe
from hf_cllm4rec.training.recipes import (
    BUILTIN_BACKBONE,
    RECIPE_NAME,
    SEARCH_TRIAL_NAME,
    PretrainingModelArguments,
    build_pretraining_model,
)

QUICK = ("--report_to", "none", "--use_cpu", "true", "--disable_tqdm", "true", "--max_length", "64")


def parsed(command: str, *args: str):
    """The model, data and training arguments that `cllm4rec COMMAND ARGS` runs with, and its recipe record."""
    parser = stage_parser(command)
    record = apply_recipe(parser, list(args), command)
    model_args, data_args, training_args, _ = parser.parse_args_into_dataclasses(args=list(args))
    return model_args, data_args, training_args, record


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_gives_valid_arguments_to_both_stages(name, tmp_path):
    recipe = get_recipe(name)
    model_args, _, training_args, record = parsed("pretrain", "--recipe", name, "--output_dir", str(tmp_path))
    assert isinstance(training_args, PretrainingArguments) and record["recipe"] == name
    for setting, value in recipe.pretraining.items():
        assert getattr(training_args, setting, getattr(model_args, setting, None)) == value, setting
    model_args, _, training_args, _ = parsed(
        "finetune", "--recipe", name, "--pretrained", "p", "--output_dir", str(tmp_path)
    )
    assert isinstance(training_args, FineTuningArguments)
    for setting, value in recipe.finetuning.items():
        assert getattr(training_args, setting) == value, setting


def test_the_default_recipe_is_small_cpu_and_the_papers_is_one_option_away(tmp_path):
    assert DEFAULT_RECIPE == "small-cpu"
    model_args, _, training_args, record = parsed("pretrain", "--output_dir", str(tmp_path))
    assert record["recipe"] == "small-cpu"
    assert model_args.random_init and json.loads(model_args.backbone_overrides)["n_layer"] == 2
    assert training_args.early_stopping_patience == 10 and training_args.weight_average_decay == 0.999
    assert not training_args.content_steps
    model_args, _, training_args, _ = parsed("pretrain", "--recipe", "paper", "--output_dir", str(tmp_path))
    assert (model_args.backbone, model_args.random_init) == ("gpt2", False)
    assert (training_args.num_train_epochs, training_args.content_warmup_epochs) == (110, 10)
    assert training_args.early_stopping_patience is None and training_args.content_steps


def test_options_given_explicitly_win_over_the_recipe(tmp_path):
    _, _, training_args, record = parsed(
        "pretrain", "--output_dir", str(tmp_path), "--learning_rate=0.01", "--content_steps", "true"
    )
    assert training_args.learning_rate == 0.01 and training_args.content_steps
    assert training_args.per_device_train_batch_size == 64  # the recipe's, not given
    assert record["given_instead"] == ["content_steps", "learning_rate"]
    assert "learning_rate" not in record["settings"]
    _, _, training_args, _ = parsed("pretrain", "--output_dir", str(tmp_path), "--no_content_steps")
    assert not training_args.content_steps


def test_an_explicit_backbone_replaces_the_recipes_backbone_with_its_shape(tmp_path):
    model_args, _, training_args, record = parsed(
        "pretrain", "--backbone", "builtin-tiny-gpt2", "--output_dir", str(tmp_path)
    )
    assert (model_args.backbone, model_args.random_init, model_args.backbone_overrides) == (
        "builtin-tiny-gpt2",
        False,
        None,
    )
    assert not {"random_init", "backbone_overrides"} & set(record["settings"])
    assert training_args.weight_average_decay == 0.999  # the rest of the recipe stays


def test_an_explicit_read_out_replaces_the_recipes_choice_of_its_weighting(tmp_path):
    _, _, training_args, _ = parsed("pretrain", "--output_dir", str(tmp_path))
    assert training_args.read_out_prefix_powers == [0, 1, 2, 4, 8]
    model_args, _, training_args, record = parsed("pretrain", "--output_dir", str(tmp_path), "--read_out", "last")
    assert model_args.read_out == "last" and training_args.read_out_prefix_powers is None
    assert "read_out_prefix_powers" not in record["settings"]


def test_an_unknown_recipe_is_a_one_line_error_naming_the_recipes(capsys, tmp_path):
    for command in ("pretrain", "finetune"):
        message = "unknown recipe 'fast': choose one of paper, small-cpu, smollm2"
        assert_usage_error(capsys, command, "--recipe", "fast", "--output_dir", str(tmp_path), message=message)
    assert not any(tmp_path.iterdir())


def test_help_names_the_recipes(capsys):
    assert run_cli("pretrain", "--help") == 0
    assert "--recipe" in capsys.readouterr().out and "small-cpu" in " ".join(RECIPES)


def validation_scores(output_dir) -> list[float]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [entry["eval_selection_score"] for entry in history if "eval_selection_score" in entry]


def test_early_stopping_ends_after_patience_rounds_without_improvement_and_keeps_the_best(tmp_path, capsys):
    output_dir, patience, max_rounds = tmp_path / "run", 1, 30
    args = ("--backbone", "builtin-tiny-gpt2", "--output_dir", str(output_dir), "--learning_rate", "0.01", *QUICK)
    args = (*args, "--logging_steps", "1")
    assert run_cli("pretrain", *args, "--num_train_epochs", str(max_rounds), "--early_stopping_patience", "1") == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("Recipe small-cpu: ") and "given instead: backbone early_stopping_patience" in stdout
    scores = validation_scores(output_dir)
    best = max(range(len(scores)), key=scores.__getitem__)
    assert len(scores) < max_rounds, "the run did not stop early"
    assert len(scores) == best + 1 + patience
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["best_metric"] == pytest.approx(scores[best])
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{state['global_step'] // len(scores) * (best + 1)}")
    # the learning rate does not depend on the maximum round count: it is constant over every step run
    rates = [entry["learning_rate"] for entry in state["log_history"] if "learning_rate" in entry]
    assert rates and set(rates) == {0.01}
    record = json.loads((output_dir / RECIPE_NAME).read_text())
    assert record["recipe"] == "small-cpu" and record["settings"]["lr_scheduler_type"] == "constant"
    saved = json.loads((output_dir / "training_args.json").read_text())
    assert saved["early_stopping_patience"] == 1 and saved["per_device_train_batch_size"] == 64


def test_a_resumed_run_stops_where_the_uninterrupted_one_did(tmp_path, capsys):
    args = ("--backbone", "builtin-tiny-gpt2", "--learning_rate", "0.02", "--num_train_epochs", "30", *QUICK)
    args = (*args, "--early_stopping_patience", "2", "--save_total_limit", "100")
    assert run_cli("pretrain", *args, "--output_dir", str(tmp_path / "run")) == 0
    rounds = len(validation_scores(tmp_path / "run"))
    assert rounds < 30, "the run did not stop early"
    # the checkpoint of the round before the last: one round without improvement counted
    checkpoints = sorted((tmp_path / "run").glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    resumed_from = checkpoints[-2]
    stored = json.loads((resumed_from / "trainer_state.json").read_text())["stateful_callbacks"]
    assert stored["ValidationEarlyStopping"]["attributes"]["early_stopping_patience_counter"] == 1
    resumed = tmp_path / "resumed"
    shutil.copytree(resumed_from, resumed / resumed_from.name)
    resume = ("--output_dir", str(resumed), "--resume_from_checkpoint", str(resumed / resumed_from.name))
    assert run_cli("pretrain", *args, *resume) == 0
    capsys.readouterr()
    assert len(validation_scores(resumed)) == rounds
    assert validation_scores(resumed) == pytest.approx(validation_scores(tmp_path / "run"))


def test_a_run_resumed_from_the_round_where_early_stopping_ended_it_ends_there(tmp_path, capsys):
    args = ("--backbone", "builtin-tiny-gpt2", "--learning_rate", "0.02", "--num_train_epochs", "30", *QUICK)
    # every checkpoint kept: the last, of the round that ended the run, is as a kill just after saving it left it
    args = (*args, "--early_stopping_patience", "1", "--logging_steps", "1", "--save_total_limit", "100")
    run_dir = tmp_path / "run"
    assert run_cli("pretrain", *args, "--output_dir", str(run_dir)) == 0
    rounds, state = len(validation_scores(run_dir)), json.loads((run_dir / "trainer_state.json").read_text())
    assert rounds < 30, "the run did not stop early"
    finished = {name: (run_dir / name).read_bytes() for name in ("model.safetensors", "config.json")}
    for name in ("model.safetensors", "trainer_state.json"):  # as if stopped after the last checkpoint, before the end
        (run_dir / name).unlink()
    assert run_cli("pretrain", *args, "--output_dir", str(run_dir), "--resume_from_checkpoint", "true") == 0
    capsys.readouterr()
    resumed_state = json.loads((run_dir / "trainer_state.json").read_text())
    assert len(validation_scores(run_dir)) == rounds and resumed_state["global_step"] == state["global_step"]
    assert resumed_state["best_model_checkpoint"] == state["best_model_checkpoint"]
    assert {name: (run_dir / name).read_bytes() for name in finished} == finished


def recorded_splits(monkeypatch) -> list[str]:
    """The splits that every `CLLM4RecTrainer` scores from now on, in order."""
    splits, split_metrics = [], CLLM4RecTrainer.split_metrics

    def recording_split_metrics(trainer, split, *args, **kwargs):
        splits.append(split)
        return split_metrics(trainer, split, *args, **kwargs)

    monkeypatch.setattr(CLLM4RecTrainer, "split_metrics", recording_split_metrics)
    return splits


@pytest.mark.parametrize("epochs, patience", [(30, 2), (3, 10)], ids=["stopped_early", "every_epoch_run"])
def test_a_finished_run_resumed_is_not_trained_again(tmp_path, capsys, monkeypatch, epochs, patience):
    args = ("--backbone", "builtin-tiny-gpt2", "--learning_rate", "0.02", "--num_train_epochs", str(epochs), *QUICK)
    args = (*args, "--early_stopping_patience", str(patience), "--output_dir", str(tmp_path / "run"))
    assert run_cli("pretrain", *args) == 0
    capsys.readouterr()
    run_dir = tmp_path / "run"
    state = json.loads((run_dir / "trainer_state.json").read_text())
    best = Path(state["best_model_checkpoint"]).name
    if epochs == 30:
        assert len(validation_scores(run_dir)) < 30, "the run did not stop early"
        assert best != f"checkpoint-{state['global_step']}", "the round that ended the run was the best"
    else:
        assert len(validation_scores(run_dir)) == epochs
    # the recipe's save_total_limit=1: only the best checkpoint is left, from which the Trainer would train on
    checkpoints = {path: path.stat().st_mtime_ns for path in run_dir.glob("checkpoint-*/*")}
    assert {path.parent.name for path in checkpoints} == {best}
    finished = {
        name: (run_dir / name).read_bytes() for name in ("model.safetensors", "config.json", "test_results.json")
    }
    splits = recorded_splits(monkeypatch)
    assert run_cli("pretrain", *args, "--resume_from_checkpoint", "true") == 0
    capsys.readouterr()
    assert "validation" not in splits, "the read-out power was chosen again rather than read from the run's log"
    assert json.loads((run_dir / "trainer_state.json").read_text())["log_history"] == state["log_history"]
    assert {path: path.stat().st_mtime_ns for path in run_dir.glob("checkpoint-*/*")} == checkpoints
    assert {name: (run_dir / name).read_bytes() for name in finished} == finished


def test_a_new_run_is_refused_an_output_dir_with_the_checkpoints_of_another(tmp_path, capsys):
    args = ("pretrain", "--backbone", "builtin-tiny-gpt2", "--num_train_epochs", "1", *QUICK)
    assert run_cli(*args, "--output_dir", str(tmp_path / "run")) == 0
    written = {path: path.stat().st_mtime_ns for path in (tmp_path / "run").rglob("*")}
    message = f"{tmp_path / 'run'} holds the checkpoints of an earlier run (up to checkpoint-"
    assert_usage_error(capsys, *args, "--output_dir", str(tmp_path / "run"), "--seed", "1", message=message)
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "run").rglob("*")} == written


def test_a_run_without_a_test_split_is_refused_before_training(tmp_path, capsys):
    prepare = ("prepare", "--source", "synthetic", "--num-users", "60", "--test-fraction", "0")
    assert run_cli(*prepare, "--out", str(tmp_path / "data")) == 0
    args = ("pretrain", "--backbone", "builtin-tiny-gpt2", "--data", str(tmp_path / "data"), *QUICK)
    message = "The 'test' split has no held-out items: evaluation would measure nothing. The run ends with its test"
    assert_usage_error(capsys, *args, "--output_dir", str(tmp_path / "run"), message=message)
    assert not (tmp_path / "run").exists()


def test_search_resumes_each_trial_from_its_own_checkpoints_not_from_a_folder(capsys, tmp_path):
    args = ("pretrain", "--backbone", "builtin-tiny-gpt2", "--output_dir", str(tmp_path / "run"), "--search", *QUICK)
    message = "search resumes each trial from its own last complete checkpoint: give resume_from_checkpoint=true"
    assert_usage_error(capsys, *args, "--resume_from_checkpoint", str(tmp_path / "checkpoint-1"), message=message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        (("--recipe", "paper", "--early_stopping_patience", "2"), "needs eval_strategy='epoch', save_strategy="),
        (("--load_best_model_at_end", "false"), "and load_best_model_at_end"),
        (("--lr_scheduler_type", "linear"), "lr_scheduler_type='linear' decays over num_train_epochs"),
        (("--early_stopping_patience", "0"), "early_stopping_patience must be a whole number of at least 1"),
    ],
)
def test_early_stopping_refuses_settings_it_cannot_work_with(capsys, tmp_path, options, message):
    args = ("pretrain", "--backbone", "builtin-tiny-gpt2", "--output_dir", str(tmp_path / "run"), *QUICK)
    assert_usage_error(capsys, *args, *options, message=message)
    assert not (tmp_path / "run").exists()


def test_an_explicit_eval_strategy_replaces_the_recipes_selection_of_rounds(tmp_path):
    _, _, training_args, record = parsed("pretrain", "--output_dir", str(tmp_path), "--eval_strategy", "no")
    assert training_args.early_stopping_patience is None and not training_args.load_best_model_at_end
    assert training_args.save_strategy == "steps" and "per_device_eval_batch_size" not in record["settings"]


def test_without_early_stopping_a_decaying_schedule_is_taken(tmp_path):
    _, _, training_args, _ = parsed(
        "pretrain", "--recipe", "paper", "--output_dir", str(tmp_path), "--lr_scheduler_type", "linear"
    )
    assert training_args.lr_scheduler_type == "linear"


def test_search_trains_every_combination_of_its_grid_and_keeps_the_best_on_validation(tmp_path, capsys):
    output_dir = tmp_path / "run"
    args = ("--backbone", "builtin-tiny-gpt2", "--output_dir", str(output_dir), "--num_train_epochs", "2", *QUICK)
    assert run_cli("pretrain", *args, "--search") == 0
    capsys.readouterr()
    trials = json.loads((output_dir / RECIPE_NAME).read_text())["search"]
    grid = SEARCH_GRIDS["pretrain"]
    assert [trial["settings"] for trial in trials] == [
        dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())
    ]
    for index, trial in enumerate(trials):
        checkpoints = (output_dir / f"trial-{index}").glob("checkpoint-*")
        last_checkpoint = max(checkpoints, key=lambda path: int(path.name.split("-")[1]))
        # the trial's score is its end model's: its best round, read out with the prefix power chosen on validation
        end_log = json.loads((output_dir / f"trial-{index}" / "trainer_state.json").read_text())["log_history"]
        powers = {
            entry["read_out_prefix_power"]: entry["read_out_selection_score"]
            for entry in end_log
            if "read_out_prefix_power" in entry
        }
        assert set(powers) == set(RECIPES["small-cpu"].pretraining["read_out_prefix_powers"])
        assert powers[0] == pytest.approx(max(validation_scores(last_checkpoint)))
        assert trial["validation_selection_score"] == max(powers.values())
        assert trial["rounds"] == 2 and trial["train_runtime_s"] > 0
    best = max(trials, key=lambda trial: trial["validation_selection_score"])
    assert [trial["kept"] for trial in trials] == [trial is best for trial in trials]
    config = json.loads((output_dir / "config.json").read_text())
    assert config["text_config"]["attn_pdrop"] == best["settings"]["backbone_dropout"]
    saved = json.loads((output_dir / "training_args.json").read_text())
    batch_size = best["settings"]["per_device_train_batch_size"]
    assert saved["per_device_train_batch_size"] == batch_size and saved["output_dir"] == str(output_dir)
    assert (output_dir / "test_results.json").is_file() and (output_dir / "model.safetensors").is_file()


def test_a_stopped_search_resumes_trial_by_trial_and_ends_as_the_uninterrupted_one(tmp_path, capsys):
    output_dir = tmp_path / "run"
    args = ("--backbone", "builtin-tiny-gpt2", "--output_dir", str(output_dir), *QUICK, "--search")
    args = (*args, "--num_train_epochs", "8", "--early_stopping_patience", "1", "--learning_rate", "0.02")
    assert run_cli("pretrain", *args) == 0
    capsys.readouterr()
    trials = json.loads((output_dir / RECIPE_NAME).read_text())["search"]
    finished = {
        name: (output_dir / name).read_bytes() for name in ("model.safetensors", "config.json", "test_results.json")
    }
    best = max(range(len(trials)), key=lambda index: trials[index]["validation_selection_score"])
    # stopped in the middle of one trial (no record yet, its checkpoint left), before the last: the best one finished
    interrupted, unstarted = [index for index in range(len(trials)) if index != best][-2:]
    for name in (*finished, RECIPE_NAME, "trainer_state.json"):
        (output_dir / name).unlink()
    (output_dir / f"trial-{interrupted}" / SEARCH_TRIAL_NAME).unlink()
    shutil.rmtree(output_dir / f"trial-{unstarted}")
    assert run_cli("pretrain", *args, "--resume_from_checkpoint", "true") == 0
    capsys.readouterr()
    resumed = json.loads((output_dir / RECIPE_NAME).read_text())["search"]
    for index, (trial, again) in enumerate(zip(trials, resumed, strict=True)):
        if index in (interrupted, unstarted):  # trained again, from its checkpoint or from the start
            for name in ("settings", "rounds", "best_model_checkpoint"):
                assert again[name] == trial[name], name
            assert again["validation_selection_score"] == pytest.approx(trial["validation_selection_score"])
        else:  # not trained again: its record as the first attempt wrote it, every second of it from before
            assert again == {**trial, "train_runtime_before_resume_s": trial["train_runtime_s"]}
    assert resumed[unstarted]["train_runtime_before_resume_s"] == 0
    assert 0 < resumed[interrupted]["train_runtime_before_resume_s"] < resumed[interrupted]["train_runtime_s"]
    assert json.loads((output_dir / "test_results.json").read_bytes()) == pytest.approx(
        json.loads(finished["test_results.json"])
    )
    for name in ("model.safetensors", "config.json"):  # the kept trial's weights and chosen read-out power
        assert (output_dir / name).read_bytes() == finished[name], name
    # the kept trial's whole log, as the uninterrupted search saved it
    assert validation_scores(output_dir) == validation_scores(output_dir / f"trial-{best}")
    assert len(validation_scores(output_dir)) == trials[best]["rounds"]


def test_search_refuses_the_options_it_tries_and_runs_without_a_selection(capsys, tmp_path):
    args = ("pretrain", "--backbone", "builtin-tiny-gpt2", "--output_dir", str(tmp_path / "run"), "--search", *QUICK)
    message = "--per_device_train_batch_size: --search tries its own values of per_device_train_batch_size"
    assert_usage_error(capsys, *args, "--per_device_train_batch_size", "8", message=message)
    assert_usage_error(capsys, *args, "--eval_strategy", "no", message="search chooses on validation")


def test_backbone_dropout_sets_every_dropout_probability_of_the_backbone():
    data = make_synthetic_data()
    model, _ = build_pretraining_model(
        PretrainingModelArguments(backbone=BUILTIN_BACKBONE, backbone_dropout=0.3), data
    )
    text_config = model.config.text_config
    assert (text_config.embd_pdrop, text_config.resid_pdrop, text_config.attn_pdrop) == (0.3, 0.3, 0.3)
    with pytest.raises(ValueError, match=r"backbone_dropout must lie in \[0, 1\), got 1.0"):
        PretrainingModelArguments(backbone=BUILTIN_BACKBONE, backbone_dropout=1.0)


def test_a_learning_rate_reduced_on_plateau_follows_the_selection_score_up_before_early_stopping(tmp_path):
    def parsed_with(plateau: str, early_stopping_patience: int):
        options = ("--lr_scheduler_type", "reduce_lr_on_plateau", "--lr_scheduler_kwargs", plateau)
        patience = ("--early_stopping_patience", str(early_stopping_patience))
        return parsed("pretrain", "--output_dir", str(tmp_path), *options, *patience)[2]

    # torch's default patience (10) would lower the rate after 11 stalled rounds: early stopping ends the run after 10
    with pytest.raises(
        ValueError, match="after 11 rounds without improvement, and early stopping ends the run after 10"
    ):
        parsed_with("{}", 10)
    training_args = parsed_with('{"factor": 0.5, "patience": 2}', 10)
    assert training_args.lr_scheduler_kwargs == {"mode": "max", "factor": 0.5, "patience": 2}
    with pytest.raises(
        ValueError, match=r"Give it a patience of at most 1 \(--lr_scheduler_kwargs '\{\"patience\": 1\}'\)"
    ):
        parsed_with('{"patience": 2}', 3)
    assert parsed_with('{"patience": 1}', 3).lr_scheduler_kwargs["patience"] == 1
    with pytest.raises(ValueError, match="lower rate. Give it a larger early_stopping_patience."):
        parsed_with('{"patience": 0}', 1)
