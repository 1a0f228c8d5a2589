"""`sewer-hf push-space`: build a self-contained Gradio Space folder and upload it to the Hub.

The folder::

    README.md            front matter: sdk gradio, sdk_version, app_file, license, models, ...
    app.py               finds `sewer_hf` (installed, else the bundled wheel) and serves the app
                         of `sewer_hf.hub.space_app`; the same file as `spaces_demo/app.py`
    requirements.txt     the package's dependencies (CPU build of torch), gradio excepted
    wheels/sewer_hf-<version>-py3-none-any.whl   this package, built from the checkout
    space_config.json    which model the Space serves, and where its card is
    examples/*.jpg       example frames (one defect each)
    model/               the classifier, when --model is a folder (with its model card)

Why the wheel is imported rather than listed in requirements.txt: a Space installs
requirements.txt before the repository's files are copied into the image, so a line naming a
file of the repository cannot be resolved there. A pure-Python wheel is a zip that Python imports
directly; its dependencies are in requirements.txt.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from importlib import resources
from pathlib import Path
from typing import Optional

from sewer_hf.errors import ConfigError, SewerHFError
from sewer_hf.hub.publish import (
    DRY_RUN_HINT,
    REAL_DATA_LICENSE,
    PushResult,
    _empty_out_dir,
    _validate_repo_id,
    _work_folder,
    build_repo_folder,
    hub_errors,
    inspect_model_dir,
    report_push,
    resolve_token,
)

SPACE_LICENSE = "apache-2.0"  # the app's code; a bundled model trained on Sewer-ML brings its own terms
MODEL_FOLDER = "model"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
SKIPPED_REQUIREMENTS = ("gradio",)  # the Space SDK installs the pinned gradio (sdk_version)

APP_PY = '''"""Sewer defect finder: a Hugging Face Space (Gradio) around a `sewer_hf` classifier.

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
'''


def project_root() -> Optional[Path]:
    """The source checkout this package runs from (a folder with pyproject.toml), if any."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "sewer_hf").is_dir() else None


def build_wheel(out_dir: Path, source: Optional[Path] = None) -> Path:
    """Build this package's wheel into `out_dir` (offline: no build isolation, no index)."""
    source = source or project_root()
    if source is None:
        raise ConfigError("push-space builds the sewer_hf wheel from the source checkout, and none was found; "
                          "run it from a checkout (pip install -e .) or pass --wheel PATH")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sewer_hf_wheel_") as tmp:
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
               "--disable-pip-version-check", "-q", "-w", tmp, str(source)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("sewer_hf-*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise SewerHFError("building the sewer_hf wheel failed: " + " | ".join(tail))
        target = out_dir / wheels[0].name
        shutil.move(str(wheels[0]), target)
    return target


def wheel_requirements(wheel: Path, extras: tuple[str, ...] = ("demo",)) -> list[str]:
    """The wheel's `Requires-Dist` lines (no extra, or one of `extras`), markers dropped."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        message = Parser().parsestr(zf.read(meta).decode("utf-8"))
    out = []
    for line in message.get_all("Requires-Dist") or []:
        requirement, _, marker = line.partition(";")
        marker = marker.strip()
        if marker and not any(f'extra == "{e}"' in marker or f"extra == '{e}'" in marker for e in extras):
            continue
        name = requirement.strip().split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower()
        if name in SKIPPED_REQUIREMENTS or requirement.strip() in out:
            continue
        out.append(requirement.strip())
    return out


def _requirements_text(wheel: Path, cpu_torch: bool) -> str:
    lines = ["# Dependencies of the bundled sewer_hf wheel (wheels/); app.py imports the wheel itself.",
             "# gradio comes with the Space SDK (README front matter: sdk_version)."]
    if cpu_torch:
        lines += ["# The CPU build of torch (a CPU Space has no GPU; the CUDA build is ~5 GB).",
                  f"--extra-index-url {TORCH_CPU_INDEX}"]
    return "\n".join(lines + wheel_requirements(wheel)) + "\n"


def _examples_folder() -> Path:
    return Path(str(resources.files("sewer_hf") / "resources" / "space_examples"))


def _space_readme(repo_id: str, model: str, model_url: Optional[str], model_name: str, hub_model: Optional[str],
                  license: str, synthetic: bool, sdk_version: str) -> str:
    import yaml

    meta = {"title": "Sewer defect finder", "emoji": "🚰", "colorFrom": "gray", "colorTo": "yellow",
            "sdk": "gradio", "sdk_version": sdk_version, "app_file": "app.py", "pinned": False,
            "license": license, "short_description": "Find defects in sewer-pipe CCTV frames and footage",
            "suggested_hardware": "cpu-basic",
            "tags": ["sewer-inspection", "sewer-ml", "image-classification", "vit", "dino"]}
    if hub_model:
        meta["models"] = [hub_model]
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    model_text = f"[{model_name}]({model_url})" if model_url else f"`{model_name}`"
    where = ("bundled in this Space (`model/`, with its model card)" if not hub_model
             else "loaded from the Hub at start-up")
    synthetic_text = ("\n> **Trained on synthetic frames.** The model has only seen computer-generated sewer images, "
                      "not real inspection footage: it shows how the tool works, not how well it finds real defects.\n"
                      if synthetic else "")
    return f"""---
{front}---

# Sewer defect finder

Finds the 17 defect and connection classes of the Sewer-ML benchmark (cracks, roots, deposits,
displaced joints, infiltration, ...) in CCTV frames and inspection footage of sewer pipes. It does
the first pass; a person reviews what it reports.

Model: {model_text}, {where}.
{synthetic_text}
* **Frame**: upload a frame or click an example: the verdict (normal, or the defects found, by name),
  where the model looked, and each class's score against its threshold. A legend explains the codes.
* **Footage**: upload a video: the findings with their time span and peak score; click one to jump
  the player there; download the report (HTML, CSV, JSON).

From Python:

```python
from gradio_client import Client, handle_file
client = Client("{repo_id}")
verdict, attention, bars, scores = client.predict(handle_file("frame.png"), api_name="/classify_image")
summary, findings, files, timeline = client.predict(handle_file("inspection.mp4"), api_name="/scan_video")
```

Settings (Space variables): `MODEL_ID` (another classifier: a Hub id), `MAX_VIDEO_SECONDS`
(default 600), `MAX_IMAGE_PIXELS` (default 25,000,000), `SPACE_THREADS` (model threads).

Built with `sewer-hf push-space --model {model}` (the `sewer_hf` package, in `wheels/`).
"""


def build_space_folder(model: str, out_dir: str | os.PathLike, repo_id: str, *, wheel: Optional[str] = None,
                       license: Optional[str] = None, model_name: Optional[str] = None, cpu_torch: bool = True,
                       synthetic: Optional[bool] = None, token: Optional[str] = None) -> Path:
    """Write the Space folder for `model` (a classifier folder, bundled; or a Hub model id)."""
    import gradio

    out = _empty_out_dir(Path(out_dir))
    local = Path(model)
    hub_model = None
    if local.exists():
        release = inspect_model_dir(local, synthetic=synthetic)
        if release.kind != "classifier":
            raise ConfigError(f"--model {model}: a backbone folder; the Space needs a classifier (classifier/)")
        name = model_name or f"{repo_id.split('/')[-1]}-model"
        build_repo_folder(local, out / MODEL_FOLDER, f"{repo_id.split('/')[0]}/{name}", synthetic=synthetic,
                          token=token)
        served, url, synthetic = MODEL_FOLDER, f"https://huggingface.co/spaces/{repo_id}/blob/main/model/README.md", \
            release.synthetic

        license = license or (SPACE_LICENSE if release.synthetic else REAL_DATA_LICENSE)
    else:
        if model.startswith((".", "/")) or "/" not in model:
            raise ConfigError(f"--model {model}: no such folder, and not a Hub id (ORG/NAME)")
        _validate_repo_id(model, option="--model")
        hub_model, served, url, name = model, model, f"https://huggingface.co/{model}", model_name or model
        license = license or SPACE_LICENSE
        synthetic = bool(synthetic)
    (out / "app.py").write_text(APP_PY, encoding="utf-8")
    built = Path(wheel) if wheel else build_wheel(out / "wheels")
    if wheel:
        if not built.is_file() or not built.name.startswith("sewer_hf-") or built.suffix != ".whl":
            raise ConfigError(f"--wheel {wheel}: expected a sewer_hf-*.whl file")
        (out / "wheels").mkdir()
        shutil.copy2(built, out / "wheels" / built.name)
        built = out / "wheels" / built.name
    (out / "requirements.txt").write_text(_requirements_text(built, cpu_torch), encoding="utf-8")
    examples = out / "examples"
    examples.mkdir()
    for path in sorted(_examples_folder().glob("*.jpg")):
        shutil.copy2(path, examples / path.name)
    config = {"model": served, "model_url": url, "model_name": name, "space": repo_id}
    (out / "space_config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    (out / "README.md").write_text(_space_readme(repo_id, model, url, name, hub_model, license, bool(synthetic),
                                                 gradio.__version__), encoding="utf-8")
    return out


def push_space(model: str, repo_id: str, *, private: bool = False, token: Optional[str] = None,
               dry_run: bool = False, out_dir: Optional[str | os.PathLike] = None, wheel: Optional[str] = None,
               license: Optional[str] = None, model_name: Optional[str] = None, cpu_torch: bool = True,
               synthetic: Optional[bool] = None, commit_message: Optional[str] = None,
               endpoint: Optional[str] = None) -> PushResult:
    """Build the Space folder and upload it (`create_repo(repo_type="space", space_sdk="gradio")` +
    `upload_folder`). Without a token it stops before any work; `dry_run` only builds (into `out_dir`)."""
    _validate_repo_id(repo_id)
    if dry_run and out_dir is None:
        raise ConfigError("--dry-run needs --out DIR: the folder to write the Space into")
    token = None if dry_run else resolve_token(token, hint=DRY_RUN_HINT.replace("repo folder", "Space folder"))
    with _work_folder(out_dir) as (folder, keep):
        build_space_folder(model, folder, repo_id, wheel=wheel, license=license, model_name=model_name,
                           cpu_torch=cpu_torch, synthetic=synthetic, token=token)
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        result = PushResult(repo_id, folder if keep else None, files=files)
        if dry_run:
            return result
        from huggingface_hub import HfApi

        api = HfApi(endpoint=endpoint, token=token)
        with hub_errors(repo_id, token, api.endpoint):
            url = api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
            commit = api.upload_folder(repo_id=repo_id, repo_type="space", folder_path=str(folder),
                                       commit_message=commit_message or "Upload the sewer_hf Space")
        result.url, result.commit_url = str(url), getattr(commit, "commit_url", None)
    return result


def add_push_space_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="a classifier folder (bundled into the Space) or the Hub id of a pushed classifier")
    parser.add_argument("--repo-id", required=True, help="ORG/NAME of the Space")
    parser.add_argument("--private", action="store_true", help="create the Space as private")
    parser.add_argument("--dry-run", action="store_true", help="only write the Space folder (into --out); no token")
    parser.add_argument("--out", default=None, help="where to write the Space folder (new or empty; kept after a push)")
    parser.add_argument("--wheel", default=None, help="a prebuilt sewer_hf wheel (default: built from the checkout)")
    parser.add_argument("--model-name", default=None, help="the model's name on the page (default from the repo ids)")
    parser.add_argument("--license", default=None,
                        help=f"the Space's license (default {SPACE_LICENSE}; cc-by-nc-sa-4.0 when a bundled model "
                             "was trained on Sewer-ML)")
    parser.add_argument("--synthetic", action=argparse.BooleanOptionalAction, default=None,
                        help="say the model was trained on synthetic frames (default: detected from the folder)")
    parser.add_argument("--gpu-torch", dest="cpu_torch", action="store_false",
                        help="let pip pick torch's default (CUDA) build instead of the CPU one")
    parser.add_argument("--commit-message", default=None)

    def run(args) -> int:
        result = push_space(args.model, args.repo_id, private=args.private, dry_run=args.dry_run, out_dir=args.out,
                            wheel=args.wheel, license=args.license, model_name=args.model_name,
                            cpu_torch=args.cpu_torch, synthetic=args.synthetic, commit_message=args.commit_message)
        if not args.dry_run:  # the same report as `sewer-hf push`
            return report_push(result, dry_run=False, private=args.private)
        print(f"dry run: wrote the {result.repo_id} Space to {result.folder} ({len(result.files)} files); "
              f"try it with: cd {result.folder} && python app.py")
        return 0

    parser.set_defaults(func=run)
