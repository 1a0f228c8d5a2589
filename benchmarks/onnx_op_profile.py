#!/usr/bin/env python
"""Where an ONNX model's CPU time goes, by operator type (ONNX Runtime's own profiler).

    python benchmarks/onnx_op_profile.py runs/quickstart/ssl_finetune/classifier/model.int8.onnx
    python benchmarks/onnx_op_profile.py MODEL.onnx --threads 1 --batch 16 --runs 4
    python benchmarks/onnx_op_profile.py            # inference_cpu.py's random ViT-T/16 at 224 px, int8

Random inputs at the model's input size (a fixed batch). Prints img/s (slowed by profiling) and
each operator type's share of the node time.
"""
from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path


def _benchmark_int8_model(folder: Path) -> Path:
    """inference_cpu.py's random-weight classifier, exported and quantized as `export-onnx` does."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from inference_cpu import _make_inputs

    from sewer_hf.inference.onnx import export_onnx
    from sewer_hf.inference.quantize import export_int8

    model_dir, _ = _make_inputs(folder, 0)
    return export_int8(model_dir, export_onnx(model_dir), "dynamic", frames=16)[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None,
                        help="an .onnx file (default: int8 export of a random-weight ViT-T/16 at 224 px)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (1: as in a lane)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--runs", type=int, default=4, help="profiled runs, after 2 warm-up runs")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--quick", action="store_true", help="no-op (one run is already quick)")
    args = parser.parse_args(argv)

    import numpy as np

    from sewer_hf.inference.onnx import onnx_session

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else _benchmark_int8_model(Path(tmp))
        session = onnx_session(model, args.threads, profile_prefix=str(Path(tmp) / "profile"))  # as predict/scan run it
        first = session.get_inputs()[0]
        size = [d if isinstance(d, int) else args.batch for d in first.shape]
        x = np.random.default_rng(0).standard_normal(size, dtype=np.float32)
        for _ in range(2):
            session.run(None, {first.name: x})
        t0 = time.perf_counter()
        for _ in range(args.runs):
            session.run(None, {first.name: x})
        rate = args.runs * size[0] / (time.perf_counter() - t0)
        events = json.loads(Path(session.end_profiling()).read_text())
    by_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
    total = sum(by_op.values()) or 1
    print(f"{args.model or 'random ViT-T/16, 224 px, int8 dynamic'}: {rate:.1f} img/s while profiled ({args.threads} thread(s), batch {size[0]})")
    for op, dur in by_op.most_common(args.top):
        print(f"  {op:28s} {100 * dur / total:5.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
