"""
CLLM4Rec recommendation-oriented fine-tuning: masked-history prompts, multinomial likelihood of the held-out items,
content epochs interleaved, the best round kept by validation Recall@20 + Recall@40 + NDCG@100.

    accelerate launch examples/finetune.py --recipe paper \
        --data data/beauty --pretrained runs/beauty-pretrain --output_dir runs/beauty-finetune

`--recipe` (`paper`, `small-cpu`, the default, or `smollm2`) sets the defaults of the options; options given
explicitly win (`training/presets.py`), and the command line is read as `cllm4rec finetune` reads it (`--search`
included). Every epoch is a round (one fine-tuning and, with content steps, one content epoch). The best model,
tokenizer, id mappings and test metrics are saved to `--output_dir` by the main process; `--push_to_hub` pushes them.
"""

import sys

from hf_cllm4rec.cli.train import run_stage

if __name__ == "__main__":
    # the command line of `cllm4rec finetune`: the recipe's defaults, the options given, one-line usage errors
    run_stage("finetune", sys.argv[1:], prog="examples/finetune.py")
