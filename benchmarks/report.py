"""
Writes the README's results section from the JSON files in `benchmarks/results/`, so no figure is typed by hand.

    python benchmarks/report.py            # rewrites the parts of README.md between the headline and results markers
    python benchmarks/report.py --check    # exits 1 when README.md is not what the JSON files give

The headline section holds the recipes that `benchmarks/headline.json` names, each averaged over its runs (seeds)
and set against the baselines; the results section every run of every script.
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("recall@20", "recall@40", "ndcg@100")


def cllm4rec_methods(result: dict) -> dict[str, dict]:
    """Test metrics of a quality run's CLLM4Rec stages, by the label of their row."""
    methods = {}
    orders = result["configuration"].get("history_permutations", 1)
    stages = {
        f"CLLM4Rec ({result['name']})": result.get("cllm4rec", {}),
        f"CLLM4Rec ({result['name']}), pretraining only": result.get("cllm4rec_pretrained", {}),
    }
    for label, stage in stages.items():
        if stage.get("test") is not None:  # None: a run without fine-tuning
            methods[label] = stage["test"]
        if "test_over_history_orders" in stage:
            methods[f"{label}, {orders} history orders averaged"] = stage["test_over_history_orders"]
    return methods


def baseline_label(name: str, baseline: dict) -> str:
    if name == "ease" and "l2" in baseline:
        return f"EASE (L2 {baseline['l2']:g}, chosen on validation)"
    if name == "multivae" and "best_epoch" in baseline:
        return f"Multi-VAE (epoch {baseline['best_epoch']} of {baseline['epochs']}, chosen on validation)"
    return name


def stage_test(result: dict, stage: str, test: str) -> dict:
    """One test of a quality run, e.g. stage `cllm4rec_pretrained`, test `test_over_history_orders`."""
    if result.get(stage, {}).get(test) is None:
        raise SystemExit(f"{Path(result['_file']).name} has no {stage}.{test} result.")
    return result[stage][test]


def headline_rows(headline: dict, results: dict[str, dict]) -> list[str]:
    """
    The baselines of `headline["baselines"]`, then each recipe of `headline["recipes"]`: the mean of its runs'
    figures, their range where it has several, and how far each mean lies from EASE's.
    """
    named = {headline["baselines"], *(file for recipe in headline["recipes"] for file in recipe["files"])}
    missing = sorted(named - set(results))
    if missing:
        raise SystemExit(f"the headline names result files that do not exist: {', '.join(missing)}")
    baselines = results[headline["baselines"]]["baselines"]
    ease = baselines["ease"]["test"]

    def row(method: str, tests: list[dict], files: list[str]) -> str:
        cells = []
        for metric in METRICS:
            values = [test[metric] for test in tests]
            mean = sum(values) / len(values)
            spread = f" ({min(values):.4f}-{max(values):.4f})" if len(values) > 1 else ""
            relative = "" if tests == [ease] else f", {mean / ease[metric] - 1:+.1%}"
            cells.append(f"{mean:.4f}{spread}{relative}")
        return f"| {method} | {len(tests)} | {' | '.join(cells)} | {', '.join(f'`{file}`' for file in files)} |"

    rows = [
        row(baseline_label(name, baseline), [baseline["test"]], [headline["baselines"]])
        for name, baseline in baselines.items()
    ]
    for recipe in headline["recipes"]:
        tests = [stage_test(results[file], recipe["stage"], recipe["test"]) for file in recipe["files"]]
        rows.append(row(recipe["label"], tests, recipe["files"]))
    return rows


def quality_rows(results: list[dict]) -> list[str]:
    """Every CLLM4Rec stage of every quality run, then each distinct baseline result once per data set."""
    rows, seen = [], set()

    def row(result: dict, method: str, test: dict) -> str:
        figures = " | ".join(f"{test[metric]:.4f}" for metric in METRICS)
        return f"| {result['data']} | {method} | {figures} | {result['device']} | `{Path(result['_file']).name}` |"

    for data in sorted({result["data"] for result in results}):
        of_data = [result for result in results if result["data"] == data]
        for result in of_data:
            if result["benchmark"] == "quality":
                rows += [row(result, method, test) for method, test in cllm4rec_methods(result).items()]
        for result in of_data:
            for name, baseline in result.get("baselines", {}).items():
                label = baseline_label(name, baseline)
                key = (data, label, tuple(round(baseline["test"][metric], 4) for metric in METRICS))
                if key not in seen:
                    seen.add(key)
                    rows.append(row(result, label, baseline["test"]))
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
        f"`{Path(result['_file']).name}` |"
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
        rows.append(f"| {backbone_label(result)} | {result['device']} | {cells} | `{Path(result['_file']).name}` |")
    return header + rows


def load_results(results_dir: Path) -> list[dict]:
    results = []
    for path in sorted(results_dir.glob("*.json")):
        result = json.loads(path.read_text())
        result["_file"] = str(path)
        results.append(result)
    return results


def render_headline(results: list[dict], headline: dict) -> list[str]:
    by_file = {Path(result["_file"]).name: result for result in results}
    return [
        f"{headline['title']} Test split, all items ranked, training items excluded; a recipe's figures are the mean "
        "over its runs (seeds), with their range where it has several, and how far that mean lies from EASE's "
        "(generated by `python benchmarks/report.py` from `benchmarks/headline.json` and the result files):",
        "",
        "| method | runs | Recall@20 | Recall@40 | NDCG@100 | files |",
        "|---|---|---|---|---|---|",
        *headline_rows(headline, by_file),
    ]


def render_results(results: list[dict]) -> list[str]:
    quality = quality_rows([result for result in results if result.get("benchmark") in ("quality", "baselines")])
    speed_results = [result for result in results if result.get("benchmark") == "speed"]
    speed = [row for result in speed_results for row in speed_rows(result)]
    lines = ["Generated by `python benchmarks/report.py` from `benchmarks/results/*.json`."]
    if quality:
        lines += [
            "",
            "Test split, all items ranked, training items excluded (`benchmarks/quality.py`, baselines also from "
            "`benchmarks/baselines.py`; a baseline result that several files share is listed once):",
            "",
            "| data | method | Recall@20 | Recall@40 | NDCG@100 | device | file |",
            "|---|---|---|---|---|---|---|",
            *quality,
        ]
    if speed:
        lines += [
            "",
            "Seconds per epoch and users per second of top-100 prediction (`benchmarks/speed.py`); in brackets the "
            "speed-up over the authors' code on one H200 (content 230 s, collaborative 25 s, fine-tuning 19 s, "
            "1,319 users/s):",
            "",
            "| backbone | device | content epoch | collaborative epoch | fine-tuning epoch | prediction users/s "
            "| peak memory | file |",
            "|---|---|---|---|---|---|---|---|",
            *speed,
            "",
            "Users per second of top-100 prediction as the catalogue grows (random ID embeddings, same backbone):",
            "",
            *scaling_rows(speed_results),
        ]
    return lines


def replace_section(text: str, name: str, lines: list[str]) -> str:
    """`text` with what lies between the `<!-- name:start -->` and `<!-- name:end -->` markers replaced."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"the README has no {start} ... {end} section.")
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    return "\n".join([before + start, "", *lines, "", end + after])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results_dir", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    parser.add_argument(
        "--headline",
        default=str(ROOT / "benchmarks" / "headline.json"),
        help="The recipes the results open with: a title, the baselines' result file, and each recipe's label, "
        "result files, stage and test.",
    )
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    readme = Path(args.readme)
    text = readme.read_text()
    results = load_results(Path(args.results_dir))
    headline = json.loads(Path(args.headline).read_text())
    updated = replace_section(text, "headline", render_headline(results, headline))
    updated = replace_section(updated, "results", render_results(results))
    if args.check:
        sys.exit(0 if updated == text else 1)
    readme.write_text(updated)
    print(f"updated {readme}")


if __name__ == "__main__":
    main()
