"""`sewer-hf synth`: write a synthetic Sewer-ML dataset (see `dataset.generate_dataset`)."""
from __future__ import annotations

import argparse

from sewer_hf.synth.dataset import generate_dataset


def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory (images and SewerML_{Train,Val}.csv)")
    parser.add_argument("--train", type=int, default=1000, help="training frames (default 1000)")
    parser.add_argument("--val", type=int, default=200, help="validation frames (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="same seed -> byte-identical output (default 0)")
    parser.add_argument("--size", default=None, metavar="WxH",
                        help="one frame size, e.g. 352x288; default: a mix of the real Sewer-ML sizes")
    parser.add_argument("--workers", type=int, default=1, help="processes (output does not depend on it)")
    parser.add_argument("--defect-fraction", type=float, default=None, metavar="F",
                        help="share of frames with a defect, 0..1 (default: the real share, about 0.47)")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    summary = generate_dataset(args.out, args.train, args.val, seed=args.seed, size=args.size,
                               workers=args.workers, progress=not args.no_progress,
                               defect_fraction=args.defect_fraction, overwrite=args.overwrite)
    for split, info in summary["splits"].items():
        print(f"{split}: {info['frames']} frames ({info['normal']} normal) -> {info['annotations']}")
    return 0
