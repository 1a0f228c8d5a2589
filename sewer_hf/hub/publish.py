"""Release to the Hugging Face Hub: model repos (DINO backbone, classifier) and prepared datasets.

``build_repo_folder`` turns an exported ``backbone/`` or ``classifier/`` folder into a Hub repo
folder: weights, ``config.json``, image processor, ``training_config.yaml``, the metrics file
(``eval.json`` or ``knn.json``) and a model card ``README.md`` rendered with
``huggingface_hub.ModelCard`` from the templates in ``sewer_hf/resources/model_cards/``.
``push_model`` / ``push_dataset`` build that folder and upload it with ``create_repo`` +
``upload_folder``.

The token (``HF_TOKEN`` or a stored ``hf auth login``) is looked up before any work and never
written anywhere: errors from the Hub are re-raised as :class:`HubError` subclasses (one clear
line, no traceback in the CLI) with any token-like text scrubbed out.

Where the artefacts come from (what the recipes write)::

    run/config.yaml                 training config (also classifier/training_config.yaml)
    run/eval.json                   classifier metrics on the val split (finetune)
    run/knn.json                    backbone kNN metrics (pretrain)
    run/classifier/ or run/backbone/
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Optional

from sewer_hf.data import labels as L
from sewer_hf.errors import ConfigError, DataError, SewerHFError
from sewer_hf.synth.dataset import SYNTHETIC_MARKER  # a data folder holding this file is synthetic

CARD_TEMPLATES = "model_cards"  # folder under sewer_hf/resources/
TRAINING_CONFIG_NAME = "training_config.yaml"
MODEL_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
# Sewer-ML is CC BY-NC-SA 4.0: weights trained on it inherit its terms. Synthetic-only models
# carry the project's own license.
REAL_DATA_LICENSE = "cc-by-nc-sa-4.0"
SYNTHETIC_DATA_LICENSE = "apache-2.0"
DATASET_LICENSE = "cc-by-nc-sa-4.0"
REAL_DATASET_ID = "sewer-ml"
SYNTHETIC_DATASET_ID = "sewer-ml-synthetic"
REPORTED_METRICS = ("F2_CIW", "F1_Normal", "mAP")
HUB_SPLIT_NAMES = {"Train": "train", "Val": "validation", "Test": "test"}
SHARD_PATTERN = re.compile(r"^(?P<split>Train|Val|Test)-(?P<index>\d{5})-of-(?P<total>\d{5})\.parquet$")
TOKEN_HELP = ("set the HF_TOKEN environment variable to a token with write access "
              "(https://huggingface.co/settings/tokens) or run `hf auth login`")
DRY_RUN_HINT = "; or use --dry-run to only build the repo folder"
RECIPE_HINT = "; or drop --push_to_hub and push the result later with `sewer-hf push`"
_TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]{8,}")


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------

class HubError(SewerHFError):
    """The Hub refused or could not be reached; the message says what to do."""


class HubAuthError(HubError):
    """No token, or the Hub rejected it (401)."""


class HubPermissionError(HubError):
    """The token may not write to that repository or namespace (403)."""


class HubConflictError(HubError):
    """The repository exists, or a concurrent change conflicts (409)."""


class HubConnectionError(HubError):
    """The Hub endpoint could not be reached."""


def scrub(text: str, token: Optional[str]) -> str:
    """``text`` with the token (and anything shaped like a Hub token) replaced by ``***``."""
    if token:
        text = text.replace(token, "***")
    return _TOKEN_LIKE.sub("hf_***", text)


def resolve_token(token: Optional[str] = None, hint: str = DRY_RUN_HINT) -> str:
    """The token to push with: the one given, else ``HF_TOKEN`` or the stored login."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise HubAuthError(f"no Hugging Face token found: {TOKEN_HELP}{hint}")
    return token


@contextlib.contextmanager
def hub_errors(repo_id: str, token: Optional[str], endpoint: str, create_only: bool = False) -> Iterator[None]:
    """Translate Hub and network errors into one-line :class:`HubError` messages without the token."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        yield
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        detail = scrub((exc.server_message or str(exc).splitlines()[0]).strip(), token)
        detail = f" (Hub says: {detail})" if detail else ""
        if status == 401:
            raise HubAuthError(f"{endpoint} rejected the token (401): it is invalid or expired; create a token "
                               "with write access at https://huggingface.co/settings/tokens, then set HF_TOKEN "
                               f"or run `hf auth login`{detail}") from None
        if status == 403:
            raise HubPermissionError(
                f"{repo_id}: the token may not write there (403): the repository or its namespace belongs to "
                f"someone else, or the token is read-only. Use a write token of that namespace's owner or another "
                f"--repo-id{detail}") from None
        if status == 409:
            hint = ("it already exists; drop --create-only to add a commit to it" if create_only else
                    "the repository exists under another type or a concurrent change conflicts; retry, "
                    "or pick another --repo-id")
            raise HubConflictError(f"{repo_id}: conflict (409): {hint}{detail}") from None
        raise HubError(f"{repo_id}: the Hub answered {status}{detail}") from None
    except ValueError as exc:
        if not str(exc).startswith("Invalid metadata"):
            raise
        raise HubError(f"{repo_id}: the Hub rejected the card metadata: {scrub(str(exc), token)}") from None
    except OfflineModeIsEnabled:
        raise HubConnectionError(f"could not reach {endpoint}: HF_HUB_OFFLINE is set; unset it to push") from None
    except httpx2.TransportError as exc:
        raise HubConnectionError(
            f"could not reach {endpoint} ({type(exc).__name__}: {scrub(str(exc), token)}); check the network, "
            "a proxy, or HF_ENDPOINT") from None


# ------------------------------------------------------------------------------------------------
# What a model folder holds
# ------------------------------------------------------------------------------------------------

@dataclass
class ModelRelease:
    """An exported model folder and the run artefacts found next to it."""

    model_dir: Path
    kind: str  # "classifier" or "backbone"
    config: dict[str, Any]
    training_config_path: Optional[Path] = None
    training_config: dict[str, Any] = field(default_factory=dict)
    metrics_path: Optional[Path] = None  # eval.json (classifier) or knn.json (backbone)
    metrics: Optional[dict[str, Any]] = None
    synthetic: bool = False


def _first_file(*candidates: Path) -> Optional[Path]:
    return next((p for p in candidates if p.is_file()), None)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable JSON file ({exc})") from None


def data_looks_synthetic(data: Any) -> bool:
    """Whether a training config's ``data`` names synthetic frames: ``null`` (the recipes then
    generate a synthetic set), a path with "synth" in it, or a folder marked as synthetic (a
    ``synthetic.json`` file, or the quickstart's record of generating it)."""
    if data is None:
        return True
    path = Path(str(data))
    if any("synth" in part.lower() for part in path.parts):
        return True
    if (path / SYNTHETIC_MARKER).is_file():
        return True
    stage = path / "stage.json"  # written by `sewer-hf quickstart` after generating the frames
    if stage.is_file():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            return "frames" in (json.loads(stage.read_text()).get("info") or {})
    return False


def inspect_model_dir(model_dir: str | os.PathLike, synthetic: Optional[bool] = None) -> ModelRelease:
    """Find the config, training config and metrics of an exported model folder; ``synthetic``
    overrides the detection from the training config."""
    import yaml

    folder = Path(model_dir)
    if not folder.is_dir():
        raise ConfigError(f"--model {folder}: no such folder; expected an exported classifier/ or backbone/ folder")
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"--model {folder}: missing {', '.join(missing)}; expected an exported classifier/ or "
                          "backbone/ folder (written by the recipes or sewer_hf.models.hf_export)")
    config = _read_json(folder / "config.json")
    architectures = config.get("architectures") or []
    if "ViTForImageClassification" in architectures:
        kind = "classifier"
    elif "ViTModel" in architectures:
        kind = "backbone"
    else:
        raise ConfigError(f"{folder / 'config.json'}: architectures={architectures}; expected ViTForImageClassification "
                          "(a classifier) or ViTModel (a backbone)")
    release = ModelRelease(folder, kind, config)
    release.training_config_path = _first_file(folder / TRAINING_CONFIG_NAME, folder.parent / "config.yaml")
    if release.training_config_path:
        try:
            release.training_config = yaml.safe_load(release.training_config_path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise DataError(f"{release.training_config_path}: not valid YAML ({exc})") from None
    metrics_name = "eval.json" if kind == "classifier" else "knn.json"
    release.metrics_path = _first_file(folder / metrics_name, folder.parent / metrics_name)
    if release.metrics_path:
        release.metrics = _read_json(release.metrics_path)
    if synthetic is None:
        synthetic = bool(release.training_config) and data_looks_synthetic(release.training_config.get("data"))
    release.synthetic = synthetic
    return release


# ------------------------------------------------------------------------------------------------
# Model cards
# ------------------------------------------------------------------------------------------------

def template_path(name: str) -> str:
    """Path of a card template shipped in ``sewer_hf/resources/model_cards/`` (``classifier``,
    ``backbone`` or ``dataset``)."""
    path = resources.files("sewer_hf") / "resources" / CARD_TEMPLATES / f"{name}.md"
    return str(path)


def _looks_like_hub_id(value: Any) -> bool:
    return (isinstance(value, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", value) is not None
            and not Path(value).exists())


def _arch_title(config: dict, arch: Optional[str]) -> str:
    names = {192: "ViT-T/16", 384: "ViT-S/16"}
    return names.get(config.get("hidden_size"), arch or "ViT")


def _classes() -> list[dict[str, str]]:
    return [{"code": c, "name": L.CLASS_NAMES[c]} for c in L.CLASSES]


def _training_summary(release: ModelRelease) -> str:
    tc = release.training_config
    if not tc:
        return "The training configuration of this model was not recorded."
    data = ("synthetic Sewer-ML-style frames" if release.synthetic
            else f"the Sewer-ML `{tc.get('split', 'Train')}` split")
    common = (f"{tc.get('epochs')} epochs, batch {tc.get('batch_size')} per device "
              f"(× {tc.get('gradient_accumulation_steps', 1)} accumulation), AdamW, base lr {tc.get('base_lr')} "
              f"× global batch / 256, {tc.get('image_size')}-px inputs, mixed precision `{tc.get('mixed_precision')}`")
    if release.kind == "classifier":
        sewer = release.config.get("sewer_hf") or {}
        mode = ("linear probe on the frozen backbone" if tc.get("linear_probe") else
                "fine-tuning of a pretrained backbone with a new linear head" if tc.get("backbone") else
                "supervised training from scratch")
        fraction = tc.get("fraction", 1.0)
        best = sewer.get("best_epoch")
        return (f"{mode.capitalize()} on {100 * float(fraction):g} % of {data} (stratified), validated on "
                f"`{tc.get('val_split', 'Val')}`: {common}; MultiStep lr ×{tc.get('lr_gamma')} at epochs "
                f"{tc.get('lr_milestones')}"
                + (f" after a {tc.get('warmup_epochs')}-epoch linear warm-up" if tc.get("warmup_epochs") else "")
                + (f"; the weights shipped are a moving average (decay {tc.get('ema_decay')})" if tc.get("ema_decay") else "")
                + "."
                + (f" Epoch chosen: {best}." if best is not None else ""))
    crops = tc.get("n_local_crops", 0)
    return (f"DINO self-distillation on {data} (no labels): {common}; linear warm-up "
            f"{tc.get('warmup_epochs')} epochs then cosine to {tc.get('min_lr')}; teacher EMA "
            f"{tc.get('momentum_teacher')} → {tc.get('momentum_teacher_end')}; projector "
            f"{tc.get('hidden_dim')}-{tc.get('hidden_dim')}-{tc.get('bottleneck_dim')}, {tc.get('out_dim')} "
            f"prototypes; two global views (scale {tc.get('global_crop_scale')})"
            + (f" and {crops} local crops" if crops else ", no multi-crop") + ".")


def render_model_card(release: ModelRelease, repo_id: str, base_model: Optional[str] = None,
                      license: Optional[str] = None, dataset_id: Optional[str] = None):
    """The ``huggingface_hub.ModelCard`` of a release: metadata (license, pipeline tag, tags,
    datasets, base model, model-index from eval.json / knn.json) and the rendered template."""
    import yaml
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    tc, metrics, kind = release.training_config, release.metrics, release.kind
    arch = tc.get("arch") or (release.config.get("sewer_hf") or {}).get("arch")
    model_name = repo_id.split("/")[-1]
    dataset_id = dataset_id or (SYNTHETIC_DATASET_ID if release.synthetic else REAL_DATASET_ID)
    dataset_pretty = "synthetic Sewer-ML-style frames" if release.synthetic else "Sewer-ML"
    license = license or (SYNTHETIC_DATA_LICENSE if release.synthetic else REAL_DATA_LICENSE)
    tags = ["vision", "vit", "dino", "self-supervised", "sewer-inspection", "sewer-ml", "sewer_hf"]
    tags += ["image-classification", "multi-label-classification"] if kind == "classifier" else ["image-feature-extraction"]
    if release.synthetic:
        tags.append("synthetic-data")

    if kind == "classifier":
        backbone = tc.get("backbone")
        base_model = base_model or (backbone if _looks_like_hub_id(backbone) else None)
        if base_model:
            base_text = f"[{base_model}](https://huggingface.co/{base_model}) (DINO-pretrained)."
        elif backbone:
            base_text = "a DINO-pretrained backbone from a local run (not published)."
        else:
            base_text = "none: trained from random initialisation (the supervised baseline)."
    else:
        base_text = None

    split, results, task_name, eval_extra = None, [], None, {}
    if metrics and kind == "classifier":
        split = metrics.get("split", tc.get("val_split", "Val"))
        task_name = "Multi-label sewer defect classification"
        results = [{"name": m, "value": float(metrics[m])} for m in REPORTED_METRICS if m in metrics]
        tuned = metrics.get("with_tuned_thresholds_on_same_split") or {}
        eval_extra["tuned_results"] = [{"name": m, "value": float(tuned[m])} for m in REPORTED_METRICS if m in tuned]
        eval_extra["eval_epoch"] = metrics.get("epoch")
    elif metrics and kind == "backbone":
        split = metrics.get("eval_split", "Val")
        task_name = f"kNN (k={metrics.get('k')}) multi-label sewer defect classification on frozen features"
        pretrained, random_init = metrics.get("pretrained") or {}, metrics.get("random_init") or {}
        results = [{"name": m, "value": float(pretrained[m]),
                    "baseline": float(random_init[m]) if m in random_init else None}
                   for m in REPORTED_METRICS if m in pretrained]
        eval_extra.update(knn_k=metrics.get("k"), knn_temperature=metrics.get("temperature"),
                          knn_n_train=metrics.get("n_train"), eval_split_size=metrics.get("n_eval"))
    eval_results = [
        EvalResult(task_type="image-classification", task_name=task_name, dataset_type=dataset_id,
                   dataset_name=dataset_pretty, dataset_split=split, metric_type=r["name"].lower(),
                   metric_name=r["name"], metric_value=r["value"])
        for r in results
    ] or None

    card_data = ModelCardData(
        license=license, library_name="transformers",
        pipeline_tag="image-classification" if kind == "classifier" else "image-feature-extraction",
        tags=tags, datasets=[dataset_id], base_model=base_model if kind == "classifier" else None,
        model_name=model_name, eval_results=eval_results,
    )
    origin = {
        "classifier": "Fine-tuned from a DINO-pretrained backbone." if tc.get("backbone") else
        "Trained from scratch (the supervised baseline of the paper).",
        "backbone": "",
    }[kind]
    if kind == "classifier" and tc.get("linear_probe"):
        origin = "A linear probe on a frozen DINO-pretrained backbone."
    return ModelCard.from_template(
        card_data, template_path=template_path(kind), repo_id=repo_id, title=model_name, arch=arch or "vit_tiny",
        arch_title=_arch_title(release.config, arch), image_size=release.config.get("image_size"),
        hidden_size=release.config.get("hidden_size"), synthetic=release.synthetic, origin=origin,
        results=results, eval_split=split, dataset_pretty_name=dataset_pretty, classes=_classes(),
        training_summary=_training_summary(release), base_model_text=base_text,
        training_config_yaml=yaml.safe_dump(tc, sort_keys=False).strip() if tc else "# not recorded",
        **{"tuned_results": [], "eval_epoch": None, "knn_k": None, "knn_temperature": None,
           "knn_n_train": None, "eval_split_size": None, **eval_extra},
    )


# ------------------------------------------------------------------------------------------------
# Model repos
# ------------------------------------------------------------------------------------------------

def _empty_out_dir(out_dir: Path) -> Path:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"--out {out_dir}: exists and is not an empty folder; choose a new or empty folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def _write_text(path: Path, text: str, token: Optional[str]) -> None:
    path.write_text(scrub(text, token) if token else text, encoding="utf-8")


def build_repo_folder(model_dir: str | os.PathLike, out_dir: str | os.PathLike, repo_id: str, *,
                      base_model: Optional[str] = None, synthetic: Optional[bool] = None,
                      license: Optional[str] = None, dataset_id: Optional[str] = None,
                      token: Optional[str] = None) -> Path:
    """Write the Hub repo folder of an exported model into ``out_dir`` (new or empty): the model
    files, ``README.md`` (card), ``training_config.yaml`` and ``eval.json`` / ``knn.json``.
    Text files never contain ``token``."""
    release = inspect_model_dir(model_dir, synthetic=synthetic)
    out = _empty_out_dir(Path(out_dir))
    for item in sorted(release.model_dir.iterdir()):  # weights, config, processor (+ any extras)
        if item.is_file() and item.name not in ("README.md", TRAINING_CONFIG_NAME):
            if item.suffix in (".json", ".yaml", ".txt", ".md"):
                _write_text(out / item.name, item.read_text(encoding="utf-8"), token)
            else:
                shutil.copy2(item, out / item.name)
    if release.training_config_path:
        _write_text(out / TRAINING_CONFIG_NAME, release.training_config_path.read_text(encoding="utf-8"), token)
    if release.metrics_path:
        _write_text(out / release.metrics_path.name, release.metrics_path.read_text(encoding="utf-8"), token)
    card = render_model_card(release, repo_id, base_model=base_model, license=license, dataset_id=dataset_id)
    _write_text(out / "README.md", str(card), token)
    return out


@dataclass
class PushResult:
    repo_id: str
    folder: Optional[Path]  # the repo folder (None when it was a temporary one)
    url: Optional[str] = None  # repo URL (None for a dry run)
    commit_url: Optional[str] = None
    files: list[str] = field(default_factory=list)


def _validate_repo_id(repo_id: str, option: str = "--repo-id") -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ConfigError(f"{option} {repo_id!r}: {exc}") from None
    if "/" not in repo_id:
        raise ConfigError(f"{option} {repo_id!r}: expected ORG/NAME (your user name or an organisation, then a name)")


def _upload(folder: Path, repo_id: str, repo_type: str, private: bool, token: str, commit_message: str,
            endpoint: Optional[str], create_only: bool) -> tuple[str, Optional[str]]:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    with hub_errors(repo_id, token, api.endpoint, create_only=create_only):
        url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=not create_only)
        commit = api.upload_folder(repo_id=repo_id, repo_type=repo_type, folder_path=str(folder),
                                   commit_message=commit_message)
    return str(url), getattr(commit, "commit_url", None)


@contextlib.contextmanager
def _work_folder(out_dir: Optional[str | os.PathLike]) -> Iterator[tuple[Path, bool]]:
    if out_dir is not None:
        yield Path(out_dir), True
        return
    with tempfile.TemporaryDirectory(prefix="sewer_hf_push_") as tmp:
        yield Path(tmp) / "repo", False


def push_model(model_dir: str | os.PathLike, repo_id: str, *, private: bool = False, token: Optional[str] = None,
               commit_message: Optional[str] = None, dry_run: bool = False,
               out_dir: Optional[str | os.PathLike] = None, base_model: Optional[str] = None,
               synthetic: Optional[bool] = None, license: Optional[str] = None, dataset_id: Optional[str] = None,
               create_only: bool = False, endpoint: Optional[str] = None) -> PushResult:
    """Build the repo folder of ``model_dir`` and upload it to ``repo_id`` (``create_repo`` +
    ``upload_folder``). ``dry_run`` only writes the folder (into ``out_dir``, required) and needs
    no token. ``create_only`` fails when the repository already exists."""
    _validate_repo_id(repo_id)
    if dry_run and out_dir is None:
        raise ConfigError("--dry-run needs --out DIR: the folder to write the repo into")
    token = None if dry_run else resolve_token(token)  # before any work
    with _work_folder(out_dir) as (folder, keep):
        build_repo_folder(model_dir, folder, repo_id, base_model=base_model, synthetic=synthetic,
                          license=license, dataset_id=dataset_id, token=token)
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        result = PushResult(repo_id, folder if keep else None, files=files)
        if dry_run:
            return result
        kind = inspect_model_dir(model_dir, synthetic=synthetic).kind
        message = commit_message or f"Upload sewer_hf {kind}"
        result.url, result.commit_url = _upload(folder, repo_id, "model", private, token, message, endpoint,
                                                create_only)
    return result


# ------------------------------------------------------------------------------------------------
# Dataset repos (prepared shards)
# ------------------------------------------------------------------------------------------------

@dataclass
class PreparedSplit:
    name: str  # Train / Val / Test
    shards: list[Path]
    manifest_path: Path
    manifest: dict[str, Any]

    @property
    def rows(self) -> int:
        return sum(int(s.get("rows", 0)) for s in self.manifest.get("shards", {}).values())


def find_prepared_splits(data_dir: str | os.PathLike) -> list[PreparedSplit]:
    """The complete prepared splits in ``data_dir`` (``sewer-hf prepare`` output)."""
    folder = Path(data_dir)
    if not folder.is_dir():
        raise DataError(f"--data {folder}: no such folder; expected `sewer-hf prepare` output")
    found: dict[str, dict[int, Path]] = {}
    totals: dict[str, int] = {}
    for path in sorted(folder.iterdir()):
        match = SHARD_PATTERN.match(path.name)
        if match:
            split = match["split"]
            found.setdefault(split, {})[int(match["index"])] = path
            totals.setdefault(split, int(match["total"]))
            if int(match["total"]) != totals[split]:
                raise DataError(f"{folder}: {split} shards disagree on their count ({path.name} vs "
                                f"{totals[split]}); delete the stale ones and re-run `sewer-hf prepare`")
    if not found:
        raise DataError(f"{folder}: no prepared shards (<Split>-00000-of-0000N.parquet); run `sewer-hf prepare` first")
    splits = []
    for split in (s for s in L.SPLITS if s in found):
        missing = [i for i in range(totals[split]) if i not in found[split]]
        manifest_path = folder / f"{split}-prepare.json"
        if not manifest_path.is_file():
            raise DataError(f"{folder}: {split} shards but no {manifest_path.name}; re-run `sewer-hf prepare`")
        manifest = _read_json(manifest_path)
        unlisted = [p.name for p in found[split].values() if p.name not in manifest.get("shards", {})]
        if missing or unlisted:
            problem = (f"shards {missing[:5]} of {totals[split]} are missing" if missing
                       else f"{unlisted[:3]} are not in {manifest_path.name}")
            raise DataError(f"{folder}: {split}: {problem} (an unfinished prepare? re-run `sewer-hf prepare`)")
        splits.append(PreparedSplit(split, [found[split][i] for i in sorted(found[split])], manifest_path, manifest))
    return splits


FEATURE_MEANINGS = {
    "image": "the frame (encoded bytes)",
    "labels": "17 multi-hot defect labels (class order below)",
    "filename": "the Sewer-ML file name of the frame",
    "water_level": "water level in the pipe, % of its height (Sewer-ML `WaterLevel`)",
    "defect": "1 if any defect is present, else 0 (Sewer-ML `Defect`)",
}


def _feature_rows(features) -> list[dict[str, str]]:
    """``datasets`` features -> rows of (name, short type: image, string, int8 × 17, ..., meaning)."""
    rows = []
    for spec in features._to_yaml_list():
        if "list" in spec:
            inner = spec["list"] if isinstance(spec["list"], str) else "struct"
            kind = f"{inner} × {spec['length']}" if spec.get("length") else f"list of {inner}"
        else:
            kind = str(spec.get("dtype", "struct"))
        rows.append({"name": spec["name"], "type": kind, "meaning": FEATURE_MEANINGS.get(spec["name"], "")})
    return rows


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "10M<n<100M"


def render_dataset_card(splits: list[PreparedSplit], repo_id: str, synthetic: bool = False,
                        features=None):
    """The ``huggingface_hub.DatasetCard`` of prepared shards: license, citation, features and
    a ``configs`` mapping of Hub split names to the shard files, so ``load_dataset(repo_id)`` works."""
    import datasets
    import pyarrow.parquet as pq
    from huggingface_hub import DatasetCard, DatasetCardData

    if features is None:
        features = datasets.Features.from_arrow_schema(pq.read_schema(splits[0].shards[0]))
    total = sum(s.rows for s in splits)
    pretty = "Sewer-ML (synthetic frames, sewer_hf)" if synthetic else "Sewer-ML (prepared Parquet shards)"
    tags = ["sewer-inspection", "sewer-ml", "multi-label", "sewer_hf"] + (["synthetic"] if synthetic else [])
    card_data = DatasetCardData(
        license=DATASET_LICENSE, pretty_name=pretty, task_categories=["image-classification"],
        task_ids=["multi-label-image-classification"], size_categories=[_size_category(total)], tags=tags,
        configs=[{"config_name": "default", "data_files": [
            {"split": HUB_SPLIT_NAMES[s.name], "path": f"{s.name}-*.parquet"} for s in splits]}],
        dataset_info={"features": features._to_yaml_list()},
    )
    skipped = sum(len(s.manifest.get("missing", [])) + sum(len(v.get("skipped", []))
                                                           for v in s.manifest.get("shards", {}).values())
                  for s in splits)
    return DatasetCard.from_template(
        card_data, template_path=template_path("dataset"), repo_id=repo_id, synthetic=synthetic,
        image_size=splits[0].manifest.get("size"), features=_feature_rows(features), classes=_classes(),
        splits=[{"name": HUB_SPLIT_NAMES[s.name], "rows": s.rows, "shards": len(s.shards)} for s in splits],
        skipped=skipped,
    )


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard link (no extra disk for GBs of shards), else symlink (upload_folder follows it), else copy."""
    for make in (os.link, os.symlink):
        try:
            make(src.resolve(), dst)
            return
        except OSError:
            continue
    shutil.copy2(src, dst)


def build_dataset_folder(data_dir: str | os.PathLike, out_dir: str | os.PathLike, repo_id: str, *,
                         synthetic: Optional[bool] = None, token: Optional[str] = None) -> Path:
    """Write the Hub dataset folder: the shards (linked, not copied), each split's
    ``<Split>-prepare.json`` without the local source path, and the card ``README.md``."""
    splits = find_prepared_splits(data_dir)
    if synthetic is None:
        synthetic = any(data_looks_synthetic(s.manifest.get("source", "")) for s in splits)
    out = _empty_out_dir(Path(out_dir))
    for split in splits:
        for shard in split.shards:
            _link_or_copy(shard, out / shard.name)
        manifest = {k: v for k, v in split.manifest.items() if k != "source"}  # a local path of the user's
        _write_text(out / split.manifest_path.name, json.dumps(manifest, indent=1), token)
    _write_text(out / "README.md", str(render_dataset_card(splits, repo_id, synthetic=synthetic)), token)
    return out


def push_dataset(data_dir: str | os.PathLike, repo_id: str, *, private: bool = True, token: Optional[str] = None,
                 commit_message: Optional[str] = None, dry_run: bool = False,
                 out_dir: Optional[str | os.PathLike] = None, synthetic: Optional[bool] = None,
                 create_only: bool = False, endpoint: Optional[str] = None) -> PushResult:
    """Upload prepared Sewer-ML shards as a dataset repo, private by default (Sewer-ML is
    CC BY-NC-SA 4.0 and handed out by its authors on request)."""
    _validate_repo_id(repo_id)
    if dry_run and out_dir is None:
        raise ConfigError("--dry-run needs --out DIR: the folder to write the repo into")
    token = None if dry_run else resolve_token(token)
    with _work_folder(out_dir) as (folder, keep):
        build_dataset_folder(data_dir, folder, repo_id, synthetic=synthetic, token=token)
        files = sorted(p.name for p in folder.iterdir())
        result = PushResult(repo_id, folder if keep else None, files=files)
        if dry_run:
            return result
        result.url, result.commit_url = _upload(folder, repo_id, "dataset", private, token,
                                                commit_message or "Upload prepared Sewer-ML shards (sewer_hf)",
                                                endpoint, create_only)
    return result


# ------------------------------------------------------------------------------------------------
# Recipes: --push_to_hub --hub_model_id ID
# ------------------------------------------------------------------------------------------------

def check_push_config(cfg) -> None:
    """At the start of a run: fail now, not after training, if the final push cannot happen."""
    if not getattr(cfg, "push_to_hub", False):
        return
    if not cfg.hub_model_id:
        raise ConfigError("push_to_hub is set but hub_model_id is empty; pass --hub_model_id ORG/NAME")
    _validate_repo_id(cfg.hub_model_id, option="hub_model_id")
    resolve_token(hint=RECIPE_HINT)


def push_after_run(cfg, model_dir: str | os.PathLike) -> Optional[str]:
    """At the end of a run (main process): push ``model_dir`` to ``cfg.hub_model_id`` as a private
    repo (``hub_private_repo: false`` in the config makes it public). Returns the repo URL."""
    if not getattr(cfg, "push_to_hub", False):
        return None
    try:
        result = push_model(model_dir, cfg.hub_model_id, private=getattr(cfg, "hub_private_repo", True),
                            commit_message=f"Upload from {Path(cfg.output_dir).name} (sewer_hf)")
    except HubError as exc:
        raise type(exc)(f"{exc}. The model is saved in {model_dir}; push it later with "
                        f"`sewer-hf push --model {model_dir} --repo-id {cfg.hub_model_id}`") from None
    print(f"pushed {model_dir} to {result.url}")
    return result.url


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------

def report_push(result: PushResult, dry_run: bool, private: bool) -> int:
    if dry_run:
        print(f"dry run: wrote the {result.repo_id} repo folder to {result.folder} ({len(result.files)} files: "
              f"{', '.join(result.files)}); nothing was sent to the Hub")
    else:
        print(f"pushed {len(result.files)} files to {result.url} ({'private' if private else 'public'})")
        if result.commit_url:
            print(f"commit: {result.commit_url}")
    return 0


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo-id", required=True, help="ORG/NAME of the Hub repository")
    parser.add_argument("--dry-run", action="store_true", help="only write the repo folder (into --out); no token needed")
    parser.add_argument("--out", default=None, help="where to write the repo folder (new or empty; kept after a push)")
    parser.add_argument("--commit-message", default=None)
    parser.add_argument("--create-only", action="store_true", help="fail if the repository already exists")
    parser.add_argument("--synthetic", action=argparse.BooleanOptionalAction, default=None,
                        help="say the data was synthetic (or, with --no-synthetic, real); default: detected")


def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="an exported classifier/ or backbone/ folder")
    _add_common(parser)
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--base-model", default=None, help="Hub id of the backbone a classifier was fine-tuned from")
    parser.add_argument("--license", default=None, help=f"default: {REAL_DATA_LICENSE} (Sewer-ML's terms), "
                                                         f"{SYNTHETIC_DATA_LICENSE} for synthetic-data models")
    parser.add_argument("--dataset-id", default=None, help="dataset id for the card's `datasets` metadata")

    def run(args) -> int:
        result = push_model(args.model, args.repo_id, private=args.private, commit_message=args.commit_message,
                            dry_run=args.dry_run, out_dir=args.out, base_model=args.base_model,
                            synthetic=args.synthetic, license=args.license, dataset_id=args.dataset_id,
                            create_only=args.create_only)
        return report_push(result, args.dry_run, args.private)

    parser.set_defaults(func=run)


def add_push_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="a `sewer-hf prepare` output folder")
    _add_common(parser)
    parser.add_argument("--public", action="store_true",
                        help="create the repository as public (default private: Sewer-ML is CC BY-NC-SA 4.0 "
                             "and given out by its authors on request)")

    def run(args) -> int:
        result = push_dataset(args.data, args.repo_id, private=not args.public, commit_message=args.commit_message,
                              dry_run=args.dry_run, out_dir=args.out, synthetic=args.synthetic,
                              create_only=args.create_only)
        return report_push(result, args.dry_run, not args.public)

    parser.set_defaults(func=run)
