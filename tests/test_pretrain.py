"""End-to-end DINO pretraining on tiny synthetic data: outputs, logs, resume, multi-process."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sewer_hf.config import PretrainConfig
from sewer_hf.errors import ConfigError
from sewer_hf.train.pretrain import pretrain

ROOT = Path(__file__).resolve().parents[1]

TINY = dict(image_size=32, out_dim=256, hidden_dim=64, bottleneck_dim=32, batch_size=8, num_workers=0,
            report_to="none", log_every=1, rankme_samples=16, knn_max_train=64, warmup_epochs=1,
            warmup_teacher_temp_epochs=1, teacher_temp=0.06, base_lr=5e-4)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from sewer_hf.synth import generate_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, 40, 16, seed=3, size=(352, 288), progress=False)
    return str(root)


def run(tiny_data, out, **kw):
    cfg = PretrainConfig(**{**TINY, "data": tiny_data, "output_dir": str(out), **kw})
    return pretrain(cfg)


def test_pretrain_writes_backbone_logs_and_knn(tiny_data, tmp_path):
    result = run(tiny_data, tmp_path / "run", epochs=2, save_every_steps=3, keep_last=2)
    out = tmp_path / "run"
    steps = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    per_step = [r for r in steps if "loss" in r]
    per_epoch = [r for r in steps if "rankme" in r]
    assert len(per_step) == result["steps"] == 2 * (40 // 8)
    # the EMA teacher's remaining share of its init: the product of the momenta used
    assert result["teacher_init_share"] == pytest.approx(math.prod(r["teacher_momentum"] for r in per_step), abs=1e-4)
    for key in ("loss", "lr", "wd", "teacher_momentum", "teacher_temp"):
        assert all(math.isfinite(r[key]) for r in per_step), key
    assert per_step[0]["lr"] < per_step[-1]["lr"] or per_step[0]["lr"] != per_step[-1]["lr"]
    assert per_step[-1]["wd"] > per_step[0]["wd"]  # cosine 0.04 -> 0.4
    assert len(per_epoch) == 2 and all(1.0 <= r["rankme"] <= 192 for r in per_epoch)
    assert all(0 <= r["teacher_entropy"] <= math.log(256) + 1e-4 for r in per_epoch)
    # keep_last=2 checkpoints, complete ones only
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step_00000009", "step_00000010"]
    # native transformers backbone, no timm and no remote code needed
    from transformers import AutoModel

    model = AutoModel.from_pretrained(out / "backbone")
    assert type(model).__name__ == "ViTModel" and model.config.image_size == 32
    assert "auto_map" not in json.loads((out / "backbone" / "config.json").read_text())
    assert (out / "dino" / "teacher.safetensors").exists() and (out / "dino" / "student.safetensors").exists()
    knn = json.loads((out / "knn.json").read_text())
    assert set(knn) >= {"pretrained", "random_init"} and 0 <= knn["pretrained"]["F2_CIW"] <= 1
    # all of it is what overwrite_output_dir may clear
    from sewer_hf.train.run import RUN_OUTPUTS

    assert {p.name for p in out.iterdir()} <= RUN_OUTPUTS


def test_resume_matches_an_uninterrupted_run(tiny_data, tmp_path):
    common = dict(epochs=2, save_every_steps=100, knn_eval=False, rankme_samples=0, drop_path_rate=0.1)
    run(tiny_data, tmp_path / "full", **common)
    # Stop in the middle of epoch 1, then resume from the latest checkpoint.
    run(tiny_data, tmp_path / "split", max_steps=7, **common)
    assert (tmp_path / "split" / "checkpoints" / "step_00000007").is_dir()
    run(tiny_data, tmp_path / "split", resume_from_checkpoint="latest", **common)
    full = load_file(str(tmp_path / "full" / "dino" / "teacher.safetensors"))
    split = load_file(str(tmp_path / "split" / "dino" / "teacher.safetensors"))
    assert full.keys() == split.keys()
    worst = max((full[k].float() - split[k].float()).abs().max().item() for k in full)
    assert worst < 1e-5, worst
    lines = [json.loads(l) for l in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 11))  # one uninterrupted log


def test_non_finite_loss_stops_and_keeps_checkpoint(tiny_data, tmp_path, monkeypatch):
    from sewer_hf.models import dino
    from sewer_hf.train.run import NonFiniteLossError

    original = dino.DINOLoss.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        loss = original(self, *args, **kwargs)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(dino.DINOLoss, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 3"):
        run(tiny_data, tmp_path / "nan", epochs=1, save_every_steps=2, knn_eval=False, rankme_samples=0)
    assert sorted(p.name for p in (tmp_path / "nan" / "checkpoints").iterdir()) == ["step_00000002"]


def _launch(tiny_data, out, nproc, batch_size, port, *extra):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args = [f"--data={tiny_data}", f"--output_dir={out}", "--epochs=1", "--max_steps=3", "--drop_path_rate=0",
            "--knn_eval=false", "--rankme_samples=0", "--save_rank_states=true", f"--batch_size={batch_size}"]
    args += [f"--{k}={v}" for k, v in TINY.items() if k != "batch_size"] + list(extra)
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    if nproc > 1:
        launch += ["--multi_gpu", "--num_processes", str(nproc)]
    else:
        launch += ["--num_processes", "1"]
    launch += ["--num_machines", "1", "--main_process_port", str(port), "--mixed_precision", "no",
               "--dynamo_backend", "no", str(ROOT / "recipes" / "pretrain_dino.py")]
    proc = subprocess.run(launch + args, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_two_processes_match_one_process(tiny_data, tmp_path, free_port):
    # per-image seeded augmentation (the batched one draws per process, so its views depend on
    # the process count): then 2 processes x 4 images train exactly what 1 process x 8 does
    _launch(tiny_data, tmp_path / "two", 2, 4, free_port, "--feed=per_image")
    # the one-process reference runs in this process (a third interpreter start buys nothing)
    run(tiny_data, tmp_path / "one", epochs=1, max_steps=3, drop_path_rate=0, knn_eval=False, rankme_samples=0,
        save_rank_states=True, feed="per_image")
    r0 = load_file(str(tmp_path / "two" / "rank_states" / "rank0.safetensors"))
    r1 = load_file(str(tmp_path / "two" / "rank_states" / "rank1.safetensors"))
    one = load_file(str(tmp_path / "one" / "rank_states" / "rank0.safetensors"))
    for key in r0:  # both ranks hold the very same teacher and center
        assert torch.equal(r0[key], r1[key]), key
    assert not torch.equal(r0["center"], torch.zeros_like(r0["center"]))
    worst = max((r0[k] - one[k]).abs().max().item() for k in r0)
    assert worst < 1e-5, worst  # same global batch: same result up to float reduction order (a different seed: ~0.1)


def test_batch_augmentation_on_the_device_path(tiny_data, tmp_path):
    """The GPU path (workers decode to uint8, views drawn batched) runs on any device, and the
    feed thread (batches augmented ahead, in the background) trains exactly the same steps."""
    common = dict(epochs=1, decode_size=48, knn_eval=False, rankme_samples=0, save_every_steps=5)
    result = run(tiny_data, tmp_path / "gpuaug", feed="batched", **common)
    lines = [json.loads(l) for l in (tmp_path / "gpuaug" / "metrics.jsonl").read_text().splitlines()]
    assert result["steps"] == 5 and all(math.isfinite(r["loss"]) for r in lines if "loss" in r)
    run(tiny_data, tmp_path / "thread", feed="batched_thread", **common)
    inline = load_file(str(tmp_path / "gpuaug" / "checkpoints" / "step_00000005" / "model.safetensors"))
    thread = load_file(str(tmp_path / "thread" / "checkpoints" / "step_00000005" / "model.safetensors"))
    assert all(torch.equal(inline[k], thread[k]) for k in inline)


def test_frames_kept_in_memory_train_exactly_as_frames_read_again(tiny_data, tmp_path, capsys):
    """keep_frames_mb: the second epoch reads its frames (and the hybrid labels) from memory; the
    run is the same, to the bit, as one that decodes every frame again in every epoch."""
    common = dict(epochs=2, decode_size=48, hybrid=True, knn_eval=False, rankme_samples=0, save_every_steps=100)
    run(tiny_data, tmp_path / "kept", **common)
    assert "decoded frames kept in memory after their first read" in capsys.readouterr().out
    run(tiny_data, tmp_path / "read", keep_frames_mb=0, **common)
    assert "kept in memory" not in capsys.readouterr().out
    kept, read = (load_file(str(tmp_path / name / "dino" / "student.safetensors")) for name in ("kept", "read"))
    assert kept.keys() == read.keys() and all(torch.equal(kept[k], read[k]) for k in kept)


def test_images_decoded_on_the_device_feed_the_views(tiny_data, tmp_path):
    """decode_on_device with hybrid labels: workers hand over the files' bytes, the feed decodes
    them to decode_size squares and augments them."""
    result = run(tiny_data, tmp_path / "decoded", epochs=1, decode_on_device=True, decode_size=48,
                 feed="batched_thread", hybrid=True, knn_eval=False, rankme_samples=0)
    lines = [json.loads(l) for l in (tmp_path / "decoded" / "metrics.jsonl").read_text().splitlines()]
    assert result["steps"] == 5 and result["skipped_images"] == 0
    assert all(math.isfinite(r["loss"]) and r["bce"] > 0 for r in lines if "loss" in r)


def test_compiled_device_augmentation_trains_in_the_feed_thread(tiny_data, tmp_path):
    """compile_augment: the augmentation is torch.compiled (inductor, on the CPU here) and
    called from the feed thread."""
    torch._dynamo.reset()  # no graphs left from other tests' shapes
    result = run(tiny_data, tmp_path / "compiled", epochs=1, compile_augment=True, feed="batched_thread",
                 decode_size=48, knn_eval=False, rankme_samples=0)
    lines = [json.loads(l) for l in (tmp_path / "compiled" / "metrics.jsonl").read_text().splitlines()]
    assert result["steps"] == 5 and all(math.isfinite(r["loss"]) for r in lines if "loss" in r)


def test_hybrid_mode_adds_the_weighted_bce_and_logs_to_tensorboard(tiny_data, tmp_path):
    run(tiny_data, tmp_path / "hybrid", epochs=1, hybrid=True, hybrid_weight=0.5, knn_eval=False,
        rankme_samples=0, report_to="tensorboard")
    lines = [json.loads(l) for l in (tmp_path / "hybrid" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "loss" in r]
    assert steps and all(r["bce"] > 0 and math.isfinite(r["bce"]) for r in steps)
    # the hybrid objective is DINO + weight * BCE, so it exceeds the BCE part alone
    assert all(r["loss"] > 0.5 * r["bce"] for r in steps)
    events = list((tmp_path / "hybrid" / "logs").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from sewer_hf.train.run import RUN_OUTPUTS

    assert {p.name for p in (tmp_path / "hybrid").iterdir()} <= RUN_OUTPUTS


def test_koleo_weight_adds_its_term_to_the_dino_loss(tiny_data, tmp_path):
    """First step, same seed, same weights, same batch: the loss with KoLeo is the plain DINO
    loss plus koleo_weight x the logged KoLeo term."""
    small = dict(epochs=1, max_steps=2, knn_eval=False, rankme_samples=0)
    run(tiny_data, tmp_path / "plain", **small)
    run(tiny_data, tmp_path / "koleo", koleo_weight=0.5, **small)
    plain, koleo = ([json.loads(l) for l in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
                    for name in ("plain", "koleo"))
    assert "koleo" not in plain[0] and all(math.isfinite(r["koleo"]) for r in koleo if "loss" in r)
    assert koleo[0]["loss"] == pytest.approx(plain[0]["loss"] + 0.5 * koleo[0]["koleo"], rel=1e-4)
    with pytest.raises(ConfigError, match="koleo_weight=0.1 needs batch_size >= 2"):
        PretrainConfig(koleo_weight=0.1, batch_size=1).validate()


def test_collapse_warning():
    from sewer_hf.models.dino import collapse_warning, teacher_entropy

    uniform = torch.zeros(8, 64)
    assert teacher_entropy(uniform, torch.zeros(1, 64), 0.04) == pytest.approx(math.log(64), rel=1e-5)
    peaked = torch.zeros(8, 64)
    peaked[:, 3] = 10.0
    assert teacher_entropy(peaked, torch.zeros(1, 64), 0.04) < 0.01
    assert collapse_warning(math.log(64) * 0.99, 20.0, 64) is not None  # uniform teacher
    assert collapse_warning(1.0, 1.1, 64) is not None  # one dimension left
    assert collapse_warning(1.0, 20.0, 64) is None


# DINO's feed thread on 2 processes (gloo) is checked by the label-efficiency test's 2-process
# launch (tests/test_label_efficiency.py): one launch serves both.
