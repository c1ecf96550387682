#!/usr/bin/env bash
# The GPU figures of the README's Results in one command, on one GPU:
#
#   bash benchmarks/gpu.sh SMOLLM2_FOLDER [GPT2_TOKENIZER]
#
# SMOLLM2_FOLDER: SmolLM2-135M(-Instruct) as a local folder or Hub name; GPT2_TOKENIZER: GPT-2's tokenizer (default
# `gpt2` from the Hub). Needs the paper's Beauty split prepared in data/beauty (README, Use, step 1), or another
# prepared folder in DATA. Writes {speed,quality}-*-<gpu>.json (and the quality runs' PNGs) to benchmarks/results,
# or to RESULTS; `python benchmarks/report.py` then regenerates the README tables. Sized for about ten minutes on one
# H100 or H200, going by the speed files already there.
#
# 1. speed of every stage, GPT-2 small's shape (random weights) and SmolLM2-135M, prediction batches capped at
#    65,536 padded tokens: the two runs one after the other, alone on the GPU (a few minutes together);
# 2. quality, SmolLM2-135M, two runs side by side: the paper's configuration on a shortened schedule (one content
#    warm-up epoch as long as a round, 3 pretraining and 2 fine-tuning rounds, batch 256 instead of 20), and the best
#    CPU recipe (LoRA adapters from the start, vocabulary-drawn IDs with their own item head and dropout 0.3,
#    documents grouped by length, batch 32, learning rate 2e-3 decaying linearly over 6 epochs, weight decay 0.3,
#    tested over 8 history orders as well) with what a CPU cannot afford: item content documents in every round and
#    the mutual regularization between the two sides.
set -euo pipefail
cd "$(dirname "$0")/.."
smollm2=${1:?usage: bash benchmarks/gpu.sh SMOLLM2_FOLDER [GPT2_TOKENIZER]}
gpt2_tokenizer=${2:-gpt2}
data=${DATA:-data/beauty}
results=${RESULTS:-benchmarks/results}
gpu=$(python -c "import torch; print(torch.cuda.get_device_name().split()[-1].lower())")

prediction=(--eval_batch_size 8192 --eval_max_tokens 65536)
python benchmarks/speed.py --data "$data" --backbone gpt2 --random_init --tokenizer "$gpt2_tokenizer" \
  "${prediction[@]}" --output "$results/speed-gpt2-small-tokens65536-$gpu.json"
python benchmarks/speed.py --data "$data" --backbone "$smollm2" \
  "${prediction[@]}" --output "$results/speed-smollm2-tokens65536-$gpu.json"

quality=(--data "$data" --backbone "$smollm2" --baselines popularity --output_dir runs/quality
  --results_dir "$results")
python benchmarks/quality.py "${quality[@]}" --paper --name "beauty-smollm2-paper-short-$gpu" \
  --warmup_epochs 1 --pretrain_rounds 3 --finetune_rounds 2 --batch_size 256 &
python benchmarks/quality.py "${quality[@]}" \
  --name "beauty-smollm2-untied-vocab-lora-grouped-b32-linear-wd03-ema0998-iddrop03-hp8-item-6rounds-$gpu" \
  --warmup_epochs 1 --pretrain_rounds 6 --finetune_rounds 0 --content_documents item --batch_size 32 \
  --pretrain_learning_rate 2e-3 --lr_scheduler_type linear --weight_decay 0.3 --weight_average_decay 0.998 \
  --id_embedding_init vocabulary --id_embedding_dropout 0.3 --untie_item_head --pretrain_backbone_training lora \
  --train_sampling_strategy group_by_length --history_permutations 8 &
wait -n && wait -n
