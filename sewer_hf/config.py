"""Training configurations: the paper's defaults in one place, YAML files, `--key value` overrides.

A recipe reads `--config FILE.yaml` and then any number of `--key value` pairs, each naming a
field of the config dataclass. Unknown keys and values of the wrong type are errors that name
the key, the file and what was expected.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, TypeVar

import yaml

from sewer_hf.errors import ConfigError

T = TypeVar("T")

FEEDS = ("auto", "batched", "batched_thread", "per_image")
# Keys of earlier versions, and what replaced them: named in the error a config using one gets.
RENAMED_KEYS = {
    "gpu_augment": "feed (false -> feed: per_image; true or unset -> feed: auto or batched)",
    "device_feed": "feed (thread -> feed: batched_thread; inline -> feed: batched; auto -> feed: auto)",
    "gpu_augment_dtype": "augment_dtype (the same values)",
}


@dataclass
class RunConfig:
    """Keys every recipe shares: data, loop length, precision, logging and checkpoints."""

    # --- data -----------------------------------------------------------------------------
    data: Optional[str] = None  # Sewer-ML root, prepared shards, datasets dir, parquet, imagefolder; None = synthetic
    split: str = "Train"
    val_split: str = "Val"  # held-out split of the same `data`, if present
    synthetic_train: int = 512  # size of the auto-generated synthetic set when `data` is None
    synthetic_val: int = 128
    synthetic_size: Optional[str] = "352x288"
    synthetic_defect_fraction: Optional[float] = None  # None = the real Sewer-ML share of defect frames
    # DataLoader worker processes; None = chosen per machine: on a CPU, decoding a few frames is
    # timed first and cheap frames (prepared small shards) are read in the main process so the
    # workers do not take cores from the model step; on CUDA, the cores left per process
    num_workers: Optional[int] = None
    # torch threads on a CPU; None = the cores this process may use (split between processes
    # and loader workers). On a busy 2-core machine 2 threads can be slower than 1: measure
    cpu_threads: Optional[int] = None
    # decoded training frames kept in memory after their first read, in MB per process, when
    # the loader reads in the training process (0 workers: prepared small shards on a CPU) and
    # the whole split fits; None = up to a quarter of the memory available, at most 4096; 0 = off
    keep_frames_mb: Optional[int] = None
    # where a training batch is made (sewer_hf.feed.pipeline.resolve_feed): auto = the paper's
    # augmentations drawn batched in the training process, the CPU included (loader workers
    # only decode), with the next batches prepared in a background thread on CUDA when there is
    # no gradient accumulation; batched = the same, always inline; batched_thread = always in
    # the thread; per_image = PIL/torchvision per image in the loader workers
    feed: str = "auto"
    # batched feeds: the workers hand over the encoded bytes and each batch is decoded on the
    # device (nvjpeg for JPEG, e.g. `sewer-hf prepare --format jpeg` shards; the CPU otherwise)
    decode_on_device: bool = False
    augment_dtype: str = "auto"  # batched colour ops: auto = float16 on CUDA (half the memory traffic), else float32
    compile_augment: bool = False  # torch.compile the batched colour ops too (fused kernels; draws, crops, blur, equalize stay eager)
    # --- model ----------------------------------------------------------------------------
    arch: str = "vit_tiny"  # vit_tiny (ViT-T/16) or vit_small (ViT-S/16)
    image_size: int = 224  # paper: 224
    drop_path_rate: float = 0.1
    # --- loop -----------------------------------------------------------------------------
    epochs: int = 35
    max_steps: Optional[int] = None  # stop early after this many optimizer steps
    batch_size: int = 64  # per device; paper: the largest that fits a T4
    gradient_accumulation_steps: int = 1
    # --- precision and speed ------------------------------------------------------------------
    mixed_precision: str = "no"  # no | fp16 | bf16
    compile: bool = False  # torch.compile the forward passes (ViT-S DINO step on an H200: 2,349 -> 3,398 img/s)
    tf32: bool = True  # TF32 matmuls for the fp32 parts on Ampere and newer GPUs
    seed: int = 0
    # --- logging, checkpoints, release ----------------------------------------------------------
    output_dir: str = "runs/run"
    log_every: int = 1  # metrics.jsonl line every N optimizer steps (per step by default)
    report_to: Optional[str] = "tensorboard"  # accelerate tracker name, or none
    save_every_steps: int = 500
    keep_last: int = 3
    resume_from_checkpoint: Optional[str] = None  # "latest" or a checkpoint folder
    # a non-empty output_dir is refused unless this (it is cleared first) or resume_from_checkpoint
    overwrite_output_dir: bool = False
    push_to_hub: bool = False  # at the end of the run, push the exported model (needs HF_TOKEN or a login)
    hub_model_id: Optional[str] = None
    hub_private_repo: bool = True

    def validate(self) -> None:
        _check_choice("arch", self.arch, ("vit_tiny", "vit_small", "vit_tiny_patch16_224", "vit_small_patch16_224"))
        _check_choice("mixed_precision", self.mixed_precision, ("no", "fp16", "bf16"))
        _check_choice("feed", self.feed, FEEDS)  # combinations: sewer_hf.feed.pipeline.resolve_feed
        _check_choice("augment_dtype", self.augment_dtype, ("auto", "float32", "float16"))
        _check_domains(self)  # every numeric key against its DOMAINS entry (subclass keys included)
        if self.synthetic_size is not None:
            _check_size_text("synthetic_size", self.synthetic_size)


@dataclass
class PretrainConfig(RunConfig):
    """DINO pretraining. Defaults are the paper's (Sec. 3 and App. A) or, where it is silent,
    the official DINO recipe's; each says which."""

    output_dir: str = "runs/pretrain"
    epochs: int = 35  # paper
    # --- DINO head ------------------------------------------------------------------------
    out_dim: int = 32768  # paper: 32,768 prototypes
    hidden_dim: int = 2048  # paper: projector MLP 2048-2048-256
    bottleneck_dim: int = 256
    norm_last_layer: bool = True  # DINO default; official ViT-S recipe trains it (False)
    # --- views ----------------------------------------------------------------------------
    global_crop_scale: tuple[float, float] = (0.5, 1.0)  # paper App. A
    n_local_crops: int = 0  # paper: two global views only, no multi-crop
    local_crop_size: int = 96
    local_crop_scale: tuple[float, float] = (0.05, 0.4)  # DINO (its global crops start at 0.4; the paper's at 0.5)
    augmentation: str = "paper"  # paper (App. A) | crops (crops and flips only; sewer_hf.feed.spec.PRETRAIN_AUGMENTATIONS)
    # batched feeds: loader workers only decode and resize to this square size; None = 8/7 of
    # image_size rounded up to a multiple of 8 (256 for 224: room for the crops, no more pixels)
    decode_size: Optional[int] = None
    # --- optimisation ---------------------------------------------------------------------
    base_lr: float = 5e-5  # paper: lr = 5e-5 * global_batch / 256
    warmup_epochs: float = 10  # paper: linear warm-up for 10 epochs ...
    start_warmup_lr: float = 3e-5  # ... starting at 3e-5
    min_lr: float = 1e-6  # paper: cosine to 1e-6
    weight_decay: float = 0.04  # DINO: cosine 0.04 -> 0.4
    weight_decay_end: float = 0.4
    momentum_teacher: float = 0.996  # paper: tau 0.996 -> 0.999
    momentum_teacher_end: float = 0.999
    warmup_teacher_temp: float = 0.04  # DINO: 0.04 -> 0.07 (<= 0.07, above is unstable)
    teacher_temp: float = 0.07
    warmup_teacher_temp_epochs: int = 30
    student_temp: float = 0.1  # DINO
    center_momentum: float = 0.9  # DINO
    clip_grad: float = 3.0  # DINO
    freeze_last_layer: int = 1  # DINO: last layer frozen during epoch 0
    # DINOv2 (Oquab et al. 2023) adds 0.1 x KoLeo on the student's global-view CLS features, which
    # keeps them spread; 0 = the paper's DINO, exactly. The quickstart's one-epoch DINO uses 0.5
    # (sewer_hf.experiments.quickstart.DINO_KOLEO_WEIGHT says why).
    koleo_weight: float = 0.0
    # --- hybrid pretraining (paper Table 2: DINO + class-weighted BCE) --------------------------
    hybrid: bool = False
    hybrid_weight: float = 1.0  # loss = dino + hybrid_weight * BCE(pos_weight)
    # --- monitoring -----------------------------------------------------------------------
    rankme_samples: int = 256  # fixed held-out frames for per-epoch RankMe / teacher entropy
    knn_eval: bool = True  # kNN (k=20, T=0.07) of the final teacher vs random init
    knn_k: int = 20
    knn_temperature: float = 0.07
    knn_max_train: int = 5000
    knn_every_epochs: int = 0  # > 0: also a kNN mAP of the teacher every N epochs (a learning curve); 0 = at the end only
    save_rank_states: bool = False  # each process writes its teacher + center (multi-process checks)

    @property
    def resolved_decode_size(self) -> int:
        """``decode_size``, or 8/7 of ``image_size`` rounded up to a multiple of 8 (224 -> 256, 64 -> 80)."""
        if self.decode_size is not None:
            return self.decode_size
        return 8 * math.ceil(self.image_size / 7)

    def validate(self) -> None:
        super().validate()  # the numeric domains, teacher_temp <= 0.07 and the crop scales included
        _check_choice("augmentation", self.augmentation, ("paper", "crops"))  # sewer_hf.feed.spec.PRETRAIN_AUGMENTATIONS
        if self.koleo_weight > 0 and self.batch_size < 2:
            raise ConfigError(f"koleo_weight={self.koleo_weight} needs batch_size >= 2 (a nearest neighbour in the "
                              f"batch), got {self.batch_size}")


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r}: expected one of {', '.join(map(str, choices))}")


# ------------------------------------------------------------------------------------------------
# The domain of every numeric key, in one table. `validate()` checks each numeric field of a config
# against the entry of its name (a "Class.field" entry wins over the plain name, looked up along
# the class's MRO); tests/test_config_domains.py fails for a numeric field with no entry, and
# draws values inside and outside each domain. Non-finite numbers (nan, inf) are always refused.
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Domain:
    """An interval of numbers, closed unless `lo_open` / `hi_open`; `multiple_of` for sizes that
    must tile into patches (the only use: it reads "a multiple of the patch size"); `note` says why, in the error message. A tuple field checks each
    element, and `ordered` asks for non-decreasing elements."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    multiple_of: Optional[int] = None
    ordered: bool = False
    note: str = ""

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if value < self.lo or (self.lo_open and value == self.lo):
            return False
        if value > self.hi or (self.hi_open and value == self.hi):
            return False
        return not (self.multiple_of and value % self.multiple_of)

    def describe(self) -> str:
        if self.lo == 0 and self.lo_open and self.hi == math.inf:
            text = "a number > 0"
        elif self.hi == math.inf:
            text = f"a number {'>' if self.lo_open else '>='} {self.lo:g}"
        else:
            text = f"a number in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.multiple_of:
            text += f" and a multiple of the patch size {self.multiple_of}"
        return text + (f" ({self.note})" if self.note else "")


POSITIVE = Domain(0, lo_open=True)  # > 0
AT_LEAST_ONE = Domain(1)  # counts and sizes
NON_NEGATIVE = Domain(0)
UNIT = Domain(0, 1)  # [0, 1]: momenta, fractions, probabilities

DOMAINS: dict[str, Domain] = {
    # --- RunConfig ---------------------------------------------------------------------------------
    "synthetic_train": AT_LEAST_ONE,
    "synthetic_val": AT_LEAST_ONE,
    "synthetic_defect_fraction": UNIT,
    "num_workers": NON_NEGATIVE,  # or none: chosen per machine
    "cpu_threads": AT_LEAST_ONE,  # or none: chosen per machine
    "keep_frames_mb": NON_NEGATIVE,  # or none: chosen per machine
    "image_size": Domain(16, multiple_of=16),
    "drop_path_rate": Domain(0, 1, hi_open=True),
    "epochs": AT_LEAST_ONE,
    "max_steps": AT_LEAST_ONE,  # or none
    "batch_size": AT_LEAST_ONE,
    "gradient_accumulation_steps": AT_LEAST_ONE,
    "seed": Domain(0, 2**32 - 1, note="numpy's seed range"),
    "log_every": AT_LEAST_ONE,
    "save_every_steps": AT_LEAST_ONE,
    "keep_last": AT_LEAST_ONE,
    # --- shared by the recipes -------------------------------------------------------------------------
    "base_lr": Domain(0, lo_open=True, note="a negative learning rate climbs the loss instead of descending"),
    "weight_decay": NON_NEGATIVE,
    "clip_grad": Domain(0, note="0 = no clipping"),
    "ema_decay": Domain(0, 1, hi_open=True, note="0 = no weight average"),
    "head_lr_scale": Domain(0, lo_open=True),
    "repeat_factor_threshold": Domain(0, 1, note="a share of the train frames; 0 = uniform shuffling"),
    "warmup_epochs": NON_NEGATIVE,
    # --- PretrainConfig ----------------------------------------------------------------------------------
    "out_dim": AT_LEAST_ONE,
    "hidden_dim": AT_LEAST_ONE,
    "bottleneck_dim": AT_LEAST_ONE,
    "global_crop_scale": Domain(0, 1, lo_open=True, ordered=True, note="(min, max) share of the image area"),
    "n_local_crops": NON_NEGATIVE,
    "local_crop_size": Domain(16, multiple_of=16),
    "local_crop_scale": Domain(0, 1, lo_open=True, ordered=True, note="(min, max) share of the image area"),
    "decode_size": AT_LEAST_ONE,
    "start_warmup_lr": NON_NEGATIVE,
    "min_lr": NON_NEGATIVE,
    "weight_decay_end": NON_NEGATIVE,
    "momentum_teacher": UNIT,
    "momentum_teacher_end": UNIT,
    "warmup_teacher_temp": POSITIVE,
    "teacher_temp": Domain(0, 0.07, lo_open=True, note="DINO is unstable above 0.07"),
    "warmup_teacher_temp_epochs": NON_NEGATIVE,
    "student_temp": POSITIVE,
    "center_momentum": UNIT,
    "freeze_last_layer": NON_NEGATIVE,
    "hybrid_weight": NON_NEGATIVE,
    "koleo_weight": NON_NEGATIVE,
    "rankme_samples": Domain(0, note="0 = no RankMe / teacher entropy"),
    "knn_k": AT_LEAST_ONE,
    "knn_temperature": POSITIVE,
    "knn_max_train": AT_LEAST_ONE,
    "knn_every_epochs": Domain(0, note="0 = kNN at the end only"),
    # --- FinetuneConfig ----------------------------------------------------------------------------------
    "fraction": Domain(0, 1, lo_open=True, note="e.g. 0.1, 0.5 or 1.0"),
    "lr_milestones": Domain(0, ordered=True, note="epochs, in order"),
    "lr_gamma": Domain(0, 1, lo_open=True, note="the factor the lr is multiplied by at each milestone"),
    "eval_every_epochs": AT_LEAST_ONE,
    "threshold_holdout": Domain(0, 0.5, hi_open=True, note="0 = fit the thresholds on val"),
}


def numeric_fields(cls: type) -> list[str]:
    """The fields of a config class that hold numbers (int, float, optional or tuples of them)."""
    def numeric(annotation: Any) -> bool:
        if annotation in (int, float):
            return True
        args = [a for a in typing.get_args(annotation) if a is not type(None) and a is not Ellipsis]
        origin = typing.get_origin(annotation)
        return origin in (typing.Union, types.UnionType, tuple) and bool(args) and all(numeric(a) for a in args)

    return [name for name, annotation in _fields(cls).items() if numeric(annotation)]


def domain_of(cls: type, name: str) -> Optional[Domain]:
    for klass in cls.__mro__:
        if f"{klass.__name__}.{name}" in DOMAINS:
            return DOMAINS[f"{klass.__name__}.{name}"]
    return DOMAINS.get(name)


def _check_domains(cfg: Any) -> None:
    """Each numeric field of `cfg` inside its domain, or a ConfigError naming the key, the value
    and the domain."""
    for name in numeric_fields(type(cfg)):
        value, domain = getattr(cfg, name), domain_of(type(cfg), name)
        if value is None or domain is None:  # none = the key's "off" value; no entry: the test reports it
            continue
        values = value if isinstance(value, (tuple, list)) else (value,)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{name}={value!r}: expected {domain.describe()}")
            if not domain.contains(v):
                what = domain.describe()
                if len(values) > 1:
                    what = "each value to be " + what
                raise ConfigError(f"{name}={value!r}: expected {what}")
        if domain.ordered and list(values) != sorted(values):
            raise ConfigError(f"{name}={value!r}: expected the values in increasing order ({domain.note})")


def _check_size_text(name: str, text: str) -> None:
    """A "WxH" frame size (or "mix") within what the synthetic renderer draws."""
    # Imported here: the renderer sits a layer above the configs, and importing it took 0.3-0.4 s
    # of the 0.4 s `import sewer_hf.config` costs (python -X importtime), paid by every command.
    from sewer_hf.synth.dataset import parse_size

    try:
        parse_size(text)
    except ConfigError as exc:
        raise ConfigError(f"{name}={text!r}: {exc}") from None


@dataclass
class FinetuneConfig(RunConfig):
    """Fine-tuning, linear probe and the fully supervised baseline (paper Sec. 3, Tables 1-2)."""

    output_dir: str = "runs/finetune"
    backbone: Optional[str] = None  # a pretrained `backbone/` folder; None = from scratch (supervised)
    linear_probe: bool = False  # freeze the backbone, train the head only
    fraction: float = 1.0  # paper: 0.1, 0.5 or 1.0 of the labelled train split (stratified)
    epochs: int = 45  # paper
    base_lr: float = 5e-4  # paper: lr = 5e-4 * global_batch / 256
    lr_milestones: tuple[int, ...] = (15, 35)  # paper: MultiStep at epochs 15 and 35 ...
    lr_gamma: float = 0.1  # ... with gamma 0.1
    warmup_epochs: float = 0.0  # linear warm-up from 0 in front of MultiStep (paper: none; small budgets need it)
    augmentation: str = "paper"  # paper (App. A) | flip (horizontal flips only: short smoke runs learn faster)
    weight_decay: float = 0.05  # not given by the paper; timm's usual ViT fine-tuning value
    clip_grad: float = 0.0  # 0 = no clipping (the paper mentions none)
    head_lr_scale: float = 1.0  # the new head's lr = this x the scheduled lr (paper: 1)
    ema_decay: float = 0.0  # > 0: an exponential moving average of the weights is scored and shipped (paper: none)
    # > 0: repeat-factor sampling (LVIS): frames of classes seen in fewer than this share of the
    # train frames are drawn sqrt(t / f_c) times as often, epochs keep their length (paper: none)
    repeat_factor_threshold: float = 0.0
    tune_thresholds: bool = True  # per-class thresholds (F2_CIW with an F1_Normal floor), stored with the model
    # share of the labelled training rows held out (stratified, never trained on) to fit those
    # thresholds, so that the reported val numbers are not tuned on val; 0 = fit on val (optimistic)
    threshold_holdout: float = 0.1
    head_bias_from_prior: bool = True  # start the head at the best constant predictor (not in the paper)
    # which epoch ships: "best" = the best hold-out F2_CIW at its fitted thresholds; "last" = the
    # last epoch (its thresholds still fitted on the hold-out): on a small hold-out "best" can be
    # a lucky early epoch (the quickstart's 310 frames once chose epoch 5 of 9: Val mAP 13.88, the
    # last epoch 15.56)
    epoch_selection: str = "best"
    eval_every_epochs: int = 1

    def validate(self) -> None:
        super().validate()  # the numeric domains: fraction in (0, 1], lr_milestones in order, ...
        _check_choice("augmentation", self.augmentation, ("paper", "flip"))  # sewer_hf.feed.spec.FINETUNE_AUGMENTATIONS
        _check_choice("epoch_selection", self.epoch_selection, ("best", "last"))
        if self.linear_probe and not self.backbone:
            raise ConfigError("linear_probe needs --backbone DIR (a pretrained backbone/ folder)")


# ------------------------------------------------------------------------------------------------
# Loading: YAML file + command-line overrides, type-checked against the dataclass.
# ------------------------------------------------------------------------------------------------

def _coerce(name: str, value: Any, annotation: Any, source: str) -> Any:
    """Convert `value` to the field's declared type or raise a ConfigError naming the key."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0], source)
    if origin is tuple:
        if isinstance(value, str):
            value = yaml.safe_load(value if value.startswith("[") else f"[{value}]")
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: any number of values
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{source}: {name}={value!r}: expected a list of values, e.g. 6,9")
            args = (args[0],) * len(value)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{source}: {name}={value!r}: expected {len(args)} values, e.g. 0.5,1.0")
        return tuple(_coerce(name, v, a, source) for v, a in zip(value, args))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{source}: {name}={value!r}: expected true or false")
    if annotation in (int, float):
        if isinstance(value, str):  # float() also reads what YAML 1.1 does not, e.g. 4e-3
            try:
                value = int(value) if annotation is int and value.strip().lstrip("-").isdigit() else float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {name}={value!r}: expected a number")
        if annotation is int:
            if not math.isfinite(value) or float(value) != int(value):  # int(nan) / int(inf) would raise
                raise ConfigError(f"{source}: {name}={value!r}: expected a whole number")
            return int(value)
        return float(value)
    if annotation is str:
        return str(value)
    return value


@functools.lru_cache(maxsize=None)  # validate() asks for every config it checks
def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def parse_overrides(argv: list[str]) -> tuple[Optional[str], dict[str, str]]:
    """Split `--config FILE --key value --flag ...` into the config path and raw overrides."""
    config_path = None
    overrides: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: expected --key value")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value = argv[i + 1]
            i += 2
        else:  # a bare flag means true
            value = "true"
            i += 1
        key = key.replace("-", "_")
        if key == "config":
            config_path = value
        else:
            overrides[key] = value
    return config_path, overrides


def load_config(cls: type[T], config_path: Optional[str] = None, overrides: Optional[dict[str, Any]] = None) -> T:
    """Build `cls` from a YAML file and overrides; every key must be a field of `cls`."""
    known = _fields(cls)
    values: dict[str, Any] = {}
    if config_path:
        path = Path(config_path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of key: value")
        for key, value in data.items():
            if key in RENAMED_KEYS and key not in known:
                raise ConfigError(f"{path}: key {key!r} was replaced by {RENAMED_KEYS[key]}")
            if key not in known:
                raise ConfigError(f"{path}: unknown key {key!r}; known keys: {', '.join(sorted(known))}")
            values[key] = _coerce(key, value, known[key], str(path))
    for key, value in (overrides or {}).items():
        if key in RENAMED_KEYS and key not in known:
            raise ConfigError(f"option --{key} was replaced by --{RENAMED_KEYS[key]}")
        if key not in known:
            raise ConfigError(f"unknown option --{key}; known options: {', '.join('--' + k for k in sorted(known))}")
        values[key] = _coerce(key, value, known[key], "command line")
    cfg = cls(**values)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def config_from_argv(cls: type[T], argv: list[str]) -> T:
    config_path, overrides = parse_overrides(argv)
    return load_config(cls, config_path, overrides)


def to_dict(cfg: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
