"""recipes/reproduce_tables.py: the runs its grid plans, its reuse of finished runs, its table.

Training is replaced by fakes that write what a finished run leaves (metrics.jsonl, backbone/,
eval.json): the recipes themselves are tested in test_pretrain/test_finetune/test_quickstart."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from sewer_hf.config import FinetuneConfig, PretrainConfig, load_config
from sewer_hf.errors import ConfigError
from sewer_hf.experiments.quickstart import DINO_EPOCHS, DINO_KOLEO_WEIGHT
from sewer_hf.feed.machine import cpu_features

ROOT = Path(__file__).resolve().parents[1]
BASELINE = {"F2_CIW": 0.24, "F1_Normal": 0.58, "mAP": 0.075}


@pytest.fixture(scope="module")
def tables():
    spec = importlib.util.spec_from_file_location("reproduce_tables", ROOT / "recipes" / "reproduce_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def planned(tables, tmp_path, *argv) -> dict:
    args = tables.parse_args(["--out", str(tmp_path), *argv])
    return dict(tables.grid_configs(args, str(tmp_path / "data")))


def test_smoke_grid_runs_the_quickstart_recipe(tables, tmp_path):
    runs = planned(tables, tmp_path)  # the smoke default: ViT-T/16 only
    smoke_ft = load_config(FinetuneConfig, str(ROOT / "recipes" / "configs" / "smoke_finetune.yaml"))
    assert list(runs) == ["vit_tiny/dino", "vit_tiny/dino_hybrid", "vit_tiny/ssl_ft_10", "vit_tiny/supervised_10",
                          "vit_tiny/ssl_ft_50", "vit_tiny/supervised_50", "vit_tiny/ssl_ft_100",
                          "vit_tiny/supervised_100", "vit_tiny/linear", "vit_tiny/hybrid_ft"]
    for name in ("vit_tiny/dino", "vit_tiny/dino_hybrid"):  # the quickstart's DINO stage, KoLeo included
        cfg = runs[name]
        assert isinstance(cfg, PretrainConfig)
        assert (cfg.epochs, cfg.koleo_weight, cfg.hybrid) == (DINO_EPOCHS, DINO_KOLEO_WEIGHT, name.endswith("hybrid"))
    dino_backbone = str(tmp_path / "vit_tiny" / "dino" / "backbone")
    for pct, fraction in (("10", 0.1), ("50", 0.5), ("100", 1.0)):
        ssl, sup = runs[f"vit_tiny/ssl_ft_{pct}"], runs[f"vit_tiny/supervised_{pct}"]
        assert ssl.fraction == sup.fraction == fraction
        assert (ssl.backbone, sup.backbone) == (dino_backbone, None)
        # the smoke fine-tuning as it is (until 2026-12-03 cut to 2 epochs: no classifier learned)
        assert ssl.epochs == sup.epochs == smoke_ft.epochs
        assert (ssl.base_lr, ssl.repeat_factor_threshold) == (smoke_ft.base_lr, smoke_ft.repeat_factor_threshold)
    assert runs["vit_tiny/linear"].linear_probe and runs["vit_tiny/linear"].backbone == dino_backbone
    assert runs["vit_tiny/hybrid_ft"].backbone == str(tmp_path / "vit_tiny" / "dino_hybrid" / "backbone")
    assert {cfg.data for cfg in runs.values()} == {str(tmp_path / "data")}


def test_grid_phases_keep_pretraining_before_the_fine_tunings_that_read_it(tables, tmp_path):
    """What may run side by side: an architecture's pretrainings, then its fine-tunings, longest first."""
    runs = tables.grid_configs(tables.parse_args(["--out", str(tmp_path), "--archs", "vit_tiny,vit_small"]), None)
    groups = [[name for name, _ in group] for group in tables.phases(runs)]
    assert [len(group) for group in groups] == [2, 8, 2, 8]
    for arch, (pretraining, fine_tuning) in zip(("vit_tiny", "vit_small"), (groups[:2], groups[2:])):
        assert pretraining == [f"{arch}/dino", f"{arch}/dino_hybrid"]
        assert fine_tuning[:3] == [f"{arch}/ssl_ft_100", f"{arch}/supervised_100", f"{arch}/hybrid_ft"]
        assert fine_tuning[-2:] == [f"{arch}/ssl_ft_10", f"{arch}/supervised_10"]
    assert sorted(name for group in groups for name in group) == sorted(name for name, _ in runs)


def test_paper_grid_keeps_the_paper_configs(tables, tmp_path):
    runs = planned(tables, tmp_path, "--budget", "paper")
    assert len(runs) == 20  # both architectures by default
    paper_dino = load_config(PretrainConfig, str(ROOT / "recipes" / "configs" / "vit_small_dino.yaml"))
    assert runs["vit_small/dino"].koleo_weight == 0.0  # the paper's DINO, exactly
    assert runs["vit_small/dino"].epochs == paper_dino.epochs
    assert runs["vit_small/linear"].linear_probe
    with pytest.raises(SystemExit):
        tables.parse_args(["--archs", "vit_huge"])


def fake_training(calls: list):
    """pretrain/finetune stand-ins: the files a finished run leaves; the 100 % fine-tunings learn."""

    def pretrain(cfg):
        calls.append(cfg.output_dir)
        out = Path(cfg.output_dir)
        (out / "backbone").mkdir(parents=True)
        (out / "backbone" / "config.json").write_text("{}")
        (out / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "rankme": 40.0 + cfg.hybrid}) + "\n")
        return {"backbone": str(out / "backbone")}

    def finetune(cfg):
        calls.append(cfg.output_dir)
        good = cfg.fraction == 1.0 and not cfg.linear_probe
        shipped = {"F2_CIW": 0.30, "F1_Normal": 0.75, "mAP": 0.18} if good else {"F2_CIW": 0.1, "F1_Normal": 0.4, "mAP": 0.09}
        Path(cfg.output_dir).mkdir(parents=True)
        (Path(cfg.output_dir) / "eval.json").write_text(json.dumps(
            {"F2_CIW": 0.2, "F1_Normal": 0.0, "mAP": shipped["mAP"], "at_shipped_thresholds": shipped,
             "constant_baseline": BASELINE}))
        return {"classifier": str(Path(cfg.output_dir) / "classifier")}

    return pretrain, finetune


def test_grid_reuses_finished_runs_refuses_changed_ones_and_marks_what_did_not_learn(tables, tmp_path, monkeypatch):
    calls: list = []
    pretrain, finetune = fake_training(calls)
    monkeypatch.setattr(tables, "pretrain", pretrain)
    monkeypatch.setattr(tables, "finetune", finetune)
    out = tmp_path / "grid"
    argv = ["--out", str(out), "--data", str(tmp_path / "data"), "--one-at-a-time"]  # the fakes live here

    assert tables.main(argv) == 0
    assert len(calls) == 10
    table = (out / "tables.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ViT")}
    assert "30.00 / 75.00 · 18.00 (58.18 / 89.76) | 30.00 / 75.00 · 18.00 (58.94 / 89.68)" in rows["ViT-T/16-100%"]
    assert rows["ViT-T/16-10%"].count("⚠") == 2 and "⚠" in rows["ViT-T/16-LINEAR"]
    assert "⚠" not in rows["ViT-T/16-HYBRID"] and "| 41.00 |" in rows["ViT-T/16 HYBRID"]
    assert "F2_CIW 24.00, F1_Normal 58.00, mAP 7.50" in table
    assert f"cores ({cpu_features()})" in (out / "tables.md").read_text()  # the machine next to the numbers
    results = json.loads((out / "tables.json").read_text())
    assert results["runs"]["vit_tiny/ssl_ft_100"]["mAP"] == 0.18

    assert tables.main(argv) == 0  # everything finished: reused, nothing trains again
    assert len(calls) == 10
    with pytest.raises(ConfigError, match="stage.json.*another --out"):  # another config is never reused
        tables.main(argv + ["--finetune-epochs", "3"])
    assert len(calls) == 10
