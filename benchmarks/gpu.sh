#!/usr/bin/env bash
# The GPU figures of the README's Results in one command, on one GPU:
#
#   bash benchmarks/gpu.sh SMOLLM2_FOLDER [GPT2_TOKENIZER]
#
# SMOLLM2_FOLDER: SmolLM2-135M(-Instruct) as a local folder or Hub name; GPT2_TOKENIZER: GPT-2's tokenizer (default
# `gpt2` from the Hub). Needs the paper's Beauty split prepared in data/beauty (README, Use, step 1), or another
# prepared folder in DATA. Writes {speed,quality}-*-<gpu>.json (and the quality runs' PNGs) to benchmarks/results,
# or to RESULTS; `python benchmarks/report.py` then regenerates the README tables. Sized for about eight minutes on
# one H100 or H200 (an estimate from the earlier H200 speed files); QUALITY_LIMIT caps each quality run's seconds
# (default 380), so that the whole ends in a known time.
#
# 1. speed of every stage, GPT-2 small's shape (random weights) and SmolLM2-135M, cuDNN's attention kernel off,
#    prediction batches capped at 65,536 padded tokens, content epochs timed on 32,768 documents: the two runs one
#    after the other, alone on the GPU;
# 2. quality, SmolLM2-135M, two runs side by side, each early-stopped on validation (patience 3) and tested in one
#    pass and over 8 history orders: the `smollm2` recipe as shipped (at most 12 rounds here), and the same with what
#    a CPU cannot afford: item content documents in every round (one content epoch first) and the mutual
#    regularization between the two sides (at most 8 rounds).
set -euo pipefail
cd "$(dirname "$0")/.."
smollm2=${1:?usage: bash benchmarks/gpu.sh SMOLLM2_FOLDER [GPT2_TOKENIZER]}
gpt2_tokenizer=${2:-gpt2}
data=${DATA:-data/beauty}
results=${RESULTS:-benchmarks/results}
limit=${QUALITY_LIMIT:-380}
gpu=$(python -c "import torch; print(torch.cuda.get_device_name().split()[-1].lower())")

speed=(--data "$data" --eval_batch_size 8192 --eval_max_tokens 65536 --sample 32768 --no_cudnn_attention)
python benchmarks/speed.py "${speed[@]}" --backbone gpt2 --random_init --tokenizer "$gpt2_tokenizer" \
  --output "$results/speed-gpt2-small-tokens65536-no-cudnn-$gpu.json"
python benchmarks/speed.py "${speed[@]}" --backbone "$smollm2" \
  --output "$results/speed-smollm2-tokens65536-no-cudnn-$gpu.json"

quality=(--data "$data" --backbone "$smollm2" --baselines popularity --history_permutations 8 --no_cudnn_attention
  --output_dir runs/quality --results_dir "$results")
timeout "$limit" python benchmarks/quality.py "${quality[@]}" --recipe smollm2 --pretrain_rounds 12 \
  --name "beauty-smollm2-recipe-$gpu" &
timeout "$limit" python benchmarks/quality.py "${quality[@]}" --name "beauty-smollm2-recipe-content-regularized-$gpu" \
  --warmup_epochs 1 --pretrain_rounds 8 --finetune_rounds 0 --content_documents item --lambda_v 1 \
  --batch_size 32 --pretrain_learning_rate 1e-3 --weight_decay 0.3 --weight_average_decay 0.998 \
  --id_embedding_init vocabulary --id_embedding_dropout 0.3 --untie_item_head --pretrain_backbone_training lora \
  --train_sampling_strategy group_by_length --early_stopping_patience 3 &
status=0
wait -n || status=$?
wait -n || status=$?
exit "$status"
