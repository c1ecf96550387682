"""
Speed of every CLLM4Rec stage on a prepared data set, and how prediction time grows with the catalogue.

    python benchmarks/speed.py --data data/beauty --backbone gpt2 --random_init          # GPT-2-small shape
    python benchmarks/speed.py --data data/beauty --backbone PATH_TO_SMOLLM2
    python benchmarks/speed.py --data builtin --backbone builtin-tiny-gpt2 --sample 64 --batch_size 16  # CPU smoke
    python benchmarks/speed.py --data data/beauty --backbone gpt2 --random_init \
        --backbone_overrides '{"n_layer": 2, "n_embd": 256, "n_head": 4}'              # the CPU quality runs' shape

Stages, each one real optimizer steps of the ID tables with the backbone frozen, as in the paper (or, for
prediction, real top-k) through the package's own documents, collator and model, timed after a warm-up (the share
spent waiting for the data loader reported too), with documents grouped by length (`--train_sampling_strategy
group_by_length` in training; the default, random batching, pads more):
- content epoch: one document per training pair, `<user_u> writes the following review for <item_i>:` + the item's
  text (the Beauty split has no reviews);
- collaborative epoch: one document per user; fine-tuning epoch: one masked-history document per user;
- prediction: the top 100 items for every user, training items excluded, users batched by prompt length, under
  autocast or (`--prediction_weights bfloat16`) from bfloat16 weights.
With `--sample N` each stage runs N documents and its epoch time is extrapolated (stated in the JSON); a training
stage times the batches after its first two, so N must exceed two batches. The JSON
in `benchmarks/results/` records the figures, the configuration, device, versions and git commit.
"""

import argparse
import copy
import math
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.provenance import (  # noqa: E402
    add_cudnn_attention_option,
    apply_cudnn_attention_option,
    device_name,
    git_commit,
    recorded_location,
    write_result,
)
from hf_cllm4rec import CLLM4RecConfig, CLLM4RecForItemPrediction, Recommender  # noqa: E402
from hf_cllm4rec.data import CLLM4RecDataCollator, CollaborativeDocuments, ContentDocuments, RecommendationDocuments  # noqa: E402
from hf_cllm4rec.data.documents import ScheduledDocuments  # noqa: E402
from hf_cllm4rec.training import FineTuningArguments, apply_backbone_training  # noqa: E402
from hf_cllm4rec.training.presets import given_options  # noqa: E402
from hf_cllm4rec.training.recipes import (  # noqa: E402
    DataArguments,
    PretrainingModelArguments,
    build_pretraining_model,
    load_data,
)
from hf_cllm4rec.training.schedule import ScheduleBatchSampler  # noqa: E402

STAGES = ("content", "collaborative", "finetuning", "prediction")
# Batches each training stage runs before its timing starts.
WARMUP_BATCHES = 2
# Items each prediction recommends, and the length of the random histories of the catalogue scaling.
TOP_K, SCALING_HISTORY_LENGTH = 100, 10
# The options that only prediction and the catalogue scaling read: `--loading_only` refuses them.
PREDICTION_OPTIONS = (
    "dtype",
    "eval_batch_size",
    "eval_max_tokens",
    "prediction_weights",
    "scaling_items",
    "scaling_users",
)
# The kernels `scaled_dot_product_attention` may choose from, by whether torch has them enabled.
SDPA_BACKENDS = {
    "FLASH_ATTENTION": torch.backends.cuda.flash_sdp_enabled,
    "EFFICIENT_ATTENTION": torch.backends.cuda.mem_efficient_sdp_enabled,
    "CUDNN_ATTENTION": torch.backends.cuda.cudnn_sdp_enabled,
    "MATH": torch.backends.cuda.math_sdp_enabled,
}
# Share of a history held out by the timed masked-history documents: fine-tuning's default.
MASK_RATIO = FineTuningArguments.mask_ratio
# The authors' code on one H200 (GPT-2 small, batch 20, Beauty): seconds per epoch and users per second.
AUTHORS_H200 = {
    "content_epoch_s": 230.0,
    "collaborative_epoch_s": 25.0,
    "finetuning_epoch_s": 19.0,
    "prediction_users_per_s": 1319.0,
}


def catalogue_sizes(text: str) -> list[int]:
    """The `--scaling_items` option: catalogue sizes separated by commas, each with room for a history and the top
    k; '' for none."""
    try:
        sizes = [int(size) for size in text.split(",") if size.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"catalogue sizes are whole numbers separated by commas, got {text!r}."
        ) from None
    too_small = [size for size in sizes if size < TOP_K + SCALING_HISTORY_LENGTH]
    if too_small:
        raise argparse.ArgumentTypeError(
            f"a catalogue holds {TOP_K + SCALING_HISTORY_LENGTH} items at least, got {too_small}."
        )
    return sizes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--data", default="data/beauty", help="A prepared data set folder, or 'builtin'.")
    parser.add_argument("--backbone", default="gpt2")
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--random_init", action="store_true", help="Random backbone weights (speed only).")
    parser.add_argument("--backbone_overrides", default=None, help="JSON of backbone config fields (random init).")
    parser.add_argument(
        "--batch_size",
        type=int,
        default=1024 if torch.cuda.is_available() else 256,
        help="Documents per training step.",
    )
    parser.add_argument("--eval_batch_size", type=int, default=1024, help="Users per prediction batch, at most.")
    parser.add_argument(
        "--eval_max_tokens", type=int, default=None, help="Padded prompt tokens per prediction batch, at most."
    )
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default="bfloat16" if torch.cuda.is_available() else "float32"
    )
    parser.add_argument(
        "--prediction_weights",
        choices=["float32", "bfloat16"],
        default="float32",
        help="Predict from float32 weights (under autocast with --dtype bfloat16, as the Trainer evaluates) or from "
        "a bfloat16 copy without autocast (as `cllm4rec recommend --dtype bfloat16` serves).",
    )
    parser.add_argument(
        "--stages",
        default=",".join(STAGES),
        help=f"The stages to time, comma-separated (default: all of {','.join(STAGES)}).",
    )
    parser.add_argument("--sample", type=int, default=None, help="Documents per stage (default: the full epoch).")
    parser.add_argument(
        "--loading_only",
        action="store_true",
        help="Time only the data loader of the training stages (rendering and collating documents), no model steps: "
        "the host's share of an epoch. Prediction and the catalogue scaling are left out.",
    )
    parser.add_argument("--num_workers", type=int, default=4 if torch.cuda.is_available() else 0)
    parser.add_argument(
        "--scaling_items",
        type=catalogue_sizes,
        default="1000,10000,100000,1000000",
        help="Catalogue sizes for prediction ('': none).",
    )
    parser.add_argument("--scaling_users", type=int, default=256, help="Users scored per catalogue size.")
    parser.add_argument("--output", default=None, help="JSON path; default benchmarks/results/speed-<name>.json.")
    add_cudnn_attention_option(parser)
    args = parser.parse_args(argv)
    args.stages = [stage.strip() for stage in args.stages.split(",") if stage.strip()]
    unknown = sorted(set(args.stages) - set(STAGES))
    if unknown or not args.stages:
        parser.error(f"--stages takes some of {','.join(STAGES)}; got {unknown or 'none'}")
    given = given_options(parser, argv)
    if args.loading_only:
        prediction_only = [option for option in PREDICTION_OPTIONS if option in given]
        if "stages" in given and "prediction" in args.stages:
            prediction_only.insert(0, "stages prediction")
        if prediction_only:
            parser.error(f"--{', --'.join(prediction_only)}: of prediction, which --loading_only leaves out.")
        args.stages, args.scaling_items = [stage for stage in args.stages if stage != "prediction"], []
    for option in ("batch_size", "eval_batch_size", "eval_max_tokens", "sample", "scaling_users"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            parser.error(f"--{option} must be at least 1, got {getattr(args, option)}.")
    if (
        args.sample is not None
        and set(args.stages) - {"prediction"}
        and args.sample <= WARMUP_BATCHES * args.batch_size
    ):
        parser.error(
            f"--sample {args.sample}: the training stages time the batches after their first {WARMUP_BATCHES} of "
            f"--batch_size {args.batch_size}: give more than {WARMUP_BATCHES * args.batch_size}."
        )
    return args


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_stage(device: torch.device, time_stage: Callable[[], dict]) -> dict:
    """
    Times a stage from an empty allocator cache and a fresh peak, as in a process of its own, and adds its peak GPU
    memory and how often the allocator had to free its cache and retry (a slow path).
    """
    if device.type != "cuda":
        return {**time_stage(), "peak_gpu_memory_gib": None}
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    figures = time_stage()
    stats = torch.cuda.memory_stats()
    return {
        **figures,
        "peak_gpu_memory_gib": stats["allocated_bytes.all.peak"] / 2**30,
        "alloc_retries": stats["num_alloc_retries"],
    }


def time_training(model, source, batch_size, pad_token_id, args, device) -> dict:
    """Optimizer steps over `source` (or a sample of it); seconds per epoch, extrapolated when sampled."""
    size = len(source) if args.sample is None else min(args.sample, len(source))
    sampler = ScheduleBatchSampler([len(source)], [0], batch_size, seed=0, lengths=[source.document_lengths()])
    batches = list(sampler)[: math.ceil(size / batch_size)]
    loader = DataLoader(
        ScheduledDocuments([source]),
        batch_sampler=batches,
        collate_fn=CLLM4RecDataCollator(pad_token_id=pad_token_id),
        num_workers=args.num_workers,
        pin_memory=device.type == "cuda",
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    model.train()
    steps, start = 0, None
    documents, loading = 0, 0.0
    batches = iter(loader)
    while True:
        if steps == WARMUP_BATCHES:
            synchronize(device)
            start, documents, loading = time.perf_counter(), 0, 0.0
        fetch_start = time.perf_counter()
        batch = next(batches, None)
        loading += time.perf_counter() - fetch_start
        if batch is None:
            break
        steps += 1
        documents += batch["input_ids"].shape[0]
        if args.loading_only:
            continue
        document_type = batch.pop("document_type")
        batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        with autocast:
            loss = model(**batch, document_type=document_type).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    if start is None or documents == 0:
        raise ValueError("Too few batches to time: raise --sample.")
    seconds = time.perf_counter() - start
    return {
        "documents_timed": documents,
        "documents_per_epoch": len(source),
        "seconds_timed": seconds,
        "epoch_s": seconds * len(source) / documents,
        # of which waiting for the data loader (rendering and collating documents)
        "loading_epoch_s": loading * len(source) / documents,
        "extrapolated": documents < len(source) - batch_size * WARMUP_BATCHES,
    }


def prediction_precision(args, device: torch.device) -> tuple[torch.dtype, AbstractContextManager]:
    """
    The dtype of the weights prediction reads and the context it runs in: bfloat16 weights without autocast with
    `--prediction_weights bfloat16`, else float32 weights, under bfloat16 autocast with `--dtype bfloat16`.
    """
    if args.prediction_weights == "bfloat16":
        return torch.bfloat16, nullcontext()
    return torch.float32, torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")


@torch.no_grad()
def time_prediction(model, tokenizer, data, args, device, k: int = TOP_K) -> dict:
    """
    Top-k over all items for the users with training items (or a sample), training items excluded, in batches of
    similar prompt length (`--eval_batch_size` users and `--eval_max_tokens` padded tokens at most), each timed.
    """
    histories = data.histories("train")
    users = np.array([user for user in range(data.num_users) if len(histories[user])][: args.sample])
    user_histories = [histories[user] for user in users]
    lengths = tokenizer(users.tolist(), user_histories, return_tensors="np")["attention_mask"].sum(-1)
    dtype, autocast = prediction_precision(args, device)
    if dtype != torch.float32:  # a copy: the training stages share the model
        model = copy.deepcopy(model).to(dtype)
    model.eval()
    recommender = Recommender(
        model, tokenizer, batch_size=args.eval_batch_size, max_tokens=args.eval_max_tokens, disable_tqdm=True
    )
    batches = recommender.batches(users.tolist(), user_histories)

    def recommend(batch: np.ndarray) -> None:
        with autocast:
            recommender.recommend_batch(users[batch].tolist(), [user_histories[row] for row in batch], k=k)
        synchronize(device)

    recommend(batches[0])  # warm-up
    timed = []
    for batch in batches:
        start = time.perf_counter()
        recommend(batch)
        seconds = time.perf_counter() - start
        timed.append({"users": len(batch), "width": int(lengths[batch].max()), "seconds": seconds})
    seconds = sum(batch["seconds"] for batch in timed)
    return {
        "users": len(users),
        "seconds": seconds,
        "users_per_s": len(users) / seconds,
        "prompt_tokens": int(lengths.sum()),
        "padded_tokens": sum(batch["users"] * batch["width"] for batch in timed),
        "batches": timed,
    }


@torch.no_grad()
def time_catalogue_scaling(config: CLLM4RecConfig, tokenizer_factory, args, device) -> list[dict]:
    """
    Users per second of top-k prediction for growing catalogues (random ID embeddings, same backbone), batched and
    with the weights as prediction's.
    """
    results = []
    dtype, autocast = prediction_precision(args, device)
    for num_items in args.scaling_items:
        scaled = CLLM4RecConfig(**{**config.to_dict(), "num_items": num_items, "num_users": args.scaling_users})
        model = CLLM4RecForItemPrediction(scaled).to(device, dtype).eval()
        rng = np.random.default_rng(0)
        histories = [
            rng.choice(num_items, size=SCALING_HISTORY_LENGTH, replace=False) for _ in range(args.scaling_users)
        ]
        users = list(range(args.scaling_users))
        recommender = Recommender(
            model,
            tokenizer_factory(scaled),
            batch_size=args.eval_batch_size,
            max_tokens=args.eval_max_tokens,
            disable_tqdm=True,
        )
        batches = [
            ([users[row] for row in batch], [histories[row] for row in batch])
            for batch in recommender.batches(users, histories)
        ]
        with autocast:
            recommender.recommend_batch(*batches[0], k=TOP_K)  # warm-up
            synchronize(device)
            start = time.perf_counter()
            for batch_users, batch_histories in batches:
                recommender.recommend_batch(batch_users, batch_histories, k=TOP_K)
            synchronize(device)
        seconds = time.perf_counter() - start
        results.append({"num_items": num_items, "users": len(users), "users_per_s": len(users) / seconds})
        print(f"  {num_items:>9,} items: {len(users) / seconds:,.0f} users/s")
        del model
    return results


def main() -> None:
    args = parse_args()
    apply_cudnn_attention_option(args)
    commit = git_commit()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = load_data(DataArguments(data=args.data))
    model_args = PretrainingModelArguments(
        backbone=args.backbone,
        tokenizer=args.tokenizer,
        random_init=args.random_init,
        backbone_overrides=args.backbone_overrides,
    )
    pretraining_model, tokenizer = build_pretraining_model(model_args, data)
    config = pretraining_model.config
    pretraining_model.to(device)
    model = CLLM4RecForItemPrediction(config)
    model.model = pretraining_model.model  # the two heads share one backbone and one set of ID embeddings
    apply_backbone_training(model, "frozen")  # both heads train the ID tables alone, as in the paper
    max_length = min(getattr(config.text_config, "max_position_embeddings", 1024) or 1024, 1024)
    histories = data.histories("train")

    stages = {}
    print(f"device: {device_name()}")
    for name, stage_model, source in (
        ("content", pretraining_model, partial(ContentDocuments, data, tokenizer, max_length, ("user_item",))),
        ("collaborative", pretraining_model, partial(CollaborativeDocuments, histories, tokenizer, max_length)),
        ("finetuning", model, partial(RecommendationDocuments, histories, tokenizer, MASK_RATIO, max_length)),
    ):
        if name not in args.stages:
            continue
        timing = partial(time_training, stage_model, source(), args.batch_size, tokenizer.pad_token_id, args, device)
        stages[name] = measure_stage(device, timing)
        print(
            f"{name:>14} epoch: {stages[name]['epoch_s']:8.2f} s ({stages[name]['documents_per_epoch']:,} documents, "
            f"{stages[name]['loading_epoch_s']:.2f} s of it loading them)"
        )
    if "prediction" in args.stages:
        stages["prediction"] = measure_stage(device, partial(time_prediction, model, tokenizer, data, args, device))
        prediction = stages["prediction"]
        print(
            f"{'prediction':>14}: {prediction['users_per_s']:,.0f} users/s ({len(prediction['batches'])} batches, "
            f"{prediction['padded_tokens']:,} padded tokens for {prediction['prompt_tokens']:,})"
        )
    peak_memory = None
    if device.type == "cuda":
        peak_memory = max(stage["peak_gpu_memory_gib"] for stage in stages.values())
        print("peak GPU memory (GiB): " + ", ".join(f"{k} {v['peak_gpu_memory_gib']:.1f}" for k, v in stages.items()))

    if args.scaling_items:
        print("prediction vs catalogue size:")
    tokenizer_factory = lambda scaled: type(tokenizer)(tokenizer.base_tokenizer, scaled)  # noqa: E731
    scaling = time_catalogue_scaling(config, tokenizer_factory, args, device)

    speedups = None
    if device.type == "cuda" and not args.loading_only:
        speedups = {
            f"{name}_epoch": AUTHORS_H200[f"{name}_epoch_s"] / stages[name]["epoch_s"]
            for name in ("content", "collaborative", "finetuning")
            if name in stages
        }
        if "prediction" in stages:
            speedups["prediction"] = stages["prediction"]["users_per_s"] / AUTHORS_H200["prediction_users_per_s"]
        print("speed-up over the authors' code on an H200: " + ", ".join(f"{k} {v:.1f}x" for k, v in speedups.items()))
    result = {
        "benchmark": "speed",
        "data": data.name,
        "backbone": recorded_location(args.backbone),
        "random_init": args.random_init,
        "backbone_overrides": args.backbone_overrides,
        "backbone_layers": getattr(config.text_config, "num_hidden_layers", None),
        "hidden_size": config.hidden_size,
        "batch_size": args.batch_size,
        "eval_batch_size": args.eval_batch_size,
        "eval_max_tokens": args.eval_max_tokens,
        "dtype": args.dtype,
        "prediction_weights": args.prediction_weights,
        "attn_implementation": config.text_config._attn_implementation,
        "attention_backends": [name for name, enabled in SDPA_BACKENDS.items() if enabled()],
        "sample": args.sample,
        "loading_only": args.loading_only,
        "stages": stages,
        "peak_gpu_memory_gib": peak_memory,
        "prediction_scaling": scaling,
        "authors_h200": AUTHORS_H200,
        "speedup_vs_authors_h200": speedups,
    }
    output = Path(args.output or f"benchmarks/results/speed-{Path(args.backbone).name}-{device.type}.json")
    print(f"wrote {write_result(output, result, commit)}")


if __name__ == "__main__":
    main()
