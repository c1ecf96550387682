"""
CLLM4Rec pretraining: mutual-regularized collaborative and content language modelling of user/item tokens.

    accelerate launch examples/pretrain.py \
        --data data/beauty --backbone gpt2 --output_dir runs/beauty-pretrain \
        --num_train_epochs 100 --content_warmup_epochs 10 --per_device_train_batch_size 20 --learning_rate 1e-3

Single CPU or GPU: `python examples/pretrain.py ...`; several GPUs: `accelerate launch --config_file
examples/accelerate_configs/multi_gpu.yaml examples/pretrain.py ...`. `--num_train_epochs` counts rounds (one
collaborative and one content epoch each). The model, tokenizer, id mappings and test metrics are saved to
`--output_dir` by the main process; `--push_to_hub` pushes them.
"""

from accelerate import PartialState
from transformers import HfArgumentParser

from hf_cllm4rec.training import CLLM4RecTrainingArguments
from hf_cllm4rec.training.recipes import DataArguments, ModelArguments, run_pretraining


def main() -> None:
    parser = HfArgumentParser((ModelArguments, DataArguments, CLLM4RecTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    run_pretraining(model_args, data_args, training_args)
    PartialState().destroy_process_group()  # a clean exit for every process of `accelerate launch`


if __name__ == "__main__":
    main()
