"""int8 inference with ONNX Runtime and the accuracy checks shipped with a model, written by the
``sewer-hf export-onnx`` command (this module's ``run_export_onnx``); reading the checks and the
per-machine choice of precision (``--precision auto``) are ``sewer_hf.inference.precision``'s.

``sewer-hf export-onnx --int8 dynamic`` (the default) writes, next to ``model.onnx``:

* ``model.int8.onnx``: the fp32 graph with the weights of every MatMul/Gemm quantized to int8
  (ONNX Runtime's ``quantize_dynamic``: activations are quantized per batch at run time, so no
  calibration data is needed). ``--int8 static`` instead calibrates activation ranges on
  synthetic frames (``quantize_static``, QDQ, MatMul/Gemm only). Weights use ``reduce_range``
  (7-bit): on AVX2 CPUs without VNNI the u8 x s8 multiply-add saturates at full range.
* ``model.int8.check.json``: the accuracy check. On held-out frames (synthetic frames from a
  seed no training set uses, or ``--check-data`` a labelled Sewer-ML root), the int8 scores are
  compared with the fp32 ones: max and mean |Δscore|, the share of (frame, class) decisions
  that flip at the shipped thresholds, and F2_CIW / F1_Normal of both at those thresholds. int8
  **passes** when neither F2_CIW nor F1_Normal falls by more than ``BOUND_POINTS`` (0.5 points);
  the check records the SHA-256 of the int8 file it measured, so a replaced file is unchecked.

``predict``, ``scan`` and the Space run int8 only when its check passed: ``--precision int8``
with a failed or missing check is an error that says which; ``--precision auto`` times, once per
machine (cached in ``$SEWER_HF_CACHE/precision_choice.json``), the precisions that are allowed
here and keeps the fastest: fp32, int8 (if passed) and bf16 weights, only on a CPU with native
bf16 (AVX512-BF16 or AMX) and only if their own check (``model.bf16.check.json``, written by
``export-onnx`` next to the weights, same frames and bound) passed; on AVX2 alone bf16 weights
ran 6x slower than fp32.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from sewer_hf.atomic import write_json_atomically
from sewer_hf.data import load_sewer_ml
from sewer_hf.errors import ConfigError, DataError
from sewer_hf.feed.machine import cpu_features, native_bf16
from sewer_hf.inference.onnx import (
    DEFAULT_OPSET,
    ONNX_FILENAME,
    PARITY_TOLERANCE,
    export_onnx,
    onnx_session,
    require_onnxruntime,
)
from sewer_hf.inference.precision import (
    BF16_CHECK_FILE,
    WEIGHTS_FILE,
    check_path,
    int8_path,
    sha256,
)
from sewer_hf.inference.predict import SewerClassifier
from sewer_hf.metrics import compute_metrics
from sewer_hf.synth import render_frame, sample_labels

INT8_METHODS = ("dynamic", "static")
DEFAULT_INT8_METHOD = "dynamic"
BOUND_POINTS = 0.5  # int8 is offered when F2_CIW and F1_Normal each drop by at most this (points)
# Enough frames that one changed decision moves the metrics well below the bound: on 256 frames
# one "normal" frame flipped moves F1_Normal by ~0.6 points, so a trained model whose scores moved
# by at most 0.006 failed its int8 check (and 0.003 its bf16 check); on 1,024 the same models
# passed (-0.25 / -0.23 points). ~45 s for a 64-px model on 2 cores, done once per export.
CHECK_FRAMES = 1024
CHECK_SEED = 1717  # held out: the synthetic datasets and the quickstart use other seeds
CALIBRATION_SEED = 1718  # static calibration frames, disjoint from the check frames
CALIBRATION_FRAMES = 64
CHECK_FRAME_SIZE = (352, 288)


# ------------------------------------------------------------------------------------------------
# Frames: held-out check frames and calibration frames
# ------------------------------------------------------------------------------------------------

def synthetic_frames(classifier, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, H, W) uint8 at the model's size and (N, 17) labels: procedural frames with label sets
    drawn from the real Sewer-ML co-occurrence (``sewer_hf.synth``), resized as ``predict`` does."""
    import torch

    rng = np.random.default_rng(seed)
    pixels, targets = [], []
    for _ in range(n):
        labels, water = sample_labels(rng)
        pixels.append(classifier.resized(render_frame(labels, water, CHECK_FRAME_SIZE, rng)))
        targets.append(labels)
    return torch.stack(pixels).numpy(), np.asarray(targets, dtype=np.int64)


def labelled_frames(classifier, data: str, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` frames spread evenly over a labelled Sewer-ML split (root or prepared shards)."""
    import torch

    ds = load_sewer_ml(data, split)
    if len(ds) == 0:
        raise DataError(f"--check-data {data}: split {split} has no rows")
    idx = np.unique(np.linspace(0, len(ds) - 1, min(n, len(ds))).astype(int))
    rows = ds.select(idx.tolist())
    pixels = [classifier.resized(im) for im in rows["image"]]
    return torch.stack(pixels).numpy(), np.asarray(rows["labels"], dtype=np.int64)


def check_frames(classifier, check_data: Optional[str], check_split: str, frames: int) -> tuple[np.ndarray, np.ndarray, str]:
    """The held-out frames of an accuracy check: (uint8 pixels, labels, where they come from)."""
    if check_data:
        uint8, targets = labelled_frames(classifier, check_data, check_split, frames)
        return uint8, targets, f"{check_data} split {check_split}, {len(targets)} frames spread over the split"
    uint8, targets = synthetic_frames(classifier, frames, CHECK_SEED)
    return uint8, targets, (f"synthetic (sewer_hf.synth, seed {CHECK_SEED}, {CHECK_FRAME_SIZE[0]}x"
                            f"{CHECK_FRAME_SIZE[1]}); pass --check-data for real held-out frames")


# ------------------------------------------------------------------------------------------------
# Quantization
# ------------------------------------------------------------------------------------------------

def quantize_int8(onnx_path: str | Path, out: str | Path, method: str = DEFAULT_INT8_METHOD,
                  calibration: Optional[np.ndarray] = None) -> Path:
    """Write the int8 graph of ``onnx_path`` to ``out``. ``calibration`` (float pixel values,
    (N, 3, H, W)) is needed by ``method="static"``."""
    import logging

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if method not in INT8_METHODS:
        raise ConfigError(f"int8 method {method!r}: expected one of {INT8_METHODS}")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "consider pre-processing" warnings on every call
    try:
        if method == "dynamic":
            quantize_dynamic(str(onnx_path), str(out), op_types_to_quantize=["MatMul", "Gemm"],
                             weight_type=QuantType.QInt8, reduce_range=True)
        else:
            from onnxruntime.quantization import CalibrationDataReader

            if calibration is None or len(calibration) == 0:
                raise ConfigError("static int8 quantization needs calibration frames")

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self._it = iter([{"pixel_values": calibration[i:i + 8]} for i in range(0, len(calibration), 8)])

                def get_next(self):
                    return next(self._it, None)

            quantize_static(str(onnx_path), str(out), Reader(), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["MatMul", "Gemm"], activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, reduce_range=True)
    finally:
        root.setLevel(level)
    return Path(out)


def _session_scores(path: Path, pixel_values: np.ndarray, threads: Optional[int] = None, batch: int = 32) -> np.ndarray:
    session = onnx_session(path, threads)
    logits = np.concatenate([session.run(["logits"], {"pixel_values": pixel_values[i:i + batch]})[0]
                             for i in range(0, len(pixel_values), batch)])
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


def compare_scores(reference: np.ndarray, candidate: np.ndarray, targets: np.ndarray,
                   thresholds: Sequence[float], bound_points: float = BOUND_POINTS) -> dict:
    """The accuracy check of ``candidate`` scores against the fp32 ``reference`` on labelled frames."""

    thresholds = [float(t) for t in thresholds]
    ref = compute_metrics(reference, targets, thresholds)
    got = compute_metrics(candidate, targets, thresholds)
    th = np.asarray(thresholds)[None, :]
    delta = {k: round(100 * (got[k] - ref[k]), 4) for k in ("F2_CIW", "F1_Normal")}
    passed = all(d >= -bound_points for d in delta.values())
    return {
        "frames": int(len(targets)),
        "max_abs_score_diff": float(np.abs(candidate - reference).max()),
        "mean_abs_score_diff": float(np.abs(candidate - reference).mean()),
        "decisions_changed": float(((candidate >= th) != (reference >= th)).mean()),
        "fp32": {k: round(100 * ref[k], 4) for k in ("F2_CIW", "F1_Normal")},
        "candidate": {k: round(100 * got[k], 4) for k in ("F2_CIW", "F1_Normal")},
        "delta_points": delta,
        "bound_points": bound_points,
        "passed": bool(passed),
    }


def export_int8(model_dir: str | Path, onnx_path: str | Path, method: str = DEFAULT_INT8_METHOD,
                check_data: Optional[str] = None, check_split: str = "Val", frames: int = CHECK_FRAMES,
                threads: Optional[int] = None) -> tuple[Path, dict]:
    """Quantize ``onnx_path`` (fp32) to int8 next to it and write the accuracy check.
    Returns (int8 path, check dict)."""
    import torch

    if frames < 1:
        raise ConfigError(f"check frames={frames}: expected a positive number of frames")
    onnx_path = Path(onnx_path)
    fp32 = SewerClassifier(model_dir, backend="onnx", onnx_path=onnx_path, threads=threads)
    out = int8_path(onnx_path)
    calibration = None
    if method == "static":
        cal_uint8, _ = synthetic_frames(fp32, CALIBRATION_FRAMES, CALIBRATION_SEED)
        calibration = fp32.pixel_values(torch.from_numpy(cal_uint8)).numpy()
    t0 = time.perf_counter()
    quantize_int8(onnx_path, out, method, calibration)
    quantize_s = time.perf_counter() - t0
    uint8, targets, source = check_frames(fp32, check_data, check_split, frames)
    pixel_values = fp32.pixel_values(torch.from_numpy(uint8)).numpy()
    reference = _session_scores(onnx_path, pixel_values, threads)
    candidate = _session_scores(out, pixel_values, threads)
    check = compare_scores(reference, candidate, targets, fp32.thresholds)
    check.update({"precision": "int8", "method": method, "frames_source": source, "int8_file": out.name,
                  "int8_sha256": sha256(out), "fp32_file": onnx_path.name, "quantize_s": round(quantize_s, 2),
                  "rule": f"int8 passes when F2_CIW and F1_Normal at the shipped thresholds each drop by "
                          f"at most {BOUND_POINTS} points vs fp32 on these frames"})
    write_json_atomically(check, check_path(onnx_path))
    return out, check


def export_bf16_check(model_dir: str | Path, check_data: Optional[str] = None, check_split: str = "Val",
                      frames: int = CHECK_FRAMES, threads: Optional[int] = None) -> tuple[Path, dict]:
    """The accuracy check of bf16 weights (PyTorch, cast at load time) against fp32, on the same
    held-out frames and with the same bound as int8's; written to ``<model_dir>/model.bf16.check.json``
    and tied to the SHA-256 of the weights. ``--precision auto`` may then time bf16 on a CPU with
    native bf16. Returns (check path, check dict)."""
    import torch

    if frames < 1:
        raise ConfigError(f"check frames={frames}: expected a positive number of frames")
    model_dir = Path(model_dir)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise DataError(f"{model_dir}: no {WEIGHTS_FILE}; expected an exported classifier/ folder")
    fp32 = SewerClassifier(model_dir, device="cpu", backend="torch", precision="fp32", threads=threads)
    bf16 = SewerClassifier(model_dir, device="cpu", backend="torch", precision="bf16", threads=threads)
    uint8, targets, source = check_frames(fp32, check_data, check_split, frames)
    batches = [torch.from_numpy(uint8[i:i + 32]) for i in range(0, len(uint8), 32)]
    reference = np.concatenate([fp32.scores_from_uint8(b) for b in batches]).astype(np.float64)
    candidate = np.concatenate([bf16.scores_from_uint8(b) for b in batches]).astype(np.float64)
    check = compare_scores(reference, candidate, targets, fp32.thresholds)
    check.update({"precision": "bf16", "frames_source": source, "weights_file": WEIGHTS_FILE,
                  "weights_sha256": sha256(weights), "checked_on": cpu_features(),
                  "rule": f"bf16 weights pass when F2_CIW and F1_Normal at the shipped thresholds each drop by "
                          f"at most {BOUND_POINTS} points vs fp32 on these frames; auto times them only on a "
                          f"CPU with native bf16"})
    path = model_dir / BF16_CHECK_FILE
    write_json_atomically(check, path)
    return path, check


# ------------------------------------------------------------------------------------------------
# What a machine may run, and what it runs fastest
# ------------------------------------------------------------------------------------------------


def add_export_onnx_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="exported classifier folder (runs/.../classifier)")
    parser.add_argument("--out", default=None, help=f"ONNX file (default: <model>/{ONNX_FILENAME}, "
                                                    "where `sewer-hf predict --backend onnx` finds it)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip the ONNX Runtime vs PyTorch logits check")
    parser.add_argument("--int8", choices=("dynamic", "static", "none"), default="dynamic",
                        help="also write <out>.int8.onnx: dynamic (int8 MatMul/Gemm weights, default), static "
                             "(activation ranges calibrated on synthetic frames) or none; with its accuracy check")
    parser.add_argument("--check-data", default=None,
                        help="labelled Sewer-ML root for the int8 accuracy check (default: held-out synthetic frames)")
    parser.add_argument("--check-split", default="Val", help="split of --check-data (default Val)")
    parser.add_argument("--check-frames", type=int, default=None, help=f"frames in the accuracy check (default {CHECK_FRAMES})")
    parser.add_argument("--bf16-check", choices=("auto", "yes", "no"), default="auto",
                        help="also check bf16 weights against fp32 on the same frames (<model>/model.bf16.check.json; "
                             "--precision auto then times bf16 on CPUs with native bf16). auto (default): yes on a "
                             "CPU with native bf16; elsewhere bf16 runs ~6x slower than fp32 and is never picked, "
                             "so the check is left out unless asked for (yes: ship it with the model)")
    parser.set_defaults(func=run_export_onnx)


def run_export_onnx(args: argparse.Namespace) -> int:
    frames = CHECK_FRAMES if args.check_frames is None else args.check_frames
    if (args.int8 != "none" or args.bf16_check == "yes") and frames < 1:
        raise ConfigError(f"--check-frames {frames}: expected a positive number of frames")
    if args.verify or args.int8 != "none":
        require_onnxruntime()  # fail before the export, not after
    path = export_onnx(args.model, args.out, opset=args.opset, verify=args.verify)
    checked = f" (logits match PyTorch within {PARITY_TOLERANCE})" if args.verify else ""
    print(f"wrote {path}{checked}")
    if args.int8 != "none":
        int8, check = export_int8(args.model, path, args.int8, args.check_data, args.check_split, frames)
        d = check["delta_points"]
        verdict = ("passed: offered by --precision int8|auto" if check["passed"] else
                   "FAILED: --precision int8 will refuse it, auto will not pick it")
        print(f"wrote {int8} ({args.int8} int8) and {check_path(path)}: on {check['frames']} held-out frames "
              f"max |dscore| {check['max_abs_score_diff']:.3g}, {100 * check['decisions_changed']:.2f} % of "
              f"decisions changed, F2_CIW {d['F2_CIW']:+.2f} / F1_Normal {d['F1_Normal']:+.2f} points vs fp32 "
              f"(bound -{check['bound_points']}): {verdict}")
    if args.bf16_check == "yes" or (args.bf16_check == "auto" and native_bf16()):
        path, check = export_bf16_check(args.model, args.check_data, args.check_split, frames)
        d = check["delta_points"]
        verdict = ("passed: --precision auto may time it on CPUs with native bf16" if check["passed"] else
                   "FAILED: auto will not pick bf16")
        print(f"wrote {path}: bf16 weights on {check['frames']} held-out frames max |dscore| "
              f"{check['max_abs_score_diff']:.3g}, F2_CIW {d['F2_CIW']:+.2f} / F1_Normal {d['F1_Normal']:+.2f} "
              f"points vs fp32 (bound -{check['bound_points']}): {verdict}")
    return 0
