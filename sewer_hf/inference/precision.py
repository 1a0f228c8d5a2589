"""Which precisions a machine may run a classifier in, and which it picks: the files of the
accuracy checks (``model.int8.check.json``, ``model.bf16.check.json``) and their readers, the
CPU features that matter (native bf16), and the per-machine timing cache of ``--precision auto``.
Writing the int8 model and running the checks is ``sewer_hf.inference.quantize``'s business."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Optional, Sequence

from sewer_hf.atomic import write_json_atomically
from sewer_hf.feed.machine import cpu_features, cpu_model
from sewer_hf.inference.lanes import in_lanes

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


WEIGHTS_FILE = "model.safetensors"


BF16_CHECK_FILE = "model.bf16.check.json"


def read_bf16_check(model_dir: str | Path) -> Optional[dict]:
    """The bf16 check of ``model_dir``'s weights, or None when there is none; one that no longer
    matches the weights comes back with ``passed`` False and a ``why``."""
    path = Path(model_dir) / BF16_CHECK_FILE
    if not path.is_file():
        return None
    return _read_check(path, Path(model_dir) / WEIGHTS_FILE, "weights_sha256")


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


def _choice_cache() -> Path:
    return Path(os.environ.get("SEWER_HF_CACHE", Path.home() / ".cache" / "sewer_hf")) / "precision_choice.json"


def time_scorer(score, size: tuple[int, int], batch: int = PROBE_BATCH, repeats: int = 2, lanes: int = 1) -> float:
    """Best seconds per image of ``score(uint8 batch)`` after one warm-up call; with ``lanes`` > 1,
    of that many calls at once, each in its own thread with one torch thread (as the lanes of
    ``SewerClassifier`` run; ``score`` must then run on one thread too)."""
    import torch

    pixels = torch.randint(0, 256, (batch, 3, size[1], size[0]), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    run = lambda: list(in_lanes(range(lanes), lambda _: score(pixels), lanes))  # noqa: E731
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best / (batch * lanes)


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


def machine_key(files: Sequence[Path], threads: Optional[int], lanes: int = 1) -> str:
    """What a timing depends on: the model files, the CPU, the threads and the lanes."""
    parts = [f"{Path(f).resolve()}:{Path(f).stat().st_mtime_ns}" for f in files if Path(f).exists()]
    return hashlib.sha256("|".join([cpu_model(), cpu_features(), str(threads), f"lanes={lanes}", *parts])
                          .encode()).hexdigest()[:20]
