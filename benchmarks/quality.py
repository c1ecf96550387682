"""
Recommendation quality of CLLM4Rec next to popularity, EASE and Multi-VAE, on one prepared data set.

    python benchmarks/quality.py --data data/beauty --backbone PATH_TO_SMOLLM2 --name smollm2
    python benchmarks/quality.py --data data/beauty --recipe small-cpu --tokenizer GPT2_TOKENIZER --name small
    python benchmarks/quality.py --data data/beauty --backbone gpt2 --recipe paper --name gpt2-paper  # the paper's setup
    python benchmarks/quality.py ... --recipe paper --pretrain_rounds 20 --finetune_rounds 20   # ... a shorter schedule
    python benchmarks/quality.py --data builtin --backbone builtin-tiny-gpt2 --name smoke \\
        --warmup_epochs 0 --pretrain_rounds 1 --finetune_rounds 1 --baselines popularity           # seconds

Runs the full pipeline (pretrain, fine-tune with the best round kept on validation, test) and the baselines on the
same split with the same protocol (training items excluded from the ranking; Recall@20, Recall@40, NDCG@100 on
test). Writes `benchmarks/results/quality-<name>.json` (metrics, configuration, wall time, device, versions, git
commit) and a PNG of validation Recall@20 per fine-tuning round. `--recipe NAME` takes the defaults of a recipe of
`cllm4rec pretrain` / `finetune` (`--recipe paper`, or `--paper`: the paper-faithful configuration); every other
option is reported as what it is. `--search` pretrains every setting of the grid of `cllm4rec pretrain --search`
(the recipe's values of its options stand for none of the trials) and records each trial under `search`.
`--pretrained FOLDER` fine-tunes a model that an earlier run pretrained (the `pretrain` folder of a run of this script,
or the output of `cllm4rec pretrain`) instead of pretraining one; the result records that model's own test, validation
log and training time, and the options that only pretraining reads are refused:

    python benchmarks/quality.py --recipe small-cpu --data data/ml100k --pretrained runs/quality/ml100k/pretrain \
        --finetune_rounds 100 --history_attention set --baselines '' --name ml100k-set

`--resume`, given with the options of a run that stopped (a kill, a machine given back), continues it: a stage whose
model was saved is kept, a stage with a complete checkpoint continues from its last one (a `--search`: each trial from
its own), and the run's hours count the training seconds of the earlier attempts up to that checkpoint (recorded under
`resumed`).
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from transformers.trainer import TRAINER_STATE_NAME
from transformers.utils import CONFIG_NAME

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.baselines import BASELINES, baselines_option, run_baselines_on_data  # noqa: E402
from benchmarks.provenance import (  # noqa: E402
    add_cudnn_attention_option,
    apply_cudnn_attention_option,
    git_commit,
    recorded_arguments,
    recorded_location,
    write_result,
)
from hf_cllm4rec import (  # noqa: E402
    CLLM4RecConfig,
    CLLM4RecForCollaborativeLM,
    CLLM4RecForItemPrediction,
    CLLM4RecTokenizer,
)
from hf_cllm4rec.configuration_cllm4rec import HISTORY_ATTENTIONS, READ_OUTS  # noqa: E402
from hf_cllm4rec.evaluation import default_max_length, evaluate_model  # noqa: E402
from hf_cllm4rec.hub.modelcard import TEST_RESULTS_NAME, TRAINING_ARGS_NAME  # noqa: E402
from hf_cllm4rec.modeling_cllm4rec import COLLABORATIVE_TARGETS  # noqa: E402
from hf_cllm4rec.serving.recommender import MAX_HISTORY_PERMUTATIONS  # noqa: E402
from hf_cllm4rec.training import FineTuningArguments, PretrainingArguments  # noqa: E402
from hf_cllm4rec.training.arguments import ITEM_SOFTMAX, SAMPLING_STRATEGIES  # noqa: E402
from hf_cllm4rec.training.optimization import ID_EMBEDDINGS_OPTIMIZERS  # noqa: E402
from hf_cllm4rec.training.presets import (  # noqa: E402
    DEPENDENT_OPTIONS,
    RECIPES,
    SEARCH_GRIDS,
    get_recipe,
    given_options,
)
from hf_cllm4rec.training.recipes import (  # noqa: E402
    RECIPE_NAME,
    SEARCH_TRIAL_NAME,
    DataArguments,
    FineTuningModelArguments,
    PretrainingModelArguments,
    load_data,
    run_finetuning,
    run_pretraining,
    run_search,
)
from hf_cllm4rec.training.trainer import last_complete_checkpoint, read_out_prefix_power_scores  # noqa: E402

# The options of this script that a recipe's settings give: option -> (stage, setting of that stage's command).
RECIPE_OPTIONS = {
    "backbone": ("pretrain", "backbone"),
    "random_init": ("pretrain", "random_init"),
    "backbone_overrides": ("pretrain", "backbone_overrides"),
    "backbone_dropout": ("pretrain", "backbone_dropout"),
    "lambda_v": ("pretrain", "lambda_v"),
    "id_embedding_dropout": ("pretrain", "id_embedding_dropout"),
    "id_embedding_init": ("pretrain", "id_embedding_init"),
    "untie_item_head": ("pretrain", "untie_item_head"),
    "item_bias": ("pretrain", "item_bias"),
    "read_out": ("pretrain", "read_out"),
    "read_out_prefix_powers": ("pretrain", "read_out_prefix_powers"),
    "warmup_epochs": ("pretrain", "content_warmup_epochs"),
    "batch_size": ("pretrain", "per_device_train_batch_size"),
    "pretrain_learning_rate": ("pretrain", "learning_rate"),
    "finetune_learning_rate": ("finetune", "learning_rate"),
    "lr_scheduler_type": ("pretrain", "lr_scheduler_type"),
    "weight_decay": ("pretrain", "weight_decay"),
    "weight_average_decay": ("pretrain", "weight_average_decay"),
    "content_documents": ("pretrain", "content_documents"),
    "train_sampling_strategy": ("pretrain", "train_sampling_strategy"),
    "pretrain_backbone_training": ("pretrain", "backbone_training"),
    "backbone_training": ("finetune", "backbone_training"),
    "bf16": ("pretrain", "bf16"),
    "early_stopping_patience": ("pretrain", "early_stopping_patience"),
    "id_embeddings_optimizer": ("pretrain", "id_embeddings_optimizer"),
    "collaborative_targets": ("pretrain", "collaborative_targets"),
    "item_softmax": ("pretrain", "item_softmax"),
}


# The options of this script that only pretraining reads: `--pretrained` refuses them.
PRETRAINING_OPTIONS = (
    "backbone",
    "tokenizer",
    "random_init",
    "backbone_overrides",
    "backbone_dropout",
    "search",
    "warmup_epochs",
    "pretrain_rounds",
    "pretrain_learning_rate",
    "lambda_v",
    "pretrain_backbone_training",
    "id_embedding_dropout",
    "id_embedding_init",
    "untie_item_head",
    "item_bias",
    "read_out",
    "read_out_prefix_powers",
    "collaborative_targets",
)
# The options of this script that only fine-tuning reads: `--finetune_rounds 0` refuses them.
FINETUNING_OPTIONS = ("finetune_learning_rate", "recommendation_prompt", "history_attention")
# The options that train LoRA adapters where a stage trains them, and nothing where none does.
LORA_OPTIONS = ("lora_rank", "lora_dropout")
# An option given explicitly drops the recipe's settings that go with it (named alike here): those of the training
# commands, and pretraining's backbone training, which defaults to what --backbone_training says.
RECIPE_DEPENDENT_OPTIONS = {**DEPENDENT_OPTIONS, "backbone_training": ("pretrain_backbone_training",)}
# The pretraining training arguments that a result records of a model it fine-tunes with `--pretrained`.
RECORDED_PRETRAINING_ARGUMENTS = (
    "num_train_epochs",
    "content_warmup_epochs",
    "content_steps",
    "per_device_train_batch_size",
    "learning_rate",
    "lr_scheduler_type",
    "weight_average_decay",
    "early_stopping_patience",
    "collaborative_targets",
    "item_softmax",
    "read_out_prefix_powers",
    "seed",
)


# The (stage, setting) pairs of what pretraining's `--search` tries.
PRETRAINING_GRID_SETTINGS = {("pretrain", setting) for setting in SEARCH_GRIDS["pretrain"]}


def recipe_options(name: str) -> dict:
    """The defaults of this script's options that the recipe `name` of `cllm4rec pretrain` / `finetune` gives."""
    recipe = get_recipe(name)
    stages = {"pretrain": recipe.pretraining, "finetune": recipe.finetuning}
    options = {
        option: stages[stage][setting]
        for option, (stage, setting) in RECIPE_OPTIONS.items()
        if setting in stages[stage]
    }
    warmup = recipe.pretraining.get("content_warmup_epochs", 0)
    options["pretrain_rounds"] = recipe.pretraining["num_train_epochs"] - warmup
    options["finetune_rounds"] = recipe.finetuning["num_train_epochs"] if recipe.fine_tunes else 0
    options["no_content_steps"] = not recipe.pretraining.get("content_steps", True)
    return options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--data", default="data/beauty")
    parser.add_argument("--backbone", default="gpt2")
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--random_init", action="store_true")
    parser.add_argument("--backbone_overrides", default=None)
    parser.add_argument("--backbone_dropout", type=float, default=None, help="Every dropout of the backbone config.")
    parser.add_argument("--name", required=True, help="Names the run's JSON, PNG and output folders.")
    parser.add_argument(
        "--recipe",
        choices=list(RECIPES),
        help="The defaults of a recipe of `cllm4rec pretrain` / `finetune` (training/presets.py); options given "
        "explicitly still win. Default: this script's own defaults.",
    )
    parser.add_argument("--paper", action="store_true", help="The same as --recipe paper.")
    parser.add_argument(
        "--pretrained",
        default=None,
        help="Fine-tune this pretrained model folder (CLLM4RecForCollaborativeLM, with the trainer_state.json, "
        "test_results.json and training_args.json of its run) instead of pretraining one; needs --finetune_rounds "
        "above 0.",
    )
    parser.add_argument(
        "--search",
        action="store_true",
        help="Pretraining trains every setting of the grid of `cllm4rec pretrain --search` (SEARCH_GRIDS: "
        + ", ".join(f"{name} {values}" for name, values in SEARCH_GRIDS["pretrain"].items())
        + "), each early-stopped, and keeps the best trial on validation; it needs --early_stopping_patience.",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="Continue the run of this --name and --output_dir where it stopped: saved stages are kept, a stage with "
        "a complete checkpoint continues from its last one (with --search, each trial from its own).",
    )
    parser.add_argument(
        "--early_stopping_patience",
        type=int,
        default=None,
        help="Stop a stage after this many rounds without a better validation selection score (default: never).",
    )
    parser.add_argument(
        "--warmup_epochs",
        type=int,
        default=None,
        help="Content-only epochs before the pretraining rounds, each as long as a round (default: 2, or 0 with "
        "--no_content_steps).",
    )
    parser.add_argument("--pretrain_rounds", type=int, default=10)
    parser.add_argument("--finetune_rounds", type=int, default=20, help="0: no fine-tuning.")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--pretrain_learning_rate", type=float, default=1e-3)
    parser.add_argument("--finetune_learning_rate", type=float, default=1e-3)
    parser.add_argument("--lr_scheduler_type", default="constant", help="Over the whole schedule, e.g. 'linear'.")
    parser.add_argument("--warmup_steps", type=float, default=0, help="Steps, or a share of all steps when < 1.")
    parser.add_argument(
        "--weight_average_decay",
        type=float,
        default=None,
        help="Evaluate, select and test an exponential moving average of the weights with this decay per step.",
    )
    parser.add_argument(
        "--weight_decay",
        type=float,
        default=0.0,
        help="AdamW's decoupled weight decay on every trained matrix and embedding table (not biases and norms).",
    )
    parser.add_argument("--lambda_v", type=float, default=1.0)
    parser.add_argument("--content_documents", default="item")
    parser.add_argument(
        "--no_content_steps", action="store_true", help="ID documents only (no content epochs): a reduced schedule."
    )
    parser.add_argument(
        "--backbone_training",
        default="frozen",
        choices=["frozen", "full", "lora"],
        help="What of the backbone trains: in fine-tuning, and with 'full' also in pretraining.",
    )
    parser.add_argument(
        "--pretrain_backbone_training",
        default=None,
        choices=["frozen", "full", "lora"],
        help="What of the backbone trains in pretraining; default: as --backbone_training, but frozen for 'lora'. "
        "LoRA adapters of pretraining are merged into the backbone that fine-tuning starts from.",
    )
    parser.add_argument(
        "--id_embeddings_optimizer",
        default="adamw",
        choices=ID_EMBEDDINGS_OPTIMIZERS,
        help="The ID tables' update in both stages: dense AdamW, or AdamW on the rows a step touched.",
    )
    parser.add_argument("--lora_rank", type=int, default=8, help="Rank of the LoRA adapters, wherever they train.")
    parser.add_argument("--lora_dropout", type=float, default=0.0, help="Dropout on the LoRA branch.")
    parser.add_argument(
        "--id_embedding_dropout", type=float, default=0.0, help="Dropout on the input embeddings of ID tokens."
    )
    parser.add_argument(
        "--id_embedding_init",
        default="normal",
        choices=["normal", "vocabulary"],
        help="New ID embeddings: N(0, 0.02) as in the paper, or drawn from the statistics of the word embeddings.",
    )
    parser.add_argument(
        "--untie_item_head",
        action="store_true",
        help="An item head of its own instead of the collaborative item embeddings (the paper's tied head).",
    )
    parser.add_argument("--item_bias", action="store_true", help="A learned bias per item added to the item scores.")
    parser.add_argument(
        "--read_out",
        default="last",
        choices=READ_OUTS,
        help="The query vector items are scored with: the prompt's last token, or the mean over its history.",
    )
    parser.add_argument(
        "--read_out_prefix_powers",
        type=float,
        nargs="+",
        default=None,
        help="After pretraining, keep the weighting of the mean read-out's prefixes among these powers (0: the plain "
        "mean) that scores best on validation.",
    )
    parser.add_argument(
        "--collaborative_targets",
        default="next_item",
        choices=COLLABORATIVE_TARGETS,
        help="What each position of a collaborative document predicts: the next item, or every item after it.",
    )
    parser.add_argument(
        "--item_softmax",
        default="all",
        choices=ITEM_SOFTMAX,
        help="The items the softmax of both stages' item losses normalizes over: all, or those with a training "
        "interaction.",
    )
    parser.add_argument("--recommendation_prompt", default=None, help="Fine-tuning prompt (default: the paper's).")
    parser.add_argument(
        "--history_attention",
        default=None,
        choices=HISTORY_ATTENTIONS,
        help="How fine-tuning reads the history of its prompts: causal (the default), bidirectional, or a set.",
    )
    parser.add_argument(
        "--history_permutations",
        type=int,
        default=1,
        help="Also test each stage's selected model with its scores averaged over this many random history orders.",
    )
    parser.add_argument(
        "--train_sampling_strategy",
        default="random",
        choices=SAMPLING_STRATEGIES,
        help="'random' (the paper) or 'group_by_length' (documents of similar length share a step: less padding).",
    )
    parser.add_argument("--seed", type=int, default=42, help="Seeds initialization and the order of documents.")
    parser.add_argument(
        "--bf16",
        action="store_true",
        default=torch.cuda.is_available(),
        help="bfloat16 autocast: the default on a GPU; also runs on a CPU (fast where it has bfloat16 instructions).",
    )
    parser.add_argument(
        "--baselines",
        type=baselines_option,
        default=",".join(BASELINES),
        help="Names separated by commas; '' for none.",
    )
    parser.add_argument("--output_dir", default="runs/quality", help="Where the trained models go.")
    parser.add_argument("--results_dir", default="benchmarks/results", help="Where the JSON and PNG go.")
    add_cudnn_attention_option(parser)
    args = parser.parse_args(argv)
    if args.paper and args.recipe not in (None, "paper"):
        parser.error(f"--paper is --recipe paper: it cannot go with --recipe {args.recipe}.")
    given = given_options(parser, argv)
    if args.pretrained is not None:
        pretraining_only = [option for option in PRETRAINING_OPTIONS if option in given]
        if pretraining_only:
            parser.error(f"--{', --'.join(pretraining_only)}: options of pretraining, which --pretrained skips.")
        missing = [
            name
            for name in (TRAINER_STATE_NAME, TEST_RESULTS_NAME, TRAINING_ARGS_NAME)
            if not Path(args.pretrained, name).is_file()
        ]
        if missing:
            parser.error(f"--pretrained {args.pretrained}: no {' or '.join(missing)} there (not a pretraining run).")
    # the options that set a pretraining setting the grid varies, under this script's name for it
    searched = sorted(
        option for option in given if RECIPE_OPTIONS.get(option, ("pretrain", option)) in PRETRAINING_GRID_SETTINGS
    )
    if args.search and searched:
        parser.error(f"--{', --'.join(searched)}: --search tries its own values of {', '.join(searched)}.")
    if args.paper or args.recipe:
        name = args.recipe or "paper"
        options = recipe_options(name)
        replaced = set().union(
            *(RECIPE_DEPENDENT_OPTIONS[option] for option in given if option in RECIPE_DEPENDENT_OPTIONS)
        )
        options = {option: value for option, value in options.items() if option not in replaced}
        parser.set_defaults(**options, recipe=name)
        args = parser.parse_args(argv)
    if args.pretrain_backbone_training is None:
        args.pretrain_backbone_training = "frozen" if args.backbone_training == "lora" else args.backbone_training
    if args.warmup_epochs is None:
        args.warmup_epochs = 0 if args.no_content_steps else 2
    elif args.warmup_epochs and args.no_content_steps:
        parser.error("--warmup_epochs trains content documents: it cannot go with --no_content_steps.")
    if Path(args.name).name != args.name:
        parser.error(f"--name names the run's files and folders: no path separator, got {args.name!r}.")
    if not args.resume and (Path(args.output_dir) / args.name).exists():
        parser.error(
            f"--name {args.name}: {Path(args.output_dir) / args.name} holds an earlier run: continue it with --resume, "
            "or give another --name or --output_dir."
        )
    if args.pretrain_rounds < 1:
        parser.error(f"--pretrain_rounds counts rounds: at least 1, got {args.pretrain_rounds}.")
    if args.finetune_rounds < 0:
        parser.error(f"--finetune_rounds counts rounds (0: no fine-tuning), got {args.finetune_rounds}.")
    if args.pretrained is not None and not args.finetune_rounds:
        parser.error("--pretrained is fine-tuned: give --finetune_rounds above 0.")
    finetuning_only = [option for option in FINETUNING_OPTIONS if option in given]
    if finetuning_only and not args.finetune_rounds:
        parser.error(f"--{', --'.join(finetuning_only)}: options of fine-tuning, which --finetune_rounds 0 skips.")
    if "backbone_training" in given and args.backbone_training == "lora" and not args.finetune_rounds:
        parser.error("--backbone_training lora trains adapters in fine-tuning: it needs --finetune_rounds above 0.")
    lora_trained = (args.pretrained is None and args.pretrain_backbone_training == "lora") or (
        args.finetune_rounds and args.backbone_training == "lora"
    )
    lora_options = [option for option in LORA_OPTIONS if option in given]
    if lora_options and not lora_trained:
        parser.error(f"--{', --'.join(lora_options)}: no stage trains LoRA adapters here.")
    if "content_documents" in given and args.no_content_steps:
        parser.error("--content_documents: no stage trains content documents with --no_content_steps.")
    if args.read_out_prefix_powers and args.read_out != "mean":
        parser.error(
            f"--read_out_prefix_powers weighs the mean read-out: it cannot go with --read_out {args.read_out}."
        )
    if args.search and args.early_stopping_patience is None:
        parser.error("--search compares trials that stop on validation: give --early_stopping_patience (or a recipe).")
    if not 1 <= args.history_permutations <= MAX_HISTORY_PERMUTATIONS:
        parser.error(f"--history_permutations takes 1 to {MAX_HISTORY_PERMUTATIONS}, got {args.history_permutations}.")
    try:  # what the package's own arguments refuse, refused before any stage trains
        if args.pretrained is None:
            pretraining_model_arguments(args)
            training_arguments(args, "pretraining", Path(args.output_dir))
        if args.finetune_rounds:
            training_arguments(args, "finetuning", Path(args.output_dir))
        if args.recommendation_prompt is not None:
            CLLM4RecConfig(recommendation_prompt=args.recommendation_prompt)
    except ValueError as error:
        parser.error(str(error))
    return args


# Both stages evaluate every round on validation and keep the best one.
SELECT_BEST_ROUND = {
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "load_best_model_at_end": True,
    "save_total_limit": 1,
}


def training_arguments(args, stage: str, output_dir: Path):
    """The training arguments of a stage of the run, `"pretraining"` or `"finetuning"`."""
    if stage == "pretraining":
        arguments_class, backbone_training = PretrainingArguments, args.pretrain_backbone_training
        stage_options = {
            "num_train_epochs": args.warmup_epochs + args.pretrain_rounds,
            "content_warmup_epochs": args.warmup_epochs,
            "learning_rate": args.pretrain_learning_rate,
            "collaborative_targets": args.collaborative_targets,
            "read_out_prefix_powers": args.read_out_prefix_powers,
        }
    else:
        arguments_class, backbone_training = FineTuningArguments, args.backbone_training
        stage_options = {"num_train_epochs": args.finetune_rounds, "learning_rate": args.finetune_learning_rate}
    if backbone_training == "lora":
        stage_options.update(lora_rank=args.lora_rank, lora_dropout=args.lora_dropout)
    searched = args.search and stage == "pretraining"  # each trial resumes from its own checkpoint, if it has one
    resume = args.resume and (searched or last_complete_checkpoint(str(output_dir)) is not None)
    return arguments_class(
        output_dir=str(output_dir),
        resume_from_checkpoint="true" if resume else None,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=512,
        lr_scheduler_type=args.lr_scheduler_type,
        warmup_steps=args.warmup_steps,
        weight_average_decay=args.weight_average_decay,
        weight_decay=args.weight_decay,
        seed=args.seed,
        early_stopping_patience=args.early_stopping_patience,
        id_embeddings_optimizer=args.id_embeddings_optimizer,
        item_softmax=args.item_softmax,
        train_sampling_strategy=args.train_sampling_strategy,
        content_documents=args.content_documents,
        content_steps=not args.no_content_steps,
        backbone_training=backbone_training,
        bf16=args.bf16,
        use_cpu=not torch.cuda.is_available(),
        logging_steps=100,
        logging_first_step=True,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=4 if torch.cuda.is_available() else 0,
        **SELECT_BEST_ROUND,
        **stage_options,
    )


def run_cllm4rec(args) -> tuple[dict[str, dict], float, dict[str, dict]]:
    """
    Per stage run ("pretraining", and "finetuning" unless `--finetune_rounds 0`): test metrics of the model of the
    best validation round (the pretrained model recommends the next item after the history), the same model's test
    metrics averaged over `--history_permutations` history orders where that is above 1, the validation metrics per
    round, and the training loss as logged (first step, then every 100). Rounds are selected with one pass per user.
    With `--pretrained`, the pretraining stage is that model's: its run's test metrics and logs. Also returns the
    wall time of this run, with `--resume` the training seconds of the earlier attempts included, and per stage how
    it was resumed ([`saved_stage`]; empty without `--resume`).
    """
    start = time.perf_counter()
    data_args = DataArguments(data=args.data)
    root = Path(args.output_dir) / args.name
    resumed = {}
    if args.pretrained is None:
        pretrained_dir = root / "pretrain"
        pretrained = saved_stage(args, "pretraining", pretrained_dir, resumed)
        if pretrained is None:
            pretrained = pretrain(args, data_args, pretrained_dir)
    else:
        pretrained_dir = Path(args.pretrained)
        pretrained = json.loads((pretrained_dir / TEST_RESULTS_NAME).read_text())
    stages = {"pretraining": stage_results(pretrained, pretrained_dir, CLLM4RecForCollaborativeLM, args)}
    if args.finetune_rounds:
        finetuned_dir = root / "finetune"
        metrics = saved_stage(args, "finetuning", finetuned_dir, resumed)
        if metrics is None:
            model_args = FineTuningModelArguments(
                pretrained=str(pretrained_dir),
                recommendation_prompt=args.recommendation_prompt,
                history_attention=args.history_attention,
            )
            metrics = run_finetuning(model_args, data_args, training_arguments(args, "finetuning", finetuned_dir))
        stages["finetuning"] = stage_results(metrics, finetuned_dir, CLLM4RecForItemPrediction, args)
    folders = {"pretraining": pretrained_dir, "finetuning": root / "finetune"}
    for stage, record in resumed.items():  # the seconds before this attempt, read once the stage has trained
        total, before = training_seconds(folders[stage])
        record["train_seconds_before"] = total if record["from"] == "saved model" else before
    earlier = sum(record["train_seconds_before"] for record in resumed.values())
    return stages, time.perf_counter() - start + earlier, resumed


def saved_stage(args, stage: str, folder: Path, resumed: dict[str, dict]) -> dict | None:
    """
    With `--resume`, the test metrics of a stage that an earlier attempt saved in `folder` (`None`: it trains, from
    its last complete checkpoint where it has one), and in `resumed[stage]` where it was taken up from.
    """
    if not args.resume:
        return None
    if (folder / TEST_RESULTS_NAME).is_file():
        resumed[stage] = {"from": "saved model"}
        return json.loads((folder / TEST_RESULTS_NAME).read_text())
    if args.search and stage == "pretraining":
        trials = [folder / f"trial-{index}" for index in range(math.prod(map(len, SEARCH_GRIDS["pretrain"].values())))]
        resumed[stage] = {"from": {trial.name: resumed_from(trial) for trial in trials}}
    else:
        resumed[stage] = {"from": resumed_from(folder)}
    return None


def resumed_from(folder: Path) -> str:
    """
    Where the training in `folder` resumes: "finished" for a search's trial that recorded its end, else the name of
    the last complete checkpoint, or "start" where there is none.
    """
    if (folder / SEARCH_TRIAL_NAME).is_file():
        return "finished"
    checkpoint = last_complete_checkpoint(str(folder))
    return "start" if checkpoint is None else Path(checkpoint).name


def training_seconds(folder: Path) -> tuple[float, float]:
    """
    The seconds that trained the model in `folder` over every attempt of its run (of every trial, where the run was a
    search), and those of the attempts before the last (0 for a run trained in one go, and for runs from before the
    trainer logged `total_train_runtime`).
    """
    if trials := search_trials(folder):
        if any("train_runtime_s" not in trial for trial in trials):
            raise SystemExit(f"{folder}: its search records no training seconds per trial.")
        before = sum(trial.get("train_runtime_before_resume_s", 0.0) for trial in trials)
        return sum(trial["train_runtime_s"] for trial in trials), before
    history = log_history(folder)
    clock = [entry for entry in history if "total_train_runtime" in entry]
    if clock:
        return clock[-1]["total_train_runtime"], clock[-1]["train_runtime_before_resume"]
    runtimes = [entry["train_runtime"] for entry in history if "train_runtime" in entry]
    if not runtimes:
        raise SystemExit(f"{folder}: its {TRAINER_STATE_NAME} logs no train_runtime (training did not end).")
    return runtimes[-1], 0.0


def pretraining_model_arguments(args) -> PretrainingModelArguments:
    """The model that pretraining builds."""
    return PretrainingModelArguments(
        backbone=args.backbone,
        tokenizer=args.tokenizer,
        random_init=args.random_init,
        backbone_overrides=args.backbone_overrides,
        backbone_dropout=args.backbone_dropout,
        lambda_v=args.lambda_v,
        id_embedding_dropout=args.id_embedding_dropout,
        id_embedding_init=args.id_embedding_init,
        untie_item_head=args.untie_item_head,
        item_bias=args.item_bias,
        read_out=args.read_out,
    )


def pretrain(args, data_args: DataArguments, output_dir: Path) -> dict[str, float]:
    """Pretrains (every trial of the grid with `--search`) into `output_dir`; returns the test metrics."""
    model_args = pretraining_model_arguments(args)
    pretraining_args = training_arguments(args, "pretraining", output_dir)
    if args.search:
        return run_search(model_args, data_args, pretraining_args, SEARCH_GRIDS["pretrain"])
    return run_pretraining(model_args, data_args, pretraining_args)


def pretrained_model_record(folder: Path) -> dict:
    """
    What a result records of the model that `--pretrained` names: where it lies, the arguments it was pretrained
    with (`RECORDED_PRETRAINING_ARGUMENTS`) and the seconds its training took: its run's (`training_seconds`), or the
    sum over the trials where that run was a search.
    """
    training = json.loads((folder / TRAINING_ARGS_NAME).read_text())
    runtime, _ = training_seconds(folder)
    return {
        "model": recorded_location(str(folder)),
        "training_arguments": {name: training.get(name) for name in RECORDED_PRETRAINING_ARGUMENTS},
        "train_runtime_s": runtime,
    }


def log_history(folder: Path) -> list[dict]:
    """The log of the run that trained the model in `folder`, from its trainer state."""
    return json.loads((folder / TRAINER_STATE_NAME).read_text())["log_history"]


def search_trials(folder: Path) -> list[dict]:
    """The trials of the search that trained the model in `folder` (its `recipe.json`); none where it was no search."""
    recipe_file = folder / RECIPE_NAME
    return json.loads(recipe_file.read_text()).get("search", []) if recipe_file.is_file() else []


def stage_results(test_metrics: dict, output_dir: Path, model_class: type, args) -> dict:
    history = log_history(output_dir)
    results = {
        "test": {key.removeprefix("test_"): value for key, value in test_metrics.items()},
        "validation_per_round": [entry for entry in history if "eval_recall@20" in entry],
        "training_loss": [
            {key: entry[key] for key in ("step", "epoch", "loss", "learning_rate")}
            for entry in history
            if "loss" in entry
        ],
    }
    # the powers of the mean read-out tried on validation after training, and the one kept
    if choice := read_out_prefix_power_scores(history):
        results["read_out_prefix_powers"] = {f"{power:g}": score for power, score in choice.items()}
        results["read_out_prefix_power"] = json.loads((output_dir / CONFIG_NAME).read_text())["read_out_prefix_power"]
    if trials := search_trials(output_dir):
        results["search"] = trials  # every trial's settings, best validation score, rounds, seconds, whether kept
    if args.history_permutations > 1:
        model = model_class.from_pretrained(output_dir).to("cuda" if torch.cuda.is_available() else "cpu")
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=args.bf16):  # as the Trainer evaluates
            results["test_over_history_orders"] = evaluate_model(
                model,
                CLLM4RecTokenizer.from_pretrained(output_dir),
                load_data(DataArguments(data=args.data)),
                "test",
                batch_size=512,
                max_length=default_max_length(model.config),
                history_permutations=args.history_permutations,
            )
    return results


def plot(validation: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for stage, entries in validation.items():
        recalls = [entry["eval_recall@20"] for entry in entries]
        axis.plot(range(1, len(recalls) + 1), recalls, marker="o", label=stage)
    axis.set_xlabel("round")
    axis.set_ylabel("validation Recall@20")
    axis.set_title(title)
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(args: argparse.Namespace | None = None) -> None:
    """Runs what the options (default: the command line's, as `parse_args` reads them) describe."""
    args = parse_args() if args is None else args
    apply_cudnn_attention_option(args)
    commit = git_commit()
    pretrained = None if args.pretrained is None else pretrained_model_record(Path(args.pretrained))
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    stages, wall, resumed = run_cllm4rec(args)
    for stage, results in stages.items():
        print(f"CLLM4Rec ({args.name}), {stage}: {results['test']}")
        if "test_over_history_orders" in results:
            print(f"  over {args.history_permutations} history orders: {results['test_over_history_orders']}")
    print(f"[{wall:.0f} s]")
    baselines = run_baselines_on_data(args.data, args.baselines.split(",")) if args.baselines else {}
    for name, baseline in baselines.items():
        print(f"{name}: {baseline['test']}")
    validation = {stage: results["validation_per_round"] for stage, results in stages.items()}
    plot(validation, results_dir / f"quality-{args.name}.png", f"CLLM4Rec {args.name}: validation Recall@20")
    configuration = recorded_arguments(args)
    if args.pretrained is not None:  # pretraining's options describe no part of this run
        configuration = {key: value for key, value in configuration.items() if key not in PRETRAINING_OPTIONS}
    result = {
        "benchmark": "quality",
        "name": args.name,
        "data": recorded_location(args.data),
        "configuration": configuration,
        "cllm4rec": {**stages.get("finetuning", {"test": None}), "wall_s": wall},
        "cllm4rec_pretrained": stages["pretraining"],
        **({"pretrained": pretrained} if pretrained is not None else {}),
        **({"resumed": resumed} if args.resume else {}),
        "baselines": baselines,
    }
    print(f"wrote {write_result(results_dir / f'quality-{args.name}.json', result, commit)}")


if __name__ == "__main__":
    main()
