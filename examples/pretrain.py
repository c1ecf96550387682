"""
CLLM4Rec pretraining: mutual-regularized collaborative and content language modelling of user/item tokens.

    python examples/pretrain.py --data data/beauty --output_dir runs/beauty-pretrain          # --recipe small-cpu
    accelerate launch examples/pretrain.py --recipe paper --data data/beauty --output_dir runs/beauty-pretrain

`--recipe` (`paper`, `small-cpu`, the default, or `smollm2`) sets the defaults of the options; options given
explicitly win (`training/presets.py`), and the command line is read as `cllm4rec pretrain` reads it (`--search`
included). Single CPU or GPU: `python examples/pretrain.py ...`; several GPUs: `accelerate launch --config_file
examples/accelerate_configs/multi_gpu.yaml examples/pretrain.py ...`. Every epoch is a round (one collaborative and
one content epoch) except the first `--content_warmup_epochs`, which train content documents only. The model,
tokenizer, id mappings and test metrics are saved to `--output_dir` by the main process; `--push_to_hub` pushes them.
"""

import sys

from hf_cllm4rec.cli.train import run_stage

if __name__ == "__main__":
    # the command line of `cllm4rec pretrain`: the recipe's defaults, the options given, one-line usage errors
    run_stage("pretrain", sys.argv[1:], prog="examples/pretrain.py")
