"""The label-efficiency experiment end to end on a tiny budget: results.json's structure, the same
labelled subset across arms, the pretraining curve, reuse of finished runs, and a refusal to
overwrite a finished run with another config. Its 2-process launch also carries DINO's feed
thread on 2 processes (one launch for both: each costs ~20 s of the suite)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sewer_hf.errors import ConfigError
from sewer_hf.experiments.label_efficiency import ARMS, METRICS, load_experiment, run_experiment, run_name
from sewer_hf.feed.machine import available_cpus, cpu_features

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "data": {"pool": 64, "val": 48, "test": 48, "frame_size": "64x64", "prepared_size": 32,
             "defect_fraction": 0.6, "seed": 0},
    "fractions": [0.5],
    "seeds": [0, 1],
    "arms": list(ARMS),
    "pretrain": {"epochs": 1, "warmup_epochs": 0, "image_size": 32, "decode_size": 32, "batch_size": 16,
                 "knn_every_epochs": 1, "knn_max_train": 64, "rankme_samples": 32, "out_dim": 64,
                 "hidden_dim": 32, "bottleneck_dim": 16,
                 # the device-side feed thread on 2 processes (gloo): the loader is read in the thread
                 # (accelerate syncs its RNG when it starts) while the training thread all-reduces
                 "feed": "batched_thread", "save_rank_states": True},
    "finetune": {"image_size": 32, "batch_size": 16, "epochs": 1, "warmup_epochs": 0, "lr_milestones": [1],
                 "threshold_holdout": 0.0, "save_every_steps": 1000},
}


def write_spec(path, spec):
    path.write_text(yaml.safe_dump(spec))
    return load_experiment(path)


@pytest.mark.slow  # ~45 s on 2 cores: a 2-process launch, then 6 tiny runs
def test_tiny_experiment_on_two_processes_then_reused_and_refusing_changes(tmp_path, free_port):
    # the recipe as `accelerate launch` runs it, on 2 CPU processes: every run of the experiment
    # shares the launch's process group, and each stage is reported once
    out = tmp_path / "exp"
    write_spec(tmp_path / "tiny.yaml", TINY)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--main_process_port", str(free_port), "--mixed_precision", "no", "--dynamo_backend", "no",
              str(ROOT / "recipes" / "label_efficiency.py"), "--config", str(tmp_path / "tiny.yaml"), "--out", str(out)]
    proc = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("[label-efficiency] pretrain: done") == 1
    assert "next batches prepared in a background thread" in proc.stdout
    ranks = [load_file(str(p)) for p in sorted((out / "pretrain" / "rank_states").glob("rank*.safetensors"))]
    assert len(ranks) == 2 and all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0]), \
        "both processes hold the same teacher and center"
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["machine"]["processes"] == 2 and on_disk["machine"]["cpu_features"] == cpu_features()
    assert (out / "label_efficiency.png").stat().st_size > 0 and (out / "pretraining_curve.png").stat().st_size > 0

    runs = on_disk["runs"]
    assert sorted((r["arm"], r["seed"]) for r in runs) == sorted((a, s) for a in ARMS for s in (0, 1))
    for r in runs:
        assert r["fraction"] == 0.5 and r["labelled_frames"] == 32
        for which in ("test_shipped", "test_at_0.5"):
            assert set(r[which]) == set(METRICS) and all(0.0 <= v <= 1.0 for v in r[which].values())
        assert len(r["config_hash"]) == 12 and r["commit"] and r["seconds"] > 0
        assert set(r["learned"]) == set(METRICS)
        rows = json.loads((out / r["output_dir"] / "train_rows.json").read_text())
        assert len(rows["trained_on"]) == 32
    # every arm of a seed trained on the very same labelled frames; the seeds drew different ones
    for seed in (0, 1):
        assert len({r["subset_sha256"] for r in runs if r["seed"] == seed}) == 1
    assert len({r["subset_sha256"] for r in runs}) == 2
    # the arms' configs differ only where they should (backbone, linear probe), so their hashes do
    assert len({r["config_hash"] for r in runs if r["seed"] == 0}) == 3

    summary = {(row["arm"], row["fraction"]): row for row in on_disk["summary"]}
    assert set(summary) == {(a, 0.5) for a in ARMS}
    vs = summary[("dino_finetune", 0.5)]["vs_scratch"]
    assert set(vs) == set(METRICS) and all(len(vs[m]["paired_gaps"]) == 2 for m in METRICS)
    by_run = {(r["arm"], r["seed"]): r["test_shipped"]["mAP"] for r in runs}
    assert vs["mAP"]["paired_gaps"] == pytest.approx([by_run[("dino_finetune", s)] - by_run[("scratch", s)] for s in (0, 1)])
    assert set(on_disk["data"]["test_constant_baseline"]) >= set(METRICS)
    curve = on_disk["pretrain"]["curve"]
    assert curve[0]["epoch"] == 1 and {"loss", "teacher_entropy", "rankme", "knn_mAP"} <= set(curve[0])
    assert on_disk["pretrain"]["knn"]["random_init"]["mAP"] > 0

    # a re-run (here in this one process) reuses every finished stage: nothing is trained or rewritten
    markers = {p: p.stat().st_mtime_ns for p in out.rglob("stage.json")}
    again = run_experiment(write_spec(tmp_path / "tiny.yaml", TINY), out, budget="tiny")
    assert again["runs"] == on_disk["runs"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("stage.json")} == markers

    # another config for a finished run is refused, naming the run, instead of overwriting it
    changed = {**TINY, "finetune": {**TINY["finetune"], "base_lr": 1e-3}}
    with pytest.raises(ConfigError, match=r"runs/dino_finetune-f0.5-s0.*remove"):
        run_experiment(write_spec(tmp_path / "changed.yaml", changed), out, budget="tiny")
    other_data = {**TINY, "data": {**TINY["data"], "pool": 80}}
    with pytest.raises(ConfigError, match=r"data/stage.json.*remove"):
        run_experiment(write_spec(tmp_path / "other_data.yaml", other_data), out, budget="tiny")

    # here, in one process on 2 CPUs: a new seed's runs go side by side (a process per CPU, the
    # third waiting for one), beside the finished data and pretraining (copied: reused, not redone)
    if len(available_cpus()) >= 2:
        again_out = tmp_path / "side_by_side"
        again_out.mkdir()
        for stage in ("data", "pretrain"):
            shutil.copytree(out / stage, again_out / stage)
        spec = write_spec(tmp_path / "seed2.yaml", {**TINY, "seeds": [2]})
        seed2 = run_experiment(spec, again_out, budget="tiny")
        longest_first = [run_name(a, 0.5, 2) for a in ("dino_finetune", "scratch", "dino_linear")]
        assert [group["stages"] for group in seed2["side_by_side"]] == [longest_first]
        assert {r["arm"] for r in seed2["runs"]} == set(ARMS) and len({r["subset_sha256"] for r in seed2["runs"]}) == 1
        assert all(set(r["test_shipped"]) == set(METRICS) for r in seed2["runs"])
        assert all((again_out / f"{run_name(a, 0.5, 2)}.log").stat().st_size > 0 for a in ARMS)

        # --one-at-a-time: two more runs beside the same pretraining, one after the other here
        alone = run_experiment(write_spec(tmp_path / "seed3.yaml", {**TINY, "seeds": [3], "arms": ["dino_linear", "scratch"]}),
                               again_out, budget="tiny", side_by_side=False)
        assert alone["side_by_side"] == [] and {r["arm"] for r in alone["runs"]} == {"dino_linear", "scratch"}
        assert not any((again_out / f"{run_name(a, 0.5, 3)}.log").exists() for a in ("dino_linear", "scratch"))


@pytest.mark.parametrize("edit, message", [
    ({"arms": ["dino_finetune", "imagenet"]}, "imagenet"),
    ({"fractions": [0.1, 1.5]}, "fraction 1.5"),
    ({"seeds": []}, "at least one"),
])
def test_bad_experiment_configs_are_refused_before_any_work(tmp_path, edit, message):
    with pytest.raises(ConfigError, match=message):
        write_spec(tmp_path / "bad.yaml", {**TINY, **edit})


def test_missing_key_is_named(tmp_path):
    spec = {k: v for k, v in TINY.items() if k != "pretrain"}
    with pytest.raises(ConfigError, match="missing key 'pretrain'"):
        write_spec(tmp_path / "bad.yaml", spec)
