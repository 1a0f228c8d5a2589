"""Export an exported classifier folder (``ViTForImageClassification``) to ONNX for
ONNX Runtime: ``pixel_values`` (N, 3, S, S) float32 -> ``logits`` (N, 17), batch axis dynamic.

The graph is checked after writing: ONNX Runtime's logits must equal PyTorch's within
``PARITY_TOLERANCE`` on a random batch of a different size than the traced one (so a baked-in
batch size cannot pass). Preprocessing (resize, Sewer-ML mean/std) stays outside the graph;
``sewer_hf.inference.predict.SewerClassifier(..., backend="onnx")`` does it as for the PyTorch model.

We use the TorchScript-based exporter (``dynamo=False``): it needs only ``onnx``, whereas the
torch.export-based default also needs ``onnxscript``. Its tracer warnings about shape checks
(channel count, image size, sequence length) are expected: those are fixed by the model, only
the batch axis varies.

    sewer-hf export-onnx --model runs/.../classifier [--out model.onnx] [--opset 17]
        [--int8 dynamic|static|none] [--check-data /data/sewer-ml --check-split Val] [--check-frames 256]

The ``export-onnx`` command lives in ``sewer_hf.inference.quantize``: with ``--int8`` (default
``dynamic``) it also writes ``model.int8.onnx`` and its accuracy check
``model.int8.check.json`` (``sewer_hf.inference.quantize``): what ``--precision int8|auto`` runs.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

from sewer_hf.errors import ConfigError, DataError

ONNX_FILENAME = "model.onnx"  # default name, next to model.safetensors
DEFAULT_OPSET = 17  # first opset with LayerNormalization as one op
PARITY_TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = "pixel_values", "logits"


def require_onnxruntime():
    """``onnxruntime``, or a clear error saying how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ConfigError("the ONNX backend needs onnxruntime: pip install 'sewer-hf[onnx]' "
                          "(or pip install onnxruntime onnx)") from exc
    return onnxruntime


def _load_model(model_dir: str):
    from transformers import AutoModelForImageClassification

    folder = Path(model_dir)
    if not (folder / "config.json").is_file():
        raise DataError(f"{folder}: no config.json; expected an exported classifier/ folder")
    return AutoModelForImageClassification.from_pretrained(folder).eval()


def _logits_module(model):
    import torch

    class LogitsOnly(torch.nn.Module):
        """pixel_values -> logits: a plain tensor signature the exporter can name."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values):
            return self.inner(pixel_values=pixel_values).logits

    return LogitsOnly(model).eval()


def export_onnx(model_dir: str | Path, out: Optional[str | Path] = None, opset: int = DEFAULT_OPSET,
                verify: bool = True) -> Path:
    """Write ``out`` (default ``<model_dir>/model.onnx``) and, with ``verify``, check it against
    PyTorch with ONNX Runtime. Returns the path written."""
    import torch

    if opset < DEFAULT_OPSET:
        raise ConfigError(f"opset {opset} is too old; use {DEFAULT_OPSET} or newer")
    model = _load_model(str(model_dir))
    size = model.config.image_size
    out_path = Path(out) if out else Path(model_dir) / ONNX_FILENAME
    out_path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(2, model.config.num_channels, size, size, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*will be removed.*")
        torch.onnx.export(
            _logits_module(model), (example,), str(out_path), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    if verify:
        diff = onnx_max_abs_diff(model, out_path)
        if not diff <= PARITY_TOLERANCE:
            raise RuntimeError(f"{out_path}: ONNX Runtime logits differ from PyTorch by {diff:.3g} "
                               f"(> {PARITY_TOLERANCE})")
    return out_path


def onnx_max_abs_diff(model, onnx_path: str | Path, batch: int = 3, seed: int = 1) -> float:
    """Max |logits_onnxruntime - logits_torch| on a random batch (not the traced batch size)."""
    import torch

    ort = require_onnxruntime()
    size = model.config.image_size
    x = torch.randn(batch, model.config.num_channels, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        expected = model(pixel_values=x).logits.numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    return float(abs(got - expected).max())


def onnx_session(path: Path, threads: Optional[int], profile_prefix: Optional[str] = None):
    """The CPU session ``predict``/``scan`` run (``profile_prefix``: write ONNX Runtime's profile
    there, as ``benchmarks/onnx_op_profile.py`` does)."""
    ort = require_onnxruntime()
    if not path.is_file():
        raise DataError(f"{path}: no ONNX model; write one with `sewer-hf export-onnx --model <classifier dir>`")
    options = ort.SessionOptions()
    # Idle ORT threads would spin between batches, taking the cores the decode threads need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    if profile_prefix:
        options.enable_profiling, options.profile_file_prefix = True, profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
