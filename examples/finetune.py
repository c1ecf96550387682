"""
CLLM4Rec recommendation-oriented fine-tuning: masked-history prompts, multinomial likelihood of the held-out items,
content epochs interleaved, the best round kept by validation Recall@20 + Recall@40 + NDCG@100.

    accelerate launch examples/finetune.py \
        --data data/beauty --pretrained runs/beauty-pretrain --output_dir runs/beauty-finetune \
        --num_train_epochs 150 --per_device_train_batch_size 20 --learning_rate 1e-4 \
        --eval_strategy epoch --save_strategy epoch --load_best_model_at_end --save_total_limit 2

Every epoch is a round (one fine-tuning and one content epoch). The best model, tokenizer, id mappings and test
metrics are saved to `--output_dir` by the main process; `--push_to_hub` pushes them.
"""

from accelerate import PartialState
from transformers import HfArgumentParser

from hf_cllm4rec.training import FineTuningArguments
from hf_cllm4rec.training.recipes import DataArguments, FineTuningModelArguments, results_summary, run_finetuning


def main() -> None:
    parser = HfArgumentParser((FineTuningModelArguments, DataArguments, FineTuningArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    metrics = run_finetuning(model_args, data_args, training_args)
    PartialState().destroy_process_group()  # a clean exit for every process of `accelerate launch`
    if training_args.should_log:
        print(results_summary(metrics, training_args.output_dir))


if __name__ == "__main__":
    main()
