"""
CLLM4Rec end to end on the built-in data set, in well under a minute on a laptop CPU, with nothing to download.

    python examples/quickstart.py [--output_dir runs/quickstart]

Loads the built-in synthetic data set (users with planted tastes, items with text), pretrains a tiny GPT-2
backbone's user/item embeddings with the mutual-regularized collaborative and content language modelling,
fine-tunes for item prediction (keeping the best round on validation), compares test Recall@20 / Recall@40 /
NDCG@100 with popularity, and recommends items to a few users from the saved model. The models go to
`OUTPUT_DIR/pretrained` and `OUTPUT_DIR/finetuned`, replacing those of an earlier run.
"""

import argparse
import shutil
from pathlib import Path

import torch

from hf_cllm4rec import CLLM4RecForItemPrediction, CLLM4RecTokenizer, IdMappings, Recommender
from hf_cllm4rec.evaluation import evaluate_recommender
from hf_cllm4rec.training import FineTuningArguments, PretrainingArguments
from hf_cllm4rec.training.recipes import (
    BUILTIN_BACKBONE,
    DataArguments,
    FineTuningModelArguments,
    PretrainingModelArguments,
    load_data,
    run_finetuning,
    run_pretraining,
)

METRICS = ("recall@20", "recall@40", "ndcg@100")


def training_options(output_dir: Path, epochs: int) -> dict:
    """What both stages share: a batch of 32 at a constant learning rate of 0.01, training logged once per epoch."""
    return {
        "output_dir": str(output_dir),
        "num_train_epochs": epochs,
        "per_device_train_batch_size": 32,
        "per_device_eval_batch_size": 128,
        "learning_rate": 1e-2,
        "lr_scheduler_type": "constant",
        "content_documents": "item",
        "logging_strategy": "epoch",
        "report_to": "none",
        "use_cpu": not torch.cuda.is_available(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="runs/quickstart", type=Path)
    args = parser.parse_args()

    data_args = DataArguments()
    data = load_data(data_args)
    print(
        f"Built-in data set: {data.num_users} users, {data.num_items} items, {data.tables['train'].num_rows} "
        "training interactions\n\nPretraining (two content warm-up epochs, then ten rounds)"
    )

    pretrained, finetuned = args.output_dir / "pretrained", args.output_dir / "finetuned"
    for folder in (pretrained, finetuned):  # a new run, not the continuation of an earlier one's checkpoints
        shutil.rmtree(folder, ignore_errors=True)
    run_pretraining(
        PretrainingModelArguments(backbone=BUILTIN_BACKBONE),
        data_args,
        PretrainingArguments(**training_options(pretrained, 12), content_warmup_epochs=2, save_strategy="no"),
    )
    print("\nFine-tuning (ten rounds, the best one on validation kept)")
    finetuning = run_finetuning(
        FineTuningModelArguments(pretrained=str(pretrained)),
        data_args,
        FineTuningArguments(
            **training_options(finetuned, 10),
            eval_strategy="epoch",
            save_strategy="epoch",
            load_best_model_at_end=True,
            save_total_limit=1,
        ),
    )

    train, test = data.to_sparse("train"), data.to_sparse("test")
    popularity = torch.from_numpy(data.item_counts("train")).float()
    baseline = evaluate_recommender(lambda users: popularity.expand(len(users), -1), test, exclude=train)
    print(f"\nTest split, {int(finetuning['test_num_users'])} users, training items excluded from the ranking:")
    print(f"  {'':<12}" + "".join(f"{name:>11}" for name in ("Recall@20", "Recall@40", "NDCG@100")))
    for name, metrics in (("CLLM4Rec", {key: finetuning[f"test_{key}"] for key in METRICS}), ("popularity", baseline)):
        print(f"  {name:<12}" + "".join(f"{metrics[key]:>11.4f}" for key in METRICS))

    model = CLLM4RecForItemPrediction.from_pretrained(finetuned)
    mappings = IdMappings.load(finetuned)
    recommender = Recommender(model, CLLM4RecTokenizer.from_pretrained(finetuned), mappings)
    users = mappings.users[:3]
    print("\nRecommendations of the saved model (the data set's own ids):")
    for user, recommended in zip(users, recommender.recommend_raw(users, k=3), strict=True):
        history = mappings.histories[mappings.user_index(user)]
        print(f"  user {user} has interacted with {'; '.join(mappings.item_texts[item] for item in history[:3])} ...")
        for item in recommended:
            print(f"    recommended {item['item_id']}: {item['text']}")
    print(f"\nThe models are in {pretrained} and {finetuned}.")


if __name__ == "__main__":
    main()
