"""
Writes the generated parts of the README and of `benchmarks/README.md` from the JSON files in
`benchmarks/results/` (and its `archive/`), so no figure is typed by hand.

    python benchmarks/report.py            # rewrites the generated sections and draws the headline figure
    python benchmarks/report.py --check    # exits 1 when a section is not what the JSON files give

- README.md, between the headline markers: the recipes that `benchmarks/headline.json` names, each averaged over
  its runs (seeds) and set against the baselines, with what a run costs; between the scale markers: the full-size
  `scale.py` result.
- `benchmarks/results/headline.png`: the validation Recall@20 of those recipes per round, against the baselines.
- benchmarks/README.md, between the datasets markers: the shipped recipes on every data set that `headline.json`'s
  `datasets` names, against that data set's baselines; between the results markers: every run of every script,
  and every paired bootstrap of `significance.py`.

`--check` compares the text sections; it does not compare the figure's pixels.
"""

import argparse
import json
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("recall@20", "recall@40", "ndcg@100")
HEADER = "Recall@20 | Recall@40 | NDCG@100"
LINE_LENGTH = 119  # of the prose around the generated tables


def load_results(results_dir: Path) -> list[dict]:
    """Every JSON file under `results_dir`, each with `_file`: its path relative to `results_dir`."""
    results = []
    for path in sorted(results_dir.rglob("*.json")):
        result = json.loads(path.read_text())
        result["_file"] = path.relative_to(results_dir).as_posix()
        results.append(result)
    return results


def baseline_label(name: str, baseline: dict) -> str:
    if name == "ease" and "l2" in baseline:
        return f"EASE (L2 {baseline['l2']:g})"
    if name == "multivae" and "best_epoch" in baseline:
        return f"Multi-VAE (epoch {baseline['best_epoch']})"
    return name


def baseline_epochs(name: str, baseline: dict) -> str:
    return str(baseline["epochs"]) if "epochs" in baseline else "-"


def quality_epochs(result: dict, fine_tuned: bool = False) -> str:
    """
    The epochs a quality run trained up to its pretrained model, or its fine-tuned one: the content warm-up
    (`warmup_epochs_trained`), then its rounds, two epochs each where content epochs are interleaved. A run that
    stops early trained as many rounds as its validation log holds, not the maximum it was given; a search, the
    rounds of all its trials. A run that fine-tuned a model an earlier run pretrained (`pretrained`) counts that
    run's epochs too.
    """
    configuration = result["configuration"]
    content_steps = not configuration.get("no_content_steps")

    def rounds_run(stage: str, maximum: int | None) -> int:
        """The rounds a stage trained: `maximum`, unless its validation log or search counts them."""
        if "search" in result.get(stage, {}):
            return sum(trial["rounds"] for trial in result[stage]["search"])
        if maximum is not None and not configuration.get("early_stopping_patience"):
            return maximum
        return len(result[stage]["validation_per_round"])

    if "pretrained" in result:  # a model an earlier run pretrained: its own log counts its rounds
        pretraining_rounds = rounds_run("cllm4rec_pretrained", None)
        pretraining_content_steps = result["pretrained"]["training_arguments"]["content_steps"]
    else:
        pretraining_rounds = rounds_run("cllm4rec_pretrained", configuration["pretrain_rounds"])
        pretraining_content_steps = content_steps
    epochs = warmup_epochs_trained(result) + pretraining_rounds * (2 if pretraining_content_steps else 1)
    if fine_tuned:
        epochs += rounds_run("cllm4rec", configuration["finetune_rounds"]) * (2 if content_steps else 1)
    return str(epochs)


def warmup_epochs_trained(result: dict) -> int:
    """
    The content warm-up of a quality run in epochs' worth of steps. Since warm-up epochs are epochs of the Trainer,
    each takes as many steps as a round, a collaborative and a content epoch: two. Before, each was one content
    epoch. The validation log tells the two apart: earlier runs trained all of pretraining as one Trainer epoch, so
    their log counts fractions of one, where later runs first evaluate after the warm-up and a round, at epoch 2 or
    more.
    """
    if "pretrained" in result:
        warmup = result["pretrained"]["training_arguments"]["content_warmup_epochs"]
    else:
        warmup = result["configuration"].get("warmup_epochs", 0)
    if not warmup:
        return 0
    validation = result["cllm4rec_pretrained"]["validation_per_round"]
    if not validation:
        raise SystemExit(f"{result['_file']} has a content warm-up but no validation log that tells its length.")
    return warmup * (2 if validation[0]["epoch"] > 1 else 1)


def run_seconds(result: dict) -> float:
    """The wall-clock seconds of a quality run, with the training of the model it fine-tuned where that came apart."""
    return result["cllm4rec"]["wall_s"] + result.get("pretrained", {}).get("train_runtime_s", 0)


def hours(seconds: float) -> str:
    return "<0.01" if seconds < 36 else f"{seconds / 3600:.2f}"


def device_kind(device: str) -> str:
    """`CPU` or `GPU`, from a result's device, e.g. `cpu (2 threads)` or `NVIDIA H200`."""
    return "CPU" if device.startswith("cpu") else "GPU"


def stage_test(result: dict, stage: str, test: str) -> dict:
    """One test of a quality run, e.g. stage `cllm4rec_pretrained`, test `test_over_history_orders`."""
    if result.get(stage, {}).get(test) is None:
        raise SystemExit(f"{result['_file']} has no {stage}.{test} result.")
    return result[stage][test]


def passes_per_user(result: dict, test: str) -> int:
    """Forward passes per user when scoring: one, or one per history order averaged."""
    if test == "test_over_history_orders":
        return result["configuration"]["history_permutations"]
    return 1


def headline_rows(headline: dict, results: dict[str, dict]) -> list[str]:
    """
    The baselines of `headline["baselines"]`, then each recipe of `headline["recipes"]`: the mean of its runs'
    figures, how far each mean lies from EASE's, and the mean wall-clock hours of a run.
    """
    named = {headline["baselines"], *(file for recipe in headline["recipes"] for file in recipe["files"])}
    missing = sorted(named - set(results))
    if missing:
        raise SystemExit(f"the headline names result files that do not exist: {', '.join(missing)}")
    source = results[headline["baselines"]]
    baselines = source["baselines"]
    ease = baselines["ease"]["test"]

    def row(method: str, runs: int, passes: int, epochs: str, cost: str, tests: list[dict]) -> str:
        cells = []
        for metric in METRICS:
            mean = sum(test[metric] for test in tests) / len(tests)
            relative = "" if tests == [ease] else f" ({mean / ease[metric] - 1:+.0%})"
            cells.append(f"{mean:.4f}{relative}")
        return f"| {method} | {runs} | {passes} | {epochs} | {cost} | {' | '.join(cells)} |"

    rows = [
        row(
            baseline_label(name, baseline),
            1,
            1,
            baseline_epochs(name, baseline),
            f"{hours(baseline['wall_s'])} {device_kind(source['device'])}",
            [baseline["test"]],
        )
        for name, baseline in baselines.items()
    ]
    for recipe in headline["recipes"]:
        runs = [results[file] for file in recipe["files"]]
        tests = [stage_test(run, recipe["stage"], recipe["test"]) for run in runs]
        passes = {passes_per_user(run, recipe["test"]) for run in runs}
        # early-stopped runs of one recipe may train different numbers of epochs: their range
        epochs = sorted({int(quality_epochs(run, fine_tuned=recipe["stage"] == "cllm4rec")) for run in runs})
        devices = {device_kind(run["device"]) for run in runs}
        if len(passes) > 1 or len(devices) > 1:
            raise SystemExit(f"the runs of {recipe['label']!r} differ in passes per user or device.")
        cost = f"{hours(sum(run_seconds(run) for run in runs) / len(runs))} {devices.pop()}"
        epochs_cell = str(epochs[0]) if len(epochs) == 1 else f"{epochs[0]}-{epochs[-1]}"
        rows.append(row(recipe["label"], len(runs), passes.pop(), epochs_cell, cost, tests))
    return rows


def render_headline(results: list[dict], headline: dict) -> list[str]:
    by_file = {result["_file"]: result for result in results}
    return [
        f"| method | runs | passes/user | epochs | hours | {HEADER} |",
        "|---|---|---|---|---|---|---|---|",
        *headline_rows(headline, by_file),
    ]


def render_datasets(results: list[dict], headline: dict) -> list[str]:
    """One table of the recipes of each data set of `headline["datasets"]` (if any), each against its baselines."""
    by_file = {result["_file"]: result for result in results}
    rows = [
        f"| {dataset['data']} {row}"
        for dataset in headline.get("datasets", [])
        for row in headline_rows(dataset, by_file)
    ]
    return [
        f"| data set | method | runs | passes/user | epochs | hours | {HEADER} |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def draw_headline_figure(results: list[dict], headline: dict, path: Path) -> None:
    """Validation Recall@20 per round of each recipe (mean of its runs, their range shaded) and of the baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_file = {result["_file"]: result for result in results}
    figure, axis = plt.subplots(figsize=(7, 4))
    curves = {}  # recipes that differ only in their test share one validation curve
    for recipe in headline["recipes"]:
        curves.setdefault((tuple(recipe["files"]), recipe["stage"]), recipe["label"])
    for (files, stage), label in curves.items():
        per_run = [
            [entry["eval_recall@20"] for entry in by_file[file][stage]["validation_per_round"]] for file in files
        ]
        length = min(len(values) for values in per_run)
        rounds = range(1, length + 1)
        columns = [[values[index] for values in per_run] for index in range(length)]
        line = axis.plot(rounds, [sum(column) / len(column) for column in columns], marker="o", label=label)[0]
        if len(files) > 1:
            low, high = [min(column) for column in columns], [max(column) for column in columns]
            axis.fill_between(rounds, low, high, color=line.get_color(), alpha=0.2)
    baselines = by_file[headline["baselines"]]["baselines"].items()
    styles = iter(["--", ":", "-.", (0, (5, 5))])
    for name, baseline in ((name, baseline) for name, baseline in baselines if "validation" in baseline):
        label = baseline_label(name, baseline)
        axis.axhline(baseline["validation"]["recall@20"], linestyle=next(styles), color="black", label=label)
    axis.xaxis.get_major_locator().set_params(integer=True)
    axis.set_xlabel("round")
    axis.set_ylabel("validation Recall@20")
    axis.legend(fontsize="small", loc="lower right")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(figure)


def cllm4rec_tests(result: dict) -> list[tuple[str, int, dict]]:
    """(stage, passes per user, test metrics) of a quality run's CLLM4Rec stages."""
    tests = []
    for key, stage in (("cllm4rec_pretrained", "pretrained"), ("cllm4rec", "fine-tuned")):
        for test in ("test", "test_over_history_orders"):
            if result.get(key, {}).get(test) is not None:  # None: a run without fine-tuning
                tests.append((stage, passes_per_user(result, test), result[key][test]))
    return tests


def quality_rows(results: list[dict]) -> list[str]:
    """Every CLLM4Rec stage of every quality run, then each distinct baseline result once per data set."""
    rows, seen = [], set()

    def row(result: dict, method: str, passes: int | str, epochs: str, seconds: float, test: dict) -> str:
        figures = " | ".join(f"{test[metric]:.4f}" for metric in METRICS)
        return (
            f"| `{result['_file']}` | {method} | {passes} | {epochs} | {hours(seconds)} | "
            f"{result['device']} | {figures} |"
        )

    for data in sorted({result["data"] for result in results}):
        of_data = [result for result in results if result["data"] == data]
        for result in of_data:
            if result["benchmark"] == "quality":
                seconds = run_seconds(result)
                for stage, passes, test in cllm4rec_tests(result):
                    epochs = quality_epochs(result, fine_tuned=stage == "fine-tuned")
                    rows.append(row(result, f"CLLM4Rec, {stage}", passes, epochs, seconds, test))
        for result in of_data:
            for name, baseline in result.get("baselines", {}).items():
                label = baseline_label(name, baseline)
                key = (data, label, tuple(round(baseline["test"][metric], 4) for metric in METRICS))
                if key not in seen:
                    seen.add(key)
                    epochs = baseline_epochs(name, baseline)
                    rows.append(row(result, label, 1, epochs, baseline["wall_s"], baseline["test"]))
    return rows


def backbone_label(result: dict) -> str:
    overrides = json.loads(result.get("backbone_overrides") or "{}")
    shape = "".join(f", {key} {value}" for key, value in overrides.items())
    name = Path(result["backbone"]).name
    return name + (f" (random weights{shape})" if result["random_init"] else "") + f", {result['dtype']}"


def speed_label(result: dict) -> str:
    sample = f", {result['sample']:,} documents per stage, extrapolated" if result.get("sample") else ""
    prediction_batch = f", prediction batch {result['eval_batch_size']}" if "eval_batch_size" in result else ""
    if result.get("eval_max_tokens"):
        prediction_batch += f" and {result['eval_max_tokens']:,} tokens at most"
    if result.get("prediction_weights") == "bfloat16":
        prediction_batch += " from bfloat16 weights"
    if result.get("loading_only"):
        prediction_batch = ", data loader only (no model steps)"
    attention = ""
    if result.get("peak_gpu_memory_gib") is not None:
        cudnn = "CUDNN_ATTENTION" in result.get("attention_backends", ["CUDNN_ATTENTION"])
        attention = ", cuDNN attention on" if cudnn else ", cuDNN attention off"
    return f"{backbone_label(result)}, batch {result['batch_size']}{prediction_batch}{attention}{sample}"


def speed_rows(result: dict) -> list[str]:
    stages = result["stages"]
    speedups = result.get("speedup_vs_authors_h200") or {}

    def cell(value: str, key: str) -> str:
        return f"{value} ({speedups[key]:.1f}x)" if key in speedups else value

    epochs = [
        cell(f"{stages[name]['epoch_s']:.{1 if stages[name]['epoch_s'] >= 10 else 2}f} s", f"{name}_epoch")
        if name in stages
        else "-"
        for name in ("content", "collaborative", "finetuning")
    ]
    prediction = cell(f"{stages['prediction']['users_per_s']:,.0f}", "prediction") if "prediction" in stages else "-"
    memory = "-" if result["peak_gpu_memory_gib"] is None else f"{result['peak_gpu_memory_gib']:.1f} GiB"
    return [
        f"| {speed_label(result)} | {result['device']} | {' | '.join(epochs)} | {prediction} | {memory} | "
        f"`{result['_file']}` |"
    ]


def scaling_rows(results: list[dict]) -> list[str]:
    """Users per second of top-100 prediction per catalogue size, one row per speed file."""
    sizes = sorted({entry["num_items"] for result in results for entry in result["prediction_scaling"]})
    header = ["| backbone | device | " + " | ".join(f"{size:,} items" for size in sizes) + " | file |"]
    header.append("|---|---|" + "---|" * len(sizes) + "---|")
    rows = []
    for result in (result for result in results if result["prediction_scaling"]):
        speeds = {entry["num_items"]: f"{entry['users_per_s']:,.0f}" for entry in result["prediction_scaling"]}
        cells = " | ".join(speeds.get(size, "-") for size in sizes)
        rows.append(f"| {backbone_label(result)} | {result['device']} | {cells} | `{result['_file']}` |")
    return header + rows


# The keys every row of a scale stage has; any others are the stage's own figures.
SCALE_ROW_KEYS = ("stage", "case", "users", "items", "interactions", "wall_s", "peak_rss_gib")
# The figure the README shows beside the wall time, the first of these that a row has.
SCALE_KEY_FIGURES = ("users_per_s", "step_s", "load_s", "json_lines_rows_per_s")


def scale_figure(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def scale_rows(rows: list[dict], extra_figures: bool = True, counts: bool = True) -> list[str]:
    """One table row per measured case of a `scale.py` result, with its users, items and interactions if `counts`."""
    lines = []
    for row in rows:
        keys = ("users", "items", "interactions") if counts else ()
        sizes = [scale_figure(row[key]) if row.get(key) else "-" for key in keys]
        memory = f"{row['peak_rss_gib']:.2f}" if row.get("peak_rss_gib") else "-"
        cells = [row["stage"], row["case"], *sizes, f"{row['wall_s']:,.1f}", memory]
        if extra_figures:
            others = [f"{key} {scale_figure(value)}" for key, value in row.items() if key not in SCALE_ROW_KEYS]
            cells.append("; ".join(others) or "-")
        else:
            key = next((key for key in SCALE_KEY_FIGURES if row.get(key) is not None), None)
            cells.append(f"{key} {scale_figure(row[key])}" if key else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def readme_scale_rows(rows: list[dict]) -> list[dict]:
    """
    The README's share of a scale result: the largest preparation, each kind of training step with the default
    optimizer at its largest shape, every serving case and the first process of the distributed run.
    """
    preparations = [row for row in rows if row["stage"] == "preparation" and row.get("peak_rss_gib")]
    chosen = [max(preparations, key=lambda row: row["interactions"])] if preparations else []
    steps = [row for row in rows if row["stage"] == "training" and row.get("id_embeddings_optimizer") == "adamw"]
    for kind in dict.fromkeys(row["training_stage"] for row in steps):
        chosen.append(max((row for row in steps if row["training_stage"] == kind), key=lambda row: row["batch_size"]))
    chosen += [row for row in rows if row["stage"] == "serving"]
    chosen += [row for row in rows if row["stage"] == "distributed" and row.get("rank", 0) == 0]
    return chosen


def render_scale(results: list[dict]) -> list[str]:
    """The README's scale table, from the full-size `scale.py` result on this machine's CPU."""
    full = [result for result in results if result.get("benchmark") == "scale" and not result["quick"]]
    if not full:
        return ["No full-size `benchmarks/scale.py` result yet."]
    result = full[-1]
    return [
        f"{result['device']}, `benchmarks/results/{result['_file']}` (every case in `benchmarks/README.md`):",
        "",
        "| stage | case | seconds | peak GiB | figure |",
        "|---|---|---|---|---|",
        *scale_rows(readme_scale_rows(result["rows"]), extra_figures=False, counts=False),
    ]


def round_oracle_rows(results: list[dict]) -> list[str]:
    """A row per stage of a `round_oracle.py` result: per metric the kept round's test, the best round's, and how many
    rounds reach EASE."""
    rows = []
    for result in results:
        for stage in ("pretrain", "finetune"):
            if stage in result:
                summary = result[stage]["summary"]
                cells = " | ".join(
                    f"{summary[metric]['kept']:.4f} / {summary[metric]['oracle']:.4f} / "
                    f"{summary[metric].get('rounds_at_or_above_ease', '-')}"
                    for metric in METRICS
                )
                rows.append(f"| `{result['_file']}` | {stage} | {summary['rounds']} | {cells} |")
    return rows


def significance_rows(results: list[dict]) -> list[str]:
    """A row per `significance.py` result: each metric's relative difference to the baseline, its interval and the
    share of resamples below the baseline."""

    def cell(figures: dict) -> str:
        return (
            f"{figures['relative']:+.1%} [{figures['relative_low']:+.1%}, {figures['relative_high']:+.1%}], "
            f"{figures['below']:.0%} below"
        )

    rows = []
    for result in results:
        baseline = result["baseline"]
        cells = " | ".join(cell(result["comparison"][metric]) for metric in METRICS)
        rows.append(
            f"| `{result['_file']}` | {len(result['models'])} | {baseline_label(baseline['name'], baseline)} | "
            f"{result['num_users']:,} | {result['configuration']['confidence']:.0%} | {cells} |"
        )
    return rows


def table(introduction: str, header: str, rows: list[str]) -> list[str]:
    """A table of the results page: its introduction wrapped, its header row and separator, its rows."""
    separator = "|---" * (header.count("|") - 1) + "|"
    return ["", *textwrap.wrap(introduction, LINE_LENGTH), "", header, separator, *rows]


def render_results(results: list[dict]) -> list[str]:
    def of(benchmark: str) -> list[dict]:
        return [result for result in results if result.get("benchmark") == benchmark]

    quality = quality_rows([result for result in results if result.get("benchmark") in ("quality", "baselines")])
    speed = [row for result in of("speed") for row in speed_rows(result)]
    significance = significance_rows(of("significance"))
    oracle = round_oracle_rows(of("round_oracle"))
    lines = ["Generated by `python benchmarks/report.py` from `results/**/*.json`."]
    if quality:
        lines += table(
            "Test split, all items ranked, training items excluded (`quality.py`, baselines also from "
            "`baselines.py`; a baseline result that several files share is listed once). Passes/user: forward "
            "passes per user in the test (history orders averaged); epochs: every epoch trained up to the "
            "stage's model, a content warm-up epoch counted as two where it was as long as a round (runs since "
            "warm-up epochs are Trainer epochs); hours: wall-clock time of the whole run, its tests included, "
            "and the training time of the model it fine-tuned where an earlier run pretrained that:",
            f"| file | method | passes/user | epochs | hours | device | {HEADER} |",
            quality,
        )
    if speed:
        lines += table(
            "Seconds per epoch and users per second of top-100 prediction (`speed.py`); in brackets the speed-up "
            "over the authors' code on one H200 (content 230 s, collaborative 25 s, fine-tuning 19 s, 1,319 "
            "users/s):",
            "| backbone | device | content epoch | collaborative epoch | fine-tuning epoch | prediction users/s "
            "| peak memory | file |",
            speed,
        )
        lines += [
            "",
            "Users per second of top-100 prediction as the catalogue grows (random ID embeddings, same backbone):",
            "",
            *scaling_rows(of("speed")),
        ]
    if significance:
        lines += table(
            "Paired bootstrap over the test users (`significance.py`): the models' per-user metrics (one pass per "
            "user; several models, the seeds of a recipe, averaged per user) against the baseline's on the same "
            "users. Each cell: the relative difference of the means, its interval, and the share of resamples in "
            "which the models' mean is below the baseline's. The interval holds the sampling of the test users, "
            "not of training seeds:",
            f"| file | models | baseline | users | interval | {HEADER} |",
            significance,
        )
    if oracle:
        lines += table(
            "Selection on validation against the best choice on test (`round_oracle.py`, a diagnostic: nothing "
            "is chosen on test). Each cell: the test metric of the round that validation kept over every round "
            "of every trial of the stage / the best test metric of any of those rounds, which no selection on "
            "validation can exceed / how many of the rounds reach EASE's; one pass per user at training's "
            "read-out:",
            f"| file | stage | rounds | {HEADER} |",
            oracle,
        )
    for result in (result for result in of("scale") if not result["quick"]):
        lines += table(
            f"Cost against size (`scale.py`, `{result['_file']}`, {result['device']}): wall seconds and peak "
            "resident memory of the work measured, each in a process of its own:",
            "| stage | case | users | items | interactions | seconds | peak GiB | figures |",
            scale_rows(result["rows"]),
        )
    return lines


def replace_section(text: str, name: str, lines: list[str], path: Path) -> str:
    """`text` with what lies between the `<!-- name:start -->` and `<!-- name:end -->` markers replaced."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"{path} has no {start} ... {end} section.")
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    return "\n".join([before + start, "", *lines, "", end + after])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--results_dir", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--readme", default=str(ROOT / "README.md"), help="Gets the headline table.")
    parser.add_argument(
        "--benchmarks_readme",
        default=str(ROOT / "benchmarks" / "README.md"),
        help="Gets the tables of every run.",
    )
    parser.add_argument(
        "--headline",
        default=str(ROOT / "benchmarks" / "headline.json"),
        help="The recipes the results open with: the baselines' result file, and each recipe's label, result "
        "files (relative to --results_dir), stage and test.",
    )
    parser.add_argument("--figure", default=None, help="The headline figure; default: --results_dir/headline.png.")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    if args.check and args.figure:
        parser.error("--figure: --check compares the text sections and draws no figure.")
    results_dir = Path(args.results_dir)
    figure = Path(args.figure) if args.figure else results_dir / "headline.png"
    if not args.check and not figure.parent.is_dir():
        parser.error(f"--figure {figure}: no folder {figure.parent} to draw it in.")
    results = load_results(results_dir)
    headline = json.loads(Path(args.headline).read_text())
    sections = {
        Path(args.readme): {"headline": render_headline(results, headline), "scale": render_scale(results)},
        Path(args.benchmarks_readme): {
            "datasets": render_datasets(results, headline),
            "results": render_results(results),
        },
    }
    updates = {}
    for path, path_sections in sections.items():
        text = updated = path.read_text()
        for name, lines in path_sections.items():
            updated = replace_section(updated, name, lines, path)
        updates[path] = (text, updated)
    if args.check:
        stale = [str(path) for path, (text, updated) in updates.items() if updated != text]
        if stale:
            print(f"not what the result files give: {', '.join(stale)}", file=sys.stderr)
        sys.exit(1 if stale else 0)
    for path, (_, updated) in updates.items():
        path.write_text(updated)
        print(f"updated {path}")
    draw_headline_figure(results, headline, figure)
    print(f"drew {figure}")


if __name__ == "__main__":
    main()
