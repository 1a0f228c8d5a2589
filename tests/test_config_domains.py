"""Issue 15, point 1: every numeric key of the configs has a domain, checked with an error that
names the key. Table-driven (config.DOMAINS) and property-style: seeded random draws inside and
outside each domain, through the same text path as `--key value` on the command line."""
import dataclasses
import math
import random
from pathlib import Path

import pytest

from sewer_hf.config import (
    DOMAINS,
    Domain,
    FinetuneConfig,
    PretrainConfig,
    RunConfig,
    domain_of,
    load_config,
    numeric_fields,
)
from sewer_hf.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "configs"
CLASSES = (RunConfig, PretrainConfig, FinetuneConfig)
N_DRAWS = 12  # random values per key and side of its domain


def test_every_numeric_key_has_a_domain_and_every_domain_a_key():
    """A new numeric field without a DOMAINS entry fails here: add its domain to config.DOMAINS."""
    missing = sorted({f"{cls.__name__}.{name}" for cls in CLASSES for name in numeric_fields(cls)
                      if domain_of(cls, name) is None})
    assert not missing, f"numeric config keys without a domain in sewer_hf.config.DOMAINS: {missing}"
    known = {name for cls in CLASSES for name in numeric_fields(cls)}
    stale = sorted(key for key in DOMAINS if key.split(".")[-1] not in known)
    assert not stale, f"DOMAINS entries for no numeric field: {stale}"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_and_defaults_are_inside_their_domains(path):
    text = path.read_text()
    if path.name.startswith("label_efficiency"):  # an experiment: every run config it makes
        from sewer_hf.experiments.label_efficiency import arm_config, load_experiment, pretrain_config

        spec = load_experiment(path)
        pretrain_config(spec, "data", Path("out"))
        for arm in spec["arms"]:
            for fraction in spec["fractions"]:
                arm_config(spec, arm, fraction, spec["seeds"][0], "data", "backbone", Path("out"))
        return
    cls = FinetuneConfig if any(w in path.name for w in ("finetune", "linear", "supervised")) else PretrainConfig
    overrides = {"backbone": "runs/x/backbone"} if "linear" in path.name and "backbone:" not in text else {}
    load_config(cls, str(path), overrides)
    for cls in CLASSES:
        cls().validate()


def test_domain_membership():
    assert Domain(0, lo_open=True).contains(1e-9) and not Domain(0, lo_open=True).contains(0)
    assert Domain(0, 1).contains(0) and Domain(0, 1).contains(1) and not Domain(0, 1).contains(1.0000001)
    assert not Domain(0, 1, hi_open=True).contains(1) and not Domain().contains(math.nan)
    assert not Domain().contains(math.inf) and Domain(16, multiple_of=16).contains(224)
    assert not Domain(16, multiple_of=16).contains(100)


def _draws(domain: Domain, integer: bool, rng: random.Random):
    """(value, inside?) pairs: the edges, non-finite numbers, and random numbers on both sides."""
    eps = 1 if integer else 1e-6
    edges = []
    for edge, is_open, sign in ((domain.lo, domain.lo_open, -1), (domain.hi, domain.hi_open, 1)):
        if math.isfinite(edge):
            edges += [edge, edge + sign * eps, edge - sign * eps]
    values = edges + ([] if integer else [math.nan, math.inf, -math.inf])
    lo = domain.lo if math.isfinite(domain.lo) else -1e6
    hi = domain.hi if math.isfinite(domain.hi) else lo + 1e6
    for _ in range(N_DRAWS):
        values.append(rng.uniform(lo - (hi - lo) - 1, hi + (hi - lo) + 1))  # mostly outside
        values.append(rng.uniform(lo, hi))  # inside (unless an open edge is hit)
    if domain.multiple_of:
        values += [domain.multiple_of * rng.randint(1, 64) for _ in range(N_DRAWS)]
    if integer:
        values = [round(v) for v in values if math.isfinite(v)]
    return [(v, domain.contains(v) and (not integer or float(v).is_integer())) for v in values]


@pytest.mark.parametrize("cls", [PretrainConfig, FinetuneConfig], ids=lambda c: c.__name__)
def test_random_values_inside_are_accepted_and_outside_refused_naming_the_key(cls):
    rng = random.Random(15)
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    checked = 0
    for name in numeric_fields(cls):
        domain = domain_of(cls, name)
        annotation = str(hints[name])
        integer = "int" in annotation and "float" not in annotation
        is_tuple = "tuple" in annotation
        for value, inside in _draws(domain, integer, rng):
            text = f"{value},{value}" if is_tuple else repr(value)  # a pair of equal values is in order
            if "nan" in text or "inf" in text:
                text = text.replace("math.", "")
            try:
                load_config(cls, None, {name: text})
                accepted = True
            except ConfigError as exc:
                accepted = False
                assert str(exc).startswith(f"{name}=") or f"{name}=" in str(exc), (name, value, exc)
            assert accepted == inside, (cls.__name__, name, value, domain)
            checked += 1
    assert checked > 500


@pytest.mark.parametrize("cls, key, value, message", [
    (PretrainConfig, "base_lr", "-1e-3", "base_lr=-0.001: expected a number > 0"),  # the issue's gradient ascent
    (FinetuneConfig, "base_lr", "-0.01", "base_lr=-0.01: expected a number > 0"),
    (PretrainConfig, "base_lr", "0", "base_lr=0.0"),
    (PretrainConfig, "min_lr", "-1e-6", "min_lr="),
    (PretrainConfig, "weight_decay", "-0.04", "weight_decay="),
    (FinetuneConfig, "weight_decay", "-0.05", "weight_decay="),
    (PretrainConfig, "weight_decay_end", "-1", "weight_decay_end="),
    (PretrainConfig, "momentum_teacher", "1.5", "momentum_teacher=1.5: expected a number in [0, 1]"),
    (PretrainConfig, "momentum_teacher_end", "-0.1", "momentum_teacher_end="),
    (PretrainConfig, "center_momentum", "2", "center_momentum="),
    (PretrainConfig, "student_temp", "0", "student_temp="),
    (PretrainConfig, "teacher_temp", "-0.04", "teacher_temp="),
    (PretrainConfig, "warmup_teacher_temp", "0", "warmup_teacher_temp="),
    (PretrainConfig, "knn_temperature", "-1", "knn_temperature="),
    (PretrainConfig, "epochs", "0", "epochs=0"),
    (PretrainConfig, "epochs", "nan", "epochs=nan: expected a whole number"),
    (PretrainConfig, "warmup_epochs", "-1", "warmup_epochs="),
    (FinetuneConfig, "fraction", "1.5", "fraction=1.5"),
    (FinetuneConfig, "fraction", "0", "fraction=0.0"),
    (PretrainConfig, "synthetic_defect_fraction", "1.2", "synthetic_defect_fraction="),
    (PretrainConfig, "drop_path_rate", "1", "drop_path_rate="),
    (PretrainConfig, "batch_size", "-8", "batch_size="),
    (PretrainConfig, "num_workers", "-1", "num_workers="),
    (PretrainConfig, "out_dim", "0", "out_dim="),
    (PretrainConfig, "local_crop_size", "0", "local_crop_size="),
    (PretrainConfig, "global_crop_scale", "0.9,0.4", "global_crop_scale=(0.9, 0.4): expected the values in increasing order"),
    (PretrainConfig, "global_crop_scale", "0,1", "global_crop_scale=(0.0, 1.0): expected each value to be a number in (0, 1]"),
    (PretrainConfig, "local_crop_scale", "0.05,1.5", "local_crop_scale="),
    (FinetuneConfig, "lr_milestones", "35,15", "lr_milestones=(35, 15)"),
    (FinetuneConfig, "lr_gamma", "-0.1", "lr_gamma="),
    (FinetuneConfig, "clip_grad", "-1", "clip_grad="),
    (PretrainConfig, "seed", "-1", "seed=-1"),
    (PretrainConfig, "max_steps", "0", "max_steps=0"),
    (PretrainConfig, "synthetic_size", "100000x100000", "synthetic_size='100000x100000': size must be at most"),
    (PretrainConfig, "synthetic_size", "big", "synthetic_size='big'"),
])
def test_the_issues_bad_values_are_refused_with_the_key_named(cls, key, value, message):
    with pytest.raises(ConfigError) as info:
        load_config(cls, None, {key: value})
    assert message in str(info.value)


def test_a_recipe_refuses_a_negative_lr_before_training(capsys):
    """`recipes/pretrain_dino.py ... --base_lr -1e-3` printed "peak lr -3.13e-05" and exited 0."""
    from sewer_hf.train.recipe import run_recipe

    def train(cfg):
        raise AssertionError("training started")

    assert run_recipe(PretrainConfig, train, ["--base_lr", "-1e-3", "--report_to", "none"]) == 2
    assert "error: base_lr=-0.001: expected a number > 0" in capsys.readouterr().err
    assert run_recipe(FinetuneConfig, train, ["--base_lr=-0.01"]) == 2
