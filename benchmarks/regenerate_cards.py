"""
Renders the committed model cards (`model_cards/*.md`) again with the package's current template
(`hf_cllm4rec.hub.modelcard.model_card`), keeping every figure. The run folders the cards were written from are not
kept, so each card is regenerated from what it recorded itself:

- the measured test metrics: its front matter's `model-index`, exactly as measured, and the users they average over;
- the checkpoint's config as the card describes it: stage, backbone (model type, layers, hidden size; randomly
  initialized, a Hub id or a local folder), user and item counts, prompts, ID embeddings, item head, `lambda_v`;
- the run's training arguments: its training table, backbone training and LoRA rows, `mask_ratio`, and the history
  orders its scores average;
- the data set's manifest (its Data section) and the raw ids of its examples.

A card that carries the metrics of a benchmark run (`CITED_RESULTS`) must agree with that result file exactly. No card
is written unless its regenerated figures (the `model-index` values, the results table, the users) equal its old ones.

    python benchmarks/regenerate_cards.py            # rewrites the cards that the template renders differently
    python benchmarks/regenerate_cards.py --check    # exits 1 when a card is not what the template gives
"""

import argparse
import ast
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

from huggingface_hub import ModelCard
from transformers import AutoConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_cllm4rec import CLLM4RecConfig, IdMappings  # noqa: E402
from hf_cllm4rec.hub.modelcard import model_card  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CARDS_DIR = ROOT / "model_cards"
RESULTS_DIR = ROOT / "benchmarks" / "results"
# The result file, stage and test whose metrics a card carries, for the cards of benchmark runs.
CITED_RESULTS = {
    "cllm4rec-amazon-beauty-gpt2-256d": (
        "quality-beauty-gpt2-256d-ema-b1024-r24-cpu.json",
        "cllm4rec_pretrained",
        "test_over_history_orders",
    ),
    "cllm4rec-amazon-beauty-smollm2-135m": (
        "quality-beauty-smollm2-untied-vocab-lora-grouped-lambda0-b32-linear-6rounds-wd03-ema0998-iddrop03-hp8-seed2-"
        "cpu.json",
        "cllm4rec_pretrained",
        "test_over_history_orders",
    ),
}
# Training arguments on a card and the `quality.py` options of its pretraining run that set them.
PRETRAINING_OPTIONS = {
    "seed": "seed",
    "per_device_train_batch_size": "batch_size",
    "learning_rate": "pretrain_learning_rate",
    "content_warmup_epochs": "warmup_epochs",
}
# A backbone from a local folder: the card names no folder, and any local path is described the same.
LOCAL_FOLDER = "./backbone"
FIGURES = re.compile(r"^\s*value: .*$|^\| (?:Recall|NDCG)@\d+ \| .*$|averaged over \d+ users", re.M)
BACKBONE = re.compile(
    r"(randomly initialized backbone|pretrained backbone from a local folder|`(?P<hub_id>[^`]+)` backbone) "
    r"\((?P<model_type>[\w-]+), (?P<layers>\d+) layers, hidden size (?P<hidden_size>\d+)\)"
)


def value(text: str):
    """A value as a card shows it: the Python literal it prints (`0.004`, `False`, `None`, `[8, 24]`), else the text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def find(pattern: str, text: str, what: str, card: str, default=None, flags: int = 0):
    """The groups of `pattern`'s first match in `text`; `default` (or an error naming the card) where none."""
    match = re.search(pattern, text, flags)
    if match:
        return match.groups() if len(match.groups()) > 1 else match.group(1)
    if default is not None:
        return default
    raise SystemExit(f"{card}: no {what} found in the card.")


def section(text: str, title: str) -> str:
    """The body of a card's `## title` section."""
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def table_rows(text: str) -> dict[str, str]:
    """The `| name | value |` rows of a two-column table below its header, by their first cell without backticks."""
    body = text.split("|---|---|\n", 1)[1]
    return {name.strip("`"): cell for name, cell in re.findall(r"^\| (.+?) \| (.*) \|$", body, re.M)}


def recover_inputs(path: Path) -> dict:
    """The arguments of `model_card` that rendered the card at `path`, recovered from the card itself."""
    card = ModelCard.load(path)
    name, text = path.name, card.text
    metrics = {
        f"test_{result.metric_type}@{result.metric_args['k']}": result.metric_value
        for result in card.data.eval_results
    }
    metrics["test_num_users"] = int(find(r"averaged over (\d+) users", text, "user count", name))

    model = table_rows(section(text, "Model"))
    stage, model_class = find(r"(pretraining|fine-tuning) \(`(\w+)`\)", model["stage"], "stage", name)
    backbone = BACKBONE.fullmatch(model["backbone"])
    if backbone is None:
        raise SystemExit(f"{name}: the backbone {model['backbone']!r} is not described as the template does.")
    text_config = AutoConfig.for_model(backbone["model_type"])
    text_config.num_hidden_layers, text_config.hidden_size = int(backbone["layers"]), int(backbone["hidden_size"])
    num_users, num_items = (int(count) for count in model["users / items"].split(" / "))
    prompts = {}
    if stage == "fine-tuning":
        prompts["recommendation_prompt"] = find(r"from the prompt `(.+?)`;", text, "recommendation prompt", name)
        prompts["cold_start_prompt"] = find(r"served\s+from `(.+?)`\.", text, "cold-start prompt", name)
    else:
        prompts["collaborative_prompt"] = find(r"document,\s+`(.+?)` followed", text, "collaborative prompt", name)
    config = CLLM4RecConfig(
        text_config=text_config,
        num_users=num_users,
        num_items=num_items,
        lambda_v=value(model["mutual regularization `lambda_v"]),
        id_embedding_init="vocabulary" if "ID embeddings initialized" in model else "normal",
        id_embedding_dropout=value(
            model.get("dropout on the ID tokens' input embeddings `id_embedding_dropout", "0.0")
        ),
        tie_item_head="item head" not in model,
        architectures=[model_class],
        **prompts,
    )
    if backbone["hub_id"] or backbone.group(1).startswith("pretrained"):
        config.base_model_name_or_path = backbone["hub_id"] or LOCAL_FOLDER

    training_args = {name: value(cell) for name, cell in table_rows(section(text, "Training")).items()}
    training_args["load_best_model_at_end"] = "metric_for_best_model" in training_args
    orders = find(r"history_permutations(?:=|` \| )(\d+)", text, "history orders", name, default="1")
    training_args["history_permutations"] = int(orders)
    if "masked share of a history `mask_ratio" in model:
        training_args["mask_ratio"] = value(model["masked share of a history `mask_ratio"])
    if "backbone training" in model:
        pattern = r"`(\w+)`(?:, LoRA rank (\d+))?(?:, dropout ([\d.]+))?"
        training, rank, dropout = find(pattern, model["backbone training"], "backbone training", name)
        training_args.update(backbone_training=training, lora_rank=int(rank) if rank else None)
        training_args["lora_dropout"] = float(dropout) if dropout else (0.0 if training == "lora" else None)

    return {
        "config": config,
        "model_id": card.data.model_name,
        "data": SimpleNamespace(manifest=manifest(section(text, "Data"), name)),
        "mappings": example_mappings(text, name),
        "metrics": metrics,
        "training_args": training_args,
        "license": card.data.license,
    }


def manifest(text: str, card: str) -> dict:
    """The data set's manifest as the Data section shows it: name, counts, protocol and source digests."""
    pattern = r"Data set \*\*(.+?)\*\*: (\d+) users, (\d+) items, interactions(.*?);\s+(\d+) training reviews"
    dataset, users, items, interactions, reviews = find(pattern, text, "data set", card, flags=re.S)
    protocol = text.split("Protocol:", 1)[1].split("Sources", 1)[0] if "Protocol:" in text else ""
    sources = text.split("Sources (SHA-256):", 1)[1] if "Sources (SHA-256):" in text else ""
    return {
        "name": dataset,
        "num_users": int(users),
        "num_items": int(items),
        "num_interactions": {split: int(count) for split, count in re.findall(r"(\w+) (\d+)", interactions)},
        "num_reviews": int(reviews),
        "protocol": {key: value(shown) for key, shown in re.findall(r"^- `(\w+)`: (.*)$", protocol, re.M)},
        "sources": dict(re.findall(r"^- `(.+?)`: `([0-9a-f]+)`$", sources, re.M)),
    }


def example_mappings(text: str, card: str) -> IdMappings:
    """
    Id mappings that give the card's examples: its example user first, with the example history of a fine-tuned
    model (the items of which are the only ones they hold); with histories where the card says the checkpoint ships
    them.
    """
    user = find(r'users\.index\("(.+?)"\)|--users (\S+) --k|"user": "(.+?)"', text, "example user", card)
    user = next(group for group in user if group is not None) if isinstance(user, tuple) else user
    history = json.loads(find(r'"history": (\[.*?\])', text, "example history", card, default="[]"))
    has_histories = "every known user's training history" in text
    return IdMappings(
        users=[user],
        items=history,
        item_texts=[""] * len(history),
        histories=[list(range(len(history)))] if has_histories else [],
    )


def check_against_result(card: str, inputs: dict) -> None:
    """Raises `SystemExit` where a card's metrics or settings differ from the result file it cites."""
    file, stage, test = CITED_RESULTS[card]
    result = json.loads((RESULTS_DIR / file).read_text())
    measured, configuration = result[stage][test], result["configuration"]
    differences = [
        f"{metric}: card {shown}, result {measured[metric.removeprefix('test_')]}"
        for metric, shown in inputs["metrics"].items()
        if shown != measured[metric.removeprefix("test_")]
    ]
    training_args = inputs["training_args"]
    options = {**PRETRAINING_OPTIONS, "history_permutations": "history_permutations"}
    differences += [
        f"{argument}: card {training_args[argument]}, result {configuration[option]}"
        for argument, option in options.items()
        if training_args.get(argument) != configuration[option]
    ]
    if differences:
        raise SystemExit(f"{card} differs from {file}: {'; '.join(differences)}")


def figures(card_text: str) -> list[str]:
    """What a card says it measured: the metric values, the rows of the results table, the users they average over."""
    return FIGURES.findall(card_text)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--cards_dir", default=str(CARDS_DIR))
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    cards = sorted(Path(args.cards_dir).glob("cllm4rec-*.md"))
    if not cards:
        parser.error(f"--cards_dir {args.cards_dir}: no cllm4rec-*.md card there.")
    stale = []
    for path in cards:
        inputs = recover_inputs(path)
        if path.stem in CITED_RESULTS:
            check_against_result(path.stem, inputs)
        old, new = path.read_text(), str(model_card(**inputs))
        if figures(new) != figures(old):
            raise SystemExit(f"{path}: regenerated, its figures would change:\n{figures(old)}\n{figures(new)}")
        if new != old:
            stale.append(path)
            if not args.check:
                path.write_text(new)
                print(f"regenerated {path}")
    if args.check:
        if stale:
            print(f"not what the template gives: {', '.join(map(str, stale))}", file=sys.stderr)
        sys.exit(1 if stale else 0)


if __name__ == "__main__":
    main()
