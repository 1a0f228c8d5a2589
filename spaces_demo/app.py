"""Sewer defect finder: a Hugging Face Space (Gradio) around a `sewer_hf` classifier.

The app itself is `sewer_hf.hub.space_app`. This file finds the package: installed, else the wheel
next to it (`wheels/`, as `sewer-hf push-space` builds the Space), else the repository checkout
it sits in (`spaces_demo/`). `MODEL_ID` (a Hub id or a classifier folder) picks the model; by
default the one in `space_config.json`, else the checkout's quickstart classifier.
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT choose the address.
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

try:
    import sewer_hf  # noqa: F401
except ImportError:
    wheels = sorted(HERE.glob("wheels/sewer_hf-*.whl"))
    if wheels:
        sys.path.insert(0, str(wheels[-1]))  # a pure-Python wheel imports as a zip
    elif (HERE.parent / "sewer_hf").is_dir():
        sys.path.insert(0, str(HERE.parent))
    else:
        raise SystemExit("sewer_hf is not installed and no wheels/sewer_hf-*.whl is next to app.py")

from sewer_hf.hub.space_app import build_demo, launch_options, main  # noqa: E402,F401

if __name__ == "__main__":
    main(HERE)
