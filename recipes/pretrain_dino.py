#!/usr/bin/env python
r"""DINO pretraining of ViT-T/16 or ViT-S/16 on Sewer-ML (or any image dataset).

    accelerate launch recipes/pretrain_dino.py --config recipes/configs/vit_tiny_dino.yaml \
        --data /data/sewer-ml --output_dir runs/dino_vit_tiny [--key value ...]

Every field of `sewer_hf.config.PretrainConfig` can be set in the YAML file or overridden as
`--key value` (`--help` lists them with their defaults). The algorithm lives in
`sewer_hf.train.pretrain`; this script only parses the configuration.
"""
import sys

from sewer_hf.config import PretrainConfig
from sewer_hf.train.pretrain import pretrain
from sewer_hf.train.recipe import run_recipe

if __name__ == "__main__":
    sys.exit(run_recipe(PretrainConfig, pretrain, sys.argv[1:], __doc__))
