"""int8 inference with ONNX Runtime, the accuracy check shipped with it, and the per-machine
choice of precision (``--precision auto``).

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

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from sewer_hf.atomic import write_json_atomically
from sewer_hf.errors import ConfigError, DataError

INT8_METHODS = ("dynamic", "static")
DEFAULT_INT8_METHOD = "dynamic"
BOUND_POINTS = 0.5  # int8 is offered when F2_CIW and F1_Normal each drop by at most this (points)
CHECK_FRAMES = 256
CHECK_SEED = 1717  # held out: the synthetic datasets and the quickstart use other seeds
CALIBRATION_SEED = 1718  # static calibration frames, disjoint from the check frames
CALIBRATION_FRAMES = 64
CHECK_FRAME_SIZE = (352, 288)
PROBE_BATCH = 8


def int8_path(onnx_path: str | Path) -> Path:
    p = Path(onnx_path)
    return p.with_name(p.name[:-len(".onnx")] + ".int8.onnx" if p.name.endswith(".onnx") else p.name + ".int8.onnx")


def check_path(onnx_path: str | Path) -> Path:
    p = int8_path(onnx_path)
    return p.with_name(p.name[:-len(".onnx")] + ".check.json")


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# Frames: held-out check frames and calibration frames
# ------------------------------------------------------------------------------------------------

def synthetic_frames(classifier, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, H, W) uint8 at the model's size and (N, 17) labels: procedural frames with label sets
    drawn from the real Sewer-ML co-occurrence (``sewer_hf.synth``), resized as ``predict`` does."""
    import torch

    from sewer_hf.synth import render_frame, sample_labels

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

    from sewer_hf.data import load_sewer_ml

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
    from sewer_hf.inference.predict import _onnx_session

    session = _onnx_session(path, threads)
    logits = np.concatenate([session.run(["logits"], {"pixel_values": pixel_values[i:i + batch]})[0]
                             for i in range(0, len(pixel_values), batch)])
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


def compare_scores(reference: np.ndarray, candidate: np.ndarray, targets: np.ndarray,
                   thresholds: Sequence[float], bound_points: float = BOUND_POINTS) -> dict:
    """The accuracy check of ``candidate`` scores against the fp32 ``reference`` on labelled frames."""
    from sewer_hf.metrics import compute_metrics

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

    from sewer_hf.inference.predict import SewerClassifier

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


WEIGHTS_FILE = "model.safetensors"
BF16_CHECK_FILE = "model.bf16.check.json"


def export_bf16_check(model_dir: str | Path, check_data: Optional[str] = None, check_split: str = "Val",
                      frames: int = CHECK_FRAMES, threads: Optional[int] = None) -> tuple[Path, dict]:
    """The accuracy check of bf16 weights (PyTorch, cast at load time) against fp32, on the same
    held-out frames and with the same bound as int8's; written to ``<model_dir>/model.bf16.check.json``
    and tied to the SHA-256 of the weights. ``--precision auto`` may then time bf16 on a CPU with
    native bf16. Returns (check path, check dict)."""
    import torch

    from sewer_hf.inference.predict import SewerClassifier

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


def read_bf16_check(model_dir: str | Path) -> Optional[dict]:
    """The bf16 check of ``model_dir``'s weights, or None when there is none; one that no longer
    matches the weights comes back with ``passed`` False and a ``why``."""
    path = Path(model_dir) / BF16_CHECK_FILE
    if not path.is_file():
        return None
    return _read_check(path, Path(model_dir) / WEIGHTS_FILE, "weights_sha256")


# ------------------------------------------------------------------------------------------------
# What a machine may run, and what it runs fastest
# ------------------------------------------------------------------------------------------------

def read_int8_check(onnx_path: str | Path) -> Optional[dict]:
    """The int8 model's check, or None when there is no int8 model. Raises nothing; a check that is
    missing or does not match the file comes back with ``passed`` False and a ``why``."""
    model = int8_path(onnx_path)
    if not model.is_file():
        return None
    path = check_path(onnx_path)
    if not path.is_file():
        return {"passed": False, "why": f"{path.name} is missing (no accuracy check for {model.name})"}
    return _read_check(path, model, "int8_sha256")


def _read_check(path: Path, checked: Path, sha_key: str) -> dict:
    """An accuracy check file, with ``passed`` False and a ``why`` when it is unreadable, was made
    for other bytes than ``checked``'s, or failed its bound."""
    try:
        check = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return {"passed": False, "why": f"{path} is not readable JSON ({exc})"}
    if not checked.is_file() or check.get(sha_key) != sha256(checked):
        return dict(check, passed=False, why=f"{checked.name} is not the file {path.name} checked "
                                             "(SHA-256 differs): export again")
    if not check.get("passed"):
        delta = check.get("delta_points", {})
        check = dict(check, why=f"it failed its accuracy check: F2_CIW {delta.get('F2_CIW')} and F1_Normal "
                                f"{delta.get('F1_Normal')} points vs fp32 (bound: -{check.get('bound_points')})")
    return check


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(flags: Optional[set[str]] = None) -> bool:
    """True on CPUs with bf16 arithmetic in hardware (AVX512-BF16 or AMX-BF16)."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def cpu_features() -> str:
    """The CPU features that decide which precision is fast, as one line."""
    flags = cpu_flags()
    wanted = ["avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8"]
    return " ".join(f for f in wanted if f in flags) or "unknown"


def _choice_cache() -> Path:
    return Path(os.environ.get("SEWER_HF_CACHE", Path.home() / ".cache" / "sewer_hf")) / "precision_choice.json"


def time_scorer(score, size: tuple[int, int], batch: int = PROBE_BATCH, repeats: int = 2) -> float:
    """Best seconds per image of ``score(uint8 batch)`` after one warm-up call."""
    import torch

    pixels = torch.randint(0, 256, (batch, 3, size[1], size[0]), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    score(pixels)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        score(pixels)
        best = min(best, time.perf_counter() - start)
    return best / batch


def cached_choice(key: str) -> Optional[str]:
    try:
        return json.loads(_choice_cache().read_text()).get(key, {}).get("precision")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def store_choice(key: str, precision: str, timings: dict) -> None:
    path = _choice_cache()
    try:
        table = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        table = {}
    table[key] = {"precision": precision, "s_per_image": timings}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(table, path)
    except OSError:  # a read-only home: choose again next time
        pass


def machine_key(files: Sequence[Path], threads: Optional[int]) -> str:
    """What a timing depends on: the model files, the CPU and the threads."""
    model_name = "cpu"
    try:
        with open("/proc/cpuinfo") as fh:
            model_name = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "cpu")
    except OSError:
        pass
    parts = [f"{Path(f).resolve()}:{Path(f).stat().st_mtime_ns}" for f in files if Path(f).exists()]
    return hashlib.sha256("|".join([model_name, cpu_features(), str(threads), *parts]).encode()).hexdigest()[:20]
