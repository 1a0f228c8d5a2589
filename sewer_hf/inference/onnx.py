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

With ``--int8`` (default ``dynamic``) it also writes ``model.int8.onnx`` and its accuracy check
``model.int8.check.json`` (``sewer_hf.inference.quantize``): what ``--precision int8|auto`` runs.
"""
from __future__ import annotations

import argparse
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
    parser.add_argument("--check-frames", type=int, default=None, help="frames in the accuracy check (default 256)")
    parser.add_argument("--bf16-check", choices=("auto", "yes", "no"), default="auto",
                        help="also check bf16 weights against fp32 on the same frames (<model>/model.bf16.check.json; "
                             "--precision auto then times bf16 on CPUs with native bf16). auto (default): yes on a "
                             "CPU with native bf16; elsewhere bf16 runs ~6x slower than fp32 and is never picked, "
                             "so the check is left out unless asked for (yes: ship it with the model)")
    parser.set_defaults(func=run_export_onnx)


def run_export_onnx(args: argparse.Namespace) -> int:
    from sewer_hf.inference import quantize as Q

    frames = Q.CHECK_FRAMES if args.check_frames is None else args.check_frames
    if (args.int8 != "none" or args.bf16_check == "yes") and frames < 1:
        raise ConfigError(f"--check-frames {frames}: expected a positive number of frames")
    if args.verify or args.int8 != "none":
        require_onnxruntime()  # fail before the export, not after
    path = export_onnx(args.model, args.out, opset=args.opset, verify=args.verify)
    checked = f" (logits match PyTorch within {PARITY_TOLERANCE})" if args.verify else ""
    print(f"wrote {path}{checked}")
    if args.int8 != "none":
        int8, check = Q.export_int8(args.model, path, args.int8, args.check_data, args.check_split, frames)
        d = check["delta_points"]
        verdict = ("passed: offered by --precision int8|auto" if check["passed"] else
                   "FAILED: --precision int8 will refuse it, auto will not pick it")
        print(f"wrote {int8} ({args.int8} int8) and {Q.check_path(path)}: on {check['frames']} held-out frames "
              f"max |dscore| {check['max_abs_score_diff']:.3g}, {100 * check['decisions_changed']:.2f} % of "
              f"decisions changed, F2_CIW {d['F2_CIW']:+.2f} / F1_Normal {d['F1_Normal']:+.2f} points vs fp32 "
              f"(bound -{check['bound_points']}): {verdict}")
    if args.bf16_check == "yes" or (args.bf16_check == "auto" and Q.native_bf16()):
        path, check = Q.export_bf16_check(args.model, args.check_data, args.check_split, frames)
        d = check["delta_points"]
        verdict = ("passed: --precision auto may time it on CPUs with native bf16" if check["passed"] else
                   "FAILED: auto will not pick bf16")
        print(f"wrote {path}: bf16 weights on {check['frames']} held-out frames max |dscore| "
              f"{check['max_abs_score_diff']:.3g}, F2_CIW {d['F2_CIW']:+.2f} / F1_Normal {d['F1_Normal']:+.2f} "
              f"points vs fp32 (bound -{check['bound_points']}): {verdict}")
    return 0
