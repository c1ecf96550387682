"""
CLLM4Rec end to end on the built-in data set, in about a minute on a laptop CPU, with nothing to download.

    python examples/quickstart.py [--output_dir runs/quickstart]

Prepares the built-in synthetic data set (users with planted tastes, items with text), pretrains a tiny GPT-2
backbone's user/item embeddings with the mutual-regularized collaborative and content language modelling,
fine-tunes for item prediction, compares test Recall@20 / Recall@40 / NDCG@100 with popularity, and prints
recommendations for a few users with their items' text.
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from hf_cllm4rec import CLLM4RecForItemPrediction, CLLM4RecTokenizer
from hf_cllm4rec.evaluation import evaluate_recommender
from hf_cllm4rec.training import CLLM4RecTrainingArguments
from hf_cllm4rec.training.recipes import (
    BUILTIN_BACKBONE,
    DataArguments,
    ModelArguments,
    load_data,
    run_finetuning,
    run_pretraining,
)


def training_arguments(output_dir: Path, rounds: int, **overrides) -> CLLM4RecTrainingArguments:
    defaults = {
        "per_device_train_batch_size": 32,
        "per_device_eval_batch_size": 128,
        "learning_rate": 1e-2,
        "lr_scheduler_type": "constant",
        "content_documents": "item",
        "logging_steps": 20,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "use_cpu": not torch.cuda.is_available(),
    }
    return CLLM4RecTrainingArguments(output_dir=str(output_dir), num_train_epochs=rounds, **{**defaults, **overrides})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="runs/quickstart", type=Path)
    args = parser.parse_args()

    data_args = DataArguments()
    data = load_data(data_args)
    print(f"Built-in data set: {data.num_users} users, {data.num_items} items, {data.manifest['num_interactions']}")

    pretrained = args.output_dir / "pretrained"
    run_pretraining(
        ModelArguments(backbone=BUILTIN_BACKBONE),
        data_args,
        training_arguments(pretrained, rounds=10, content_warmup_epochs=2),
    )
    finetuned = args.output_dir / "finetuned"
    metrics = run_finetuning(
        ModelArguments(pretrained=str(pretrained)),
        data_args,
        training_arguments(
            finetuned,
            rounds=10,
            eval_strategy="epoch",
            save_strategy="epoch",
            load_best_model_at_end=True,
            save_total_limit=1,
        ),
    )

    train, test = data.to_sparse("train"), data.to_sparse("test")
    popularity = torch.as_tensor(np.asarray(train.sum(axis=0)).ravel(), dtype=torch.float32)
    baseline = evaluate_recommender(lambda users: popularity.expand(len(users), -1), test, exclude=train)
    print(f"\n{'test':<12}{'Recall@20':>10}{'Recall@40':>10}{'NDCG@100':>10}")
    for name, result in (("CLLM4Rec", metrics), ("popularity", baseline)):
        row = [result.get(f"test_{key}", result.get(key)) for key in ("recall@20", "recall@40", "ndcg@100")]
        print(f"{name:<12}" + "".join(f"{value:>10.4f}" for value in row))

    model = CLLM4RecForItemPrediction.from_pretrained(finetuned)
    tokenizer = CLLM4RecTokenizer.from_pretrained(finetuned)
    histories = data.histories("train")
    users = [0, 1, 2]
    recommendations = model.recommend(users, [histories[user] for user in users], k=3, tokenizer=tokenizer)
    texts = data.item_texts()
    for user, items in zip(users, recommendations.item_ids.tolist(), strict=True):
        print(
            f"\nuser {data.user_raw_ids[user]} has interacted with: {'; '.join(texts[i] for i in histories[user][:3])} ..."
        )
        for item in items:
            print(f"  recommended {data.item_raw_ids[item]}: {texts[item]}")


if __name__ == "__main__":
    main()
