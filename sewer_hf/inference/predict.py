"""Batched inference with an exported classifier: image files -> 17 sigmoid scores.

The model is the plain transformers `ViTForImageClassification` in a `classifier/` folder (or a
Hub repo of one); nothing here needs timm. Preprocessing is the exported image processor's,
pixel for pixel: PIL decode to RGB, plain resize of the uint8 image to the training size with
torchvision's antialiased bicubic (what the torchvision-backed `ViTImageProcessor` of the stock
`pipeline` runs), Sewer-ML mean/std. It is done as: decode + resize in a thread pool (PIL's
decoder and torch's resize release the GIL), then one normalisation of the whole uint8 batch.
torchvision's uint8 resize is ~4x faster than PIL's for a 720x576 frame, so decoding and the
model are what remain (see benchmarks/inference_cpu.py).

Backends: "torch" (PyTorch, fp32 by default; `precision="bf16"` casts the weights to bfloat16:
faster on CPUs with AMX, but scores move by up to ~5e-2, so it is opt-in) and "onnx" (ONNX
Runtime on a `model.onnx` written by `sewer-hf export-onnx`; fp32 logits equal PyTorch's within
1e-4; `precision="int8"` runs `model.int8.onnx`, only when its shipped accuracy check passed:
see `sewer_hf.inference.quantize`). `sewer-hf predict` defaults to backend "auto" (ONNX Runtime when
`model.onnx` is there and onnxruntime is installed) and precision "auto" (the fastest, timed once
per machine, in the lanes it will run in, of fp32, a checked int8 and, on a CPU with native
bf16, checked bf16 weights).

Threads: on a CPU, many files and footage are scored in *lanes*: one per core
(`inference_lanes`), each decoding and resizing its own batch and running the model on that
batch with one thread (ONNX Runtime, or PyTorch with that thread's intra-op threads set to 1).
On a 2-core CPU this beat one 2-thread model next to a decode thread (ViT-T int8, 720x576 PNG):
a parallel op waits for its slowest thread, and decoding kept taking one of the two, so the
model ran slower than decoding and scoring one after the other. The same held for PyTorch
(bf16 on AMX: 85 vs 56 img/s; fp32 45 vs 37). One image at a time (`predict`) still runs the
model on every core. With one lane (`lanes=1`, or on a GPU) decoding of the next batch runs in
`workers` threads while the model scores the current one.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from sewer_hf.data import MissingImagesError, decode_rgb
from sewer_hf.data import labels as L
from sewer_hf.data import load_sewer_ml
from sewer_hf.errors import ConfigError, DataError
from sewer_hf.feed.machine import available_cores, native_bf16
from sewer_hf.inference.lanes import in_lanes, inference_lanes  # noqa: F401 (in_lanes: also for video)
from sewer_hf.inference.onnx import onnx_session
from sewer_hf.inference.precision import (
    BF16_CHECK_FILE,
    cached_choice,
    int8_path,
    machine_key,
    read_bf16_check,
    read_int8_check,
    store_choice,
    time_scorer,
)
from sewer_hf.metrics import write_scores_csv
from sewer_hf.models.hf_export import load_classifier_thresholds

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx")
PRECISIONS = ("auto", "fp32", "int8", "bf16")
DEFAULT_BACKEND = "torch"  # of the class (with fp32/bf16); the CLI defaults to "auto"
DEFAULT_PRECISION = "fp32"  # of the class; the CLI defaults to "auto" (fp32 or a checked int8)
DEFAULT_BATCH_SIZE = 32
DEFAULT_WORKERS = None  # decode/resize threads next to a PyTorch model: inference_threads()


def inference_threads(cores: Optional[int] = None) -> tuple[int, int]:
    """(model threads, decode threads) for a PyTorch model: the model takes every core, decoding
    one thread per two cores (it overlaps with the model and needs ~1/4 of its time on ViT-T)."""

    cores = cores or available_cores()
    return cores, max(1, cores // 2)


class SewerClassifier:
    """An exported classifier folder, ready to score PIL images or image files.

    ``backend="onnx"`` runs ``onnx_path`` (default ``<model_dir>/model.onnx``) with ONNX Runtime
    on the CPU; ``"auto"`` picks it when that file exists, onnxruntime is installed and the
    device is the CPU at fp32, else PyTorch (the default, ``None``, is PyTorch for fp32/bf16).
    ``precision="int8"`` runs ``model.int8.onnx`` next to it, if its accuracy check passed;
    ``"auto"`` the fastest here of the allowed precisions (``precision_candidates``), said in
    ``choice``. ``threads`` sets the model's intra-op threads for one batch; ``lanes`` how many
    batches ``predict_files`` and the footage scan score at once, each on one thread (on the CPU;
    default ``inference_lanes()``, one per core; 1 = one batch at a time on ``threads``; on a GPU
    always 1)."""

    def __init__(self, model_dir: str | Path, device: Optional[str] = None, threads: Optional[int] = None,
                 backend: Optional[str] = None, onnx_path: Optional[str | Path] = None,
                 precision: str = DEFAULT_PRECISION, lanes: Optional[int] = None) -> None:
        import torch
        from transformers import AutoConfig

        if backend is None:  # the class's default: PyTorch, unless the precision asks for the ONNX graphs
            backend = {"int8": "onnx", "auto": "auto"}.get(precision, DEFAULT_BACKEND)
        if backend not in BACKENDS:
            raise ConfigError(f"backend={backend!r}: expected one of {BACKENDS}")
        if precision not in PRECISIONS:
            raise ConfigError(f"precision={precision!r}: expected one of {PRECISIONS}")
        onnx_file = Path(onnx_path) if onnx_path else Path(model_dir) / "model.onnx"
        self.choice = ""  # how the precision was chosen (auto), for the run's log line
        if lanes is not None and lanes < 1:
            raise ConfigError(f"lanes={lanes}: expected a positive number of batches scored at once")
        if precision == "int8":
            if backend == "torch":
                raise ConfigError("precision='int8' runs the int8 ONNX graph with ONNX Runtime; use backend "
                                  "'onnx' or 'auto', not 'torch'")
            _require_int8(onnx_file)
            backend = "onnx"
        elif precision == "auto":
            candidates = precision_candidates(onnx_file, device, backend, model_dir=model_dir)
            cpu_lanes = lanes or inference_lanes()  # every candidate here runs on the CPU (else only one)
            (backend, precision), self.choice = _fastest(candidates, onnx_file, threads, model_dir=model_dir,
                                                         lanes=cpu_lanes)
        elif backend == "auto":
            backend = _auto_backend(onnx_file, device, precision)
        if backend == "onnx" and precision == "bf16":
            raise ConfigError("the onnx backend runs the exported fp32 graph (or its checked int8 twin); "
                              "precision='bf16' needs backend 'torch'")
        self.model_dir = str(model_dir)
        self.backend, self.precision = backend, precision
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() and backend == "torch" else "cpu"))
        if backend == "onnx" and self.device.type != "cpu":
            raise ConfigError(f"the onnx backend runs on the CPU; got device={device!r}")
        if lanes is not None and lanes > 1 and self.device.type != "cpu":
            raise ConfigError(f"lanes={lanes}: parallel lanes run on the CPU (one thread each); this model runs on "
                              f"{self.device.type}: use lanes=1")
        with model_source_errors(self.model_dir):
            config = AutoConfig.from_pretrained(self.model_dir)
        labels_in_order = [config.id2label[i] for i in range(config.num_labels)]
        if labels_in_order != list(L.CLASSES):
            raise DataError(f"{self.model_dir}: id2label is {labels_in_order}, expected the 17 Sewer-ML codes "
                            f"{list(L.CLASSES)} in benchmark order")
        self.thresholds = load_classifier_thresholds(config)
        if backend == "torch":
            from transformers import AutoModelForImageClassification

            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            with model_source_errors(self.model_dir):
                self.model = AutoModelForImageClassification.from_pretrained(self.model_dir).to(self.device, dtype).eval()
            self._dtype = dtype
        else:

            self.model = None
            self.onnx_file = int8_path(onnx_file) if precision == "int8" else onnx_file
            self._session = onnx_session(self.onnx_file, threads)
        self.lanes = lanes or (inference_lanes() if self.device.type == "cpu" else 1)
        self._lane_session_ = None
        self._lane_lock = threading.Lock()
        with model_source_errors(self.model_dir):
            proc = _processor_config(self.model_dir)
        size = proc.get("size", {})
        self.size = (int(size.get("width", config.image_size)), int(size.get("height", config.image_size)))
        mean = torch.tensor(proc.get("image_mean", L.SEWER_MEAN)).view(1, 3, 1, 1)
        std = torch.tensor(proc.get("image_std", L.SEWER_STD)).view(1, 3, 1, 1)
        # uint8 -> normalised float in one multiply-add: (x/255 - mean)/std
        self._scale = (1.0 / (255.0 * std)).to(self.device)
        self._shift = (-mean / std).to(self.device)

    # -- preprocessing ------------------------------------------------------------------------

    def resized(self, image):
        """An image (anything ``sewer_hf.data.decode_rgb`` reads: a PIL image in any mode, a path,
        bytes, an array) -> (3, H, W) uint8 tensor at the model's size: decoded by ``decode_rgb``
        (16-bit scaled, alpha composited on black: the same pixels as ``predict_files``), then
        torchvision's antialiased bicubic on uint8, exactly the stock image processor's resize.
        An unreadable image is a DataError."""
        import torch
        import torchvision.transforms.v2.functional as F

        if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
            # decoded RGB already (a video frame): decode_rgb would give back these very pixels
            pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        else:
            pixels = torch.from_numpy(np.array(decode_rgb(image, strict=True), dtype=np.uint8)).permute(2, 0, 1)
        width, height = self.size
        if pixels.shape[1:] == (height, width):
            return pixels
        return F.resize(pixels, [height, width], interpolation=F.InterpolationMode.BICUBIC, antialias=True)

    def preprocess(self, image) -> np.ndarray:
        """Image (see ``resized``) -> (H, W, 3) uint8 array at the model's size (plain bicubic resize, as trained)."""
        return self.resized(image).permute(1, 2, 0).numpy()

    def pixel_values(self, batch):
        """(N, 3, H, W) uint8 tensor at the model's size -> the model's normalised float input."""
        return batch.to(self.device).float() * self._scale + self._shift

    # -- scoring ------------------------------------------------------------------------------

    def _lane_session(self):
        """The one-thread session the lanes share (ONNX Runtime's run is thread-safe)."""
        with self._lane_lock:
            if self._lane_session_ is None:
                self._lane_session_ = onnx_session(self.onnx_file, 1)
            return self._lane_session_

    def scores_from_uint8(self, batch, lane: bool = False) -> np.ndarray:
        """(N, 3, H, W) uint8 tensor at the model's size -> (N, 17) sigmoid scores. ``lane``: called
        from one of ``lanes`` parallel lanes (the model then runs on this thread only)."""
        import torch

        pixel_values = self.pixel_values(batch)
        if self.backend == "onnx":
            session = self._lane_session() if lane and self.lanes > 1 else self._session
            logits = torch.from_numpy(session.run(["logits"], {"pixel_values": pixel_values.numpy()})[0])
        else:
            with torch.inference_mode():
                logits = self.model(pixel_values=pixel_values.to(self._dtype)).logits
        return torch.sigmoid(logits.float()).cpu().numpy()

    def scores_from_arrays(self, arrays: Sequence[np.ndarray], lane: bool = False) -> np.ndarray:
        """(H, W, 3) uint8 arrays at the model's size -> (N, 17) sigmoid scores (``lane``: see
        ``scores_from_uint8``)."""
        import torch

        return self.scores_from_uint8(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2), lane=lane)

    def predict(self, images: Sequence) -> np.ndarray:
        """(N, 17) sigmoid scores for images (PIL in any mode, paths, bytes, arrays: each decoded
        by ``decode_rgb``, so a file scores the same here as with ``predict_files``)."""
        import torch

        return self.scores_from_uint8(torch.stack([self.resized(im) for im in images]))

    def predict_files(self, paths: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE,
                      workers: Optional[int] = DEFAULT_WORKERS, progress: bool = True) -> tuple[np.ndarray, list[int]]:
        """Scores of the readable files (in order) and the indices of unreadable ones. In lanes
        (``lanes`` > 1): each lane decodes, resizes and scores its own batch of at most
        ``batch_size`` files. Else the next batch is decoded (``workers`` threads; default
        ``inference_threads()``) while the model scores the current one."""
        import torch
        from tqdm.auto import tqdm

        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size}: expected a positive number of images")
        scores, bad = [], []
        if self.lanes > 1:  # batch_size images in flight across the lanes, and no lane left idle at the end
            batch_size = max(1, min(math.ceil(batch_size / self.lanes), math.ceil(len(paths) / self.lanes)))
        starts = list(range(0, len(paths), batch_size))

        def score(start: int, images: list, lane: bool) -> tuple[list, list]:
            """(scores of the decoded images, indices of the unreadable ones) of one batch."""
            ok = [im for im in images if im is not None]
            return ([self.scores_from_uint8(torch.stack(ok), lane=lane)] if ok else [],
                    [start + i for i, im in enumerate(images) if im is None])

        with tqdm(total=len(paths), desc="predict", unit="img", disable=not progress) as bar:
            if self.lanes > 1:  # each lane decodes and scores its own batch
                lane = lambda start: score(start, [self._load_file(p) for p in paths[start:start + batch_size]], True)  # noqa: E731
                done = in_lanes(starts, lane, self.lanes)
            else:
                done = self._decode_ahead(paths, starts, batch_size, max(1, workers or inference_threads()[1]), score)
            for start, (batch_scores, batch_bad) in zip(starts, done):
                scores += batch_scores
                bad += batch_bad
                bar.update(len(paths[start:start + batch_size]))
        return (np.concatenate(scores) if scores else np.zeros((0, L.NUM_CLASSES), np.float32)), bad

    def _decode_ahead(self, paths, starts, batch_size, workers, score) -> Iterator[tuple[list, list]]:
        """One batch at a time through the model; the next is decoded in ``workers`` threads meanwhile."""
        with ThreadPoolExecutor(max_workers=workers) as pool:
            submit = lambda s: [pool.submit(self._load_file, p) for p in paths[s:s + batch_size]]  # noqa: E731
            pending = submit(starts[0]) if starts else []
            for k, start in enumerate(starts):
                images = [f.result() for f in pending]
                pending = submit(starts[k + 1]) if k + 1 < len(starts) else []
                yield score(start, images, False)

    def _load_file(self, path: str):
        image = decode_rgb(path)
        return None if image is None else self.resized(image)

    def describe(self) -> str:
        """One line: backend, precision, lanes and, under auto, why."""
        what = "ONNX Runtime" if self.backend == "onnx" else f"PyTorch on {self.device.type}"
        lanes = f", {self.lanes} lanes of 1 thread" if self.lanes > 1 else ""
        return f"{what} {self.precision}{lanes}" + (f" [{self.choice}]" if self.choice else "")

    def verdict(self, scores: np.ndarray) -> list[str]:
        """The defect codes at or above their thresholds (empty = normal)."""
        return [c for c, s, t in zip(L.CLASSES, scores, self.thresholds) if s >= t]


@contextlib.contextmanager
def model_source_errors(model: str):
    """Turn a model that cannot be found or fetched (a missing folder, a Hub id while offline or
    unknown to the Hub) into a DataError that says which and what to do, instead of a traceback
    from deep inside transformers / huggingface_hub."""
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    local = Path(model).expanduser()
    if local.is_dir() and not (local / "config.json").is_file():
        raise DataError(f"model {model}: a folder without config.json; expected an exported classifier folder "
                        f"(runs/<run>/classifier) or a Hub id (org/name)")
    if not local.exists() and (model.startswith((".", "/", "~")) or model.count("/") > 1):
        raise DataError(f"model {model}: no such folder (and not a Hub id of the form org/name)")
    try:
        yield
    except (OSError, HfHubHTTPError, HFValidationError) as exc:
        if local.exists():
            raise DataError(f"model {model}: cannot be loaded ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        why = "HF_HUB_OFFLINE is set" if offline else "no network, or no such repo (or it is private: set HF_TOKEN)"
        raise DataError(f"model {model}: not a local folder, and the Hugging Face Hub could not provide it ({why}; "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}). Pass a local classifier folder, "
                        f"or download it once while online (`hf download {model}`)") from None


def _auto_backend(onnx_path: Path, device: Optional[str], precision: str) -> str:
    """ONNX Runtime where it applies (measured faster on a small shared CPU), else PyTorch."""
    import importlib.util

    import torch

    on_cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
    usable = on_cpu and precision == "fp32" and onnx_path.is_file()
    return "onnx" if usable and importlib.util.find_spec("onnxruntime") is not None else "torch"


def _require_int8(onnx_file: Path) -> None:
    """A clear error unless an int8 model that passed its accuracy check sits next to ``onnx_file``."""

    check = read_int8_check(onnx_file)
    if check is None:
        raise ConfigError(f"precision='int8': no int8 model at {int8_path(onnx_file)}; write one with "
                          f"`sewer-hf export-onnx --model <classifier dir> --int8 dynamic`")
    if not check.get("passed"):
        raise ConfigError(f"precision='int8': {int8_path(onnx_file)} is not offered: {check.get('why')}; "
                          f"use --precision fp32 (or auto)")


def precision_candidates(onnx_file: Path, device: Optional[str], backend: str = "auto",
                         model_dir: Optional[str | Path] = None) -> list[tuple[str, str]]:
    """(backend, precision) pairs that ``precision="auto"`` may pick here, fp32 first. On a GPU:
    PyTorch fp32. On a CPU: fp32 (ONNX Runtime when ``model.onnx`` is there and the backend
    allows it, else PyTorch), int8 when its model passed its accuracy check, and PyTorch with
    bf16 weights when this CPU has native bf16 and ``model_dir``'s bf16 check passed (without
    native bf16 they ran 6x slower than fp32: never offered there)."""
    import importlib.util

    import torch

    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r}: expected one of {BACKENDS}")
    on_cpu = device == "cpu" or backend == "onnx" or (device is None and not torch.cuda.is_available())
    if not on_cpu:
        return [("torch", "fp32")]
    has_ort = importlib.util.find_spec("onnxruntime") is not None
    if backend == "torch":
        out = [("torch", "fp32")]
    else:
        fp32 = ("onnx", "fp32") if backend == "onnx" or (has_ort and onnx_file.is_file()) else ("torch", "fp32")
        out = [fp32]
        if has_ort and fp32[0] == "onnx":  # export-onnx writes the int8 graph next to the fp32 one
            check = read_int8_check(onnx_file)
            if check is not None and check.get("passed"):
                out.append(("onnx", "int8"))
            elif check is not None:
                logger.info("int8 model not used: %s", check.get("why"))
    if backend != "onnx" and model_dir is not None and native_bf16():
        check = read_bf16_check(model_dir)
        if check is not None and check.get("passed"):
            out.append(("torch", "bf16"))
        elif check is not None:
            logger.info("bf16 weights not used: %s", check.get("why"))
    return out


def _fastest(candidates: list[tuple[str, str]], onnx_file: Path, threads: Optional[int],
             model_dir: Optional[str | Path] = None, lanes: int = 1) -> tuple[tuple[str, str], str]:
    """The fastest candidate on this machine (timed once, then cached), and a line saying so. Each
    is timed as it will run: in ``lanes`` lanes of one thread (else one batch on ``threads``).
    Timing the model alone on all threads misled: on a 2-core AMX CPU it gave bf16 weights 6.0
    ms/img against int8's 8.9, yet files were then scored at 56 img/s by bf16 (one 2-thread batch
    at a time) against 71 by int8 in lanes; bf16 in lanes then ran at 85."""
    if len(candidates) == 1:
        return candidates[0], f"auto: {candidates[0][1]} (the only precision allowed here)"

    files = [onnx_file, int8_path(onnx_file)] + ([Path(model_dir) / BF16_CHECK_FILE] if model_dir else [])
    key = machine_key(files, threads, lanes)
    cached = cached_choice(key)
    by_precision = {p: (b, p) for b, p in candidates}
    if cached in by_precision:
        return by_precision[cached], f"auto: {cached} (fastest on this machine, timed earlier)"
    timings = {}
    for backend, precision in candidates:
        if backend == "onnx":
            session = onnx_session(int8_path(onnx_file) if precision == "int8" else onnx_file,
                                   1 if lanes > 1 else threads)
            shape = session.get_inputs()[0].shape
            size = (int(shape[3]), int(shape[2]))
            score = lambda px, session=session: session.run(["logits"], {"pixel_values": px.float().numpy()})  # noqa: E731
        else:
            model = SewerClassifier(model_dir, device="cpu", threads=threads, backend="torch", precision=precision)
            size, score = model.size, model.scores_from_uint8
        timings[precision] = time_scorer(score, size, lanes=lanes)
    best = min(timings, key=timings.get)
    store_choice(key, best, timings)
    said = ", ".join(f"{p} {1000 * t:.1f} ms/img" for p, t in timings.items())
    return by_precision[best], f"auto: {best} (fastest on this machine: {said})"


def _processor_config(model_dir: str) -> dict:
    path = Path(model_dir) / "preprocessor_config.json"
    if path.is_file():
        return json.loads(path.read_text())
    from huggingface_hub import hf_hub_download

    return json.loads(Path(hf_hub_download(model_dir, "preprocessor_config.json")).read_text())


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_inputs(data: str, split: str, annotations_dir: Optional[str] = None,
                drop_missing: bool = False) -> tuple[list[str], list[str]]:
    """(filenames, paths) to score: a Sewer-ML root (its split's CSV), an annotation/scores CSV
    with a `Filename` column (images next to it), or a folder of images. Rows whose image is
    missing are an error (naming ``--drop-missing``) unless ``drop_missing``; they are then
    left out and logged."""

    p = Path(data)
    if not p.exists():
        raise DataError(f"--data {data}: does not exist; expected a Sewer-ML root folder, a CSV with a Filename "
                        f"column, or a folder of images")
    if p.is_file() and p.suffix.lower() == ".csv":
        import csv

        try:
            with p.open(newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                if "Filename" not in (reader.fieldnames or []):
                    raise DataError(f"{p}: expected a `Filename` column, found {reader.fieldnames}")
                names = [row["Filename"] for row in reader]
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{p}: not readable as a UTF-8 CSV ({exc})") from None
        if not names:
            raise DataError(f"{p}: the header is there but no rows follow; expected one row per image")
        folder = p.parent
        paths = [str(folder / split / n) if (folder / split / n).exists() else str(folder / n) for n in names]
        return names, paths
    if p.is_dir() and (any(p.glob("SewerML_*.csv")) or (annotations_dir and Path(annotations_dir).is_dir())):
        try:
            ds = load_sewer_ml(p, split, annotations_dir=annotations_dir, drop_missing=drop_missing)
        except MissingImagesError as exc:
            raise exc.with_hint("pass --drop-missing to score the others; `sewer-hf check-data` lists them all") from None
        from datasets import Image

        ds = ds.cast_column("image", Image(decode=False))
        return list(ds["filename"]), [im["path"] for im in ds["image"]]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{p}: no SewerML_<split>.csv and no images ({', '.join(IMAGE_SUFFIXES)})")
        return [f.name for f in files], [str(f) for f in files]
    raise DataError(f"{data}: expected a Sewer-ML root folder, a CSV with a Filename column, or a folder of images")


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="classifier folder (runs/.../classifier) or Hub id")
    parser.add_argument("--data", required=True, help="Sewer-ML root, annotation CSV, or a folder of images")
    parser.add_argument("--split", default="Val", help="split when --data is a Sewer-ML root (default Val)")
    parser.add_argument("--annotations-dir", default=None)
    parser.add_argument("--out", default="scores.csv", help="scores file: Filename + the 17 codes")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help="with one lane: decode/resize threads next to the model (default: one per two cores)")
    add_thread_arguments(parser)
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="onnx: ONNX Runtime on <model>/model.onnx (write it with sewer-hf export-onnx); "
                             "auto (default): onnx when that file exists and onnxruntime is installed, else torch")
    parser.add_argument("--onnx", default=None, help="ONNX file for --backend onnx (default <model>/model.onnx)")
    add_precision_argument(parser)
    parser.add_argument("--device", default=None)
    parser.add_argument("--drop-missing", action="store_true",
                        help="leave out the rows of a Sewer-ML split whose image file is missing (default: an error)")
    parser.set_defaults(func=run_predict)


def add_thread_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None,
                        help="model intra-op threads for one batch (default: all cores)")
    parser.add_argument("--lanes", type=int, default=None,
                        help="batches scored at once on the CPU, each decoded and scored on one thread "
                             "(default: one per core; 1 = one batch at a time on --threads)")


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto (default): the fastest on this machine of fp32, int8 (if export-onnx wrote it "
                             "and it passed its accuracy check) and bf16 weights (only on a CPU with native bf16, "
                             "if export-onnx --bf16-check passed); int8: ONNX Runtime on <model>/model.int8.onnx; "
                             "bf16: torch backend, bf16 weights (fast only with AVX512-BF16/AMX; scores move by ~1e-2)")


def run_predict(args: argparse.Namespace) -> int:
    names, paths = list_inputs(args.data, args.split, args.annotations_dir, drop_missing=args.drop_missing)
    clf = SewerClassifier(args.model, device=args.device, threads=args.threads, backend=args.backend,
                          onnx_path=args.onnx, precision=args.precision, lanes=args.lanes)
    print(f"model: {clf.describe()}", file=sys.stderr)
    scores, bad = clf.predict_files(paths, batch_size=args.batch_size, workers=args.workers)
    bad_set = set(bad)
    kept = [n for i, n in enumerate(names) if i not in bad_set]
    write_scores_csv(args.out, kept, scores)
    print(f"wrote {len(kept)} rows to {args.out}")
    if bad:
        shown = ", ".join(names[i] for i in bad[:10])
        print(f"skipped {len(bad)} unreadable image(s): {shown}{' ...' if len(bad) > 10 else ''}", file=sys.stderr)
    return 0
