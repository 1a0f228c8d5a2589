#!/usr/bin/env python
r"""Fine-tuning (from a DINO backbone), linear probe, or fully supervised training on Sewer-ML.

    accelerate launch recipes/finetune.py --config recipes/configs/vit_tiny_finetune.yaml \
        --backbone runs/dino_vit_tiny/backbone --data /data/sewer-ml --fraction 0.1

`--backbone none` trains from scratch; `--linear_probe` freezes the backbone. Every field of
`sewer_hf.config.FinetuneConfig` can be set in the YAML file or as `--key value` (`--help`).
The loop lives in `sewer_hf.train.finetune`.
"""
import sys

from sewer_hf.config import FinetuneConfig
from sewer_hf.train.finetune import finetune
from sewer_hf.train.recipe import run_recipe

if __name__ == "__main__":
    sys.exit(run_recipe(FinetuneConfig, finetune, sys.argv[1:], __doc__))
