"""
CLLM4Rec pretraining: mutual-regularized collaborative and content language modelling of user/item tokens.

    accelerate launch examples/pretrain.py \
        --data data/beauty --backbone gpt2 --output_dir runs/beauty-pretrain \
        --num_train_epochs 110 --content_warmup_epochs 10 --per_device_train_batch_size 20 --learning_rate 1e-3

Single CPU or GPU: `python examples/pretrain.py ...`; several GPUs: `accelerate launch --config_file
examples/accelerate_configs/multi_gpu.yaml examples/pretrain.py ...`. Every epoch is a round (one collaborative and
one content epoch) except the first `--content_warmup_epochs`, which train content documents only. The model,
tokenizer, id mappings and test metrics are saved to `--output_dir` by the main process; `--push_to_hub` pushes them.
"""

from accelerate import PartialState
from transformers import HfArgumentParser

from hf_cllm4rec.training import PretrainingArguments
from hf_cllm4rec.training.recipes import DataArguments, PretrainingModelArguments, results_summary, run_pretraining


def main() -> None:
    parser = HfArgumentParser((PretrainingModelArguments, DataArguments, PretrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    metrics = run_pretraining(model_args, data_args, training_args)
    PartialState().destroy_process_group()  # a clean exit for every process of `accelerate launch`
    if training_args.should_log:
        print(results_summary(metrics, training_args.output_dir))


if __name__ == "__main__":
    main()
