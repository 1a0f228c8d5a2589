"""`sewer-hf quickstart` (what `make quickstart` runs) end to end at a tiny size: every stage runs
through the user's own commands, the summary puts the constant-predictor baseline and the machine
next to every result, and a second call reuses every finished stage instead of redoing it, but
refuses a finished training stage that other settings made. The
full size (and whether its classifiers learn) is measured in the README, not here."""
import json
import re

import yaml

from sewer_hf.cli import main
from sewer_hf.experiments.quickstart import CLASSIFIERS
from sewer_hf.feed.machine import cpu_features
from sewer_hf.synth.footage import FOOTAGE_CLASSES

STAGES = ["data", "prepare", "dino", "ssl_finetune", "supervised", "evaluate", "pipeline", "push"]
METRICS = {"F2_CIW", "F1_Normal", "mAP"}


def test_tiny_quickstart_runs_every_stage_then_reuses_them(tmp_path, capsys):
    out = tmp_path / "qs"
    args = ["quickstart", "--out", str(out), "--train", "96", "--val", "64",
            "--pretrain-epochs", "1", "--finetune-epochs", "1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["stage_seconds"]) == STAGES
    assert METRICS <= set(summary["constant_baseline"])
    for name, label in CLASSIFIERS:
        assert set(summary[name]["shipped"]) == METRICS and set(summary[name]["at_0.5"]) == METRICS
        assert set(summary[name]["learned"]) and all(isinstance(ok, bool) for ok in summary[name]["learned"].values())
        assert (out / name / "classifier" / "config.json").is_file()
        assert f"{label}: learned" in printed or f"{label}: did NOT learn" in printed
    # the DINO + fine-tune arm started from the backbone the dino stage wrote; the other from scratch
    assert yaml.safe_load((out / "ssl_finetune" / "config.yaml").read_text())["backbone"] == str(out / "dino" / "backbone")
    assert yaml.safe_load((out / "supervised" / "config.yaml").read_text())["backbone"] is None
    assert [f["true"] for f in summary["pipeline"]] == ["normal", *FOOTAGE_CLASSES]
    assert summary["machine"]["cpu_features"] == cpu_features() and summary["machine"]["cores"] >= 1
    assert 0.9 < summary["dino_teacher_init_share"] < 1 and "its teacher (the backbone DINO + fine-tune starts from)" in printed
    assert "| constant predictor (best per metric) |" in printed
    assert summary["reused_stages"] == [] and "were reused" not in printed

    marks = {s: (out / s / "stage.json").stat().st_mtime_ns for s in STAGES}
    assert main(args) == 0
    again = capsys.readouterr().out
    assert all(f"[quickstart] {s}: reusing the finished run" in again for s in STAGES)
    assert "the finished stages were reused" in again
    assert {s: (out / s / "stage.json").stat().st_mtime_ns for s in STAGES} == marks

    # other settings (here more fine-tuning epochs) than the finished run's: an error naming the
    # stage, not the old classifier passed off as the new one, and nothing already written is lost
    assert main([*args[:-1], "2"]) == 2
    assert re.search(r"error: .*ssl_finetune.*made with config", capsys.readouterr().err)
    assert {s: (out / s / "stage.json").stat().st_mtime_ns for s in STAGES} == marks
