"""Fine-tuning / linear probe / supervised baseline on tiny synthetic data, the exported
classifier with the stock pipeline, predict + evaluate end to end, and the weighted loss."""
import csv
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sewer_hf.config import FinetuneConfig, load_config
from sewer_hf.data import labels as L
from sewer_hf.train.finetune import finetune
from sewer_hf.train.optim import multistep_lr

TINY = dict(image_size=32, batch_size=8, num_workers=0, report_to="none", log_every=1, base_lr=5e-3,
            drop_path_rate=0.0, epochs=2, lr_milestones=(1, 2))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from sewer_hf.synth import generate_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, 48, 16, seed=4, size=(352, 288), progress=False, defect_fraction=0.8)
    return str(root)


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory):
    from sewer_hf.models.hf_export import save_backbone
    from sewer_hf.models.vit import create_backbone

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("bb") / "backbone"
    save_backbone(create_backbone("vit_tiny", img_size=32), out, image_size=32)
    return str(out)


def test_weighted_bce_uses_the_paper_pos_weight():
    from sewer_hf.models.losses import WeightedBCE

    torch.manual_seed(0)
    logits, targets = torch.randn(6, 17), (torch.rand(6, 17) > 0.5).float()
    w = torch.tensor([2 * (1 + L.CIW[c] / (sum(L.CIW.values()) / 17)) for c in L.CLASSES])
    manual = -(w * targets * torch.log(torch.sigmoid(logits)) + (1 - targets) * torch.log(1 - torch.sigmoid(logits)))
    assert torch.allclose(WeightedBCE()(logits, targets), manual.mean(), atol=1e-6)
    assert w[0] > w[2]  # RB (CIW 1.0) weighs more than PF (0.29)


def test_multistep_schedule_drops_at_milestones():
    lr = multistep_lr(1.0, (15, 35), 0.1, 45, 2)
    assert len(lr) == 90
    assert lr[29] == 1.0 and lr[30] == pytest.approx(0.1) and lr[70] == pytest.approx(0.01) and lr[-1] == pytest.approx(0.01)
    assert np.array_equal(lr, multistep_lr(1.0, (15, 35), 0.1, 45, 2, warmup_epochs=0))  # the paper's, exactly


def test_warmup_rises_linearly_then_follows_multistep():
    lr = multistep_lr(1.0, (3, 5), 0.1, 6, 4, warmup_epochs=1.5)
    assert lr[:6] == pytest.approx(np.arange(1, 7) / 6)  # 1.5 epochs x 4 iterations, linear up to the peak
    assert lr[6:12] == pytest.approx(1.0) and lr[12:20] == pytest.approx(0.1) and lr[20:] == pytest.approx(0.01)


def test_thresholds_are_fitted_on_held_out_train_rows_never_trained_on(tiny_data):
    from sewer_hf.data.sources import load_split
    from sewer_hf.train.finetune import split_holdout

    train_hf = load_split(tiny_data, "Train", labelled=True)
    kept, held = split_holdout(train_hf, FinetuneConfig(**TINY, threshold_holdout=0.25))
    assert not set(kept["filename"]) & set(held["filename"])
    # 25 % of 48 rows, plus whatever the one-row-per-class (and normal) guarantee adds on so few rows
    assert len(kept) + len(held) == len(train_hf) and 0.15 < len(held) / len(train_hf) < 0.45
    present = np.asarray(train_hf["labels"]).any(axis=0)
    assert np.asarray(held["labels"]).any(axis=0)[present].all()  # every class to fit a threshold for
    assert not np.asarray(held["labels"]).any(axis=1).all()  # and normal frames: the F1_Normal floor needs them
    assert split_holdout(train_hf, FinetuneConfig(**TINY, threshold_holdout=0.0))[1] is None


def test_finetune_exports_a_stock_pipeline_classifier(tiny_data, backbone_dir, tmp_path):
    out = tmp_path / "ft"
    result = finetune(FinetuneConfig(**TINY, data=tiny_data, backbone=backbone_dir, output_dir=str(out)))
    assert result["best_epoch"] >= 1
    report = json.loads((out / "eval.json").read_text())
    for key in ("F2_CIW", "F1_Normal", "mAP", "macro_F1", "per_class", "shipped_thresholds", "at_shipped_thresholds",
                "constant_baseline", "beats_constant_baseline"):
        assert key in report
    assert report["split"] == "Val" and report["epoch"] == result["best_epoch"]
    assert "held-out" in report["thresholds_fitted_on"]  # not fitted on the reported split
    assert set(report["constant_baseline"]) == {"F2_CIW", "F1_Normal", "mAP"}
    # the epochs are chosen on the hold-out alone: val is scored once, on the exported classifier
    epochs = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "selection_F2_CIW" in r]
    assert len(epochs) == 2 and all("holdout_mAP" in r and not any(k.startswith("val_") for k in r) for r in epochs)
    assert max(epochs, key=lambda r: r["selection_F2_CIW"])["epoch"] == report["epoch"]

    from PIL import Image
    from transformers import AutoConfig, AutoModelForImageClassification, pipeline

    config = AutoConfig.from_pretrained(out / "classifier")
    assert config.problem_type == "multi_label_classification"
    assert [config.id2label[i] for i in range(17)] == list(L.CLASSES)
    assert set(config.sewer_thresholds) == set(L.CLASSES)
    assert "auto_map" not in json.loads((out / "classifier" / "config.json").read_text())
    model = AutoModelForImageClassification.from_pretrained(out / "classifier")
    assert type(model).__name__ == "ViTForImageClassification"

    image = Image.open(next(p for p in sorted(__import__("pathlib").Path(tiny_data).glob("*.png"))))
    preds = pipeline("image-classification", model=str(out / "classifier"), top_k=17)(image)
    assert len(preds) == 17 and {p["label"] for p in preds} == set(L.CLASSES)
    assert abs(sum(p["score"] for p in preds) - 1.0) > 1e-3  # independent sigmoids, not a softmax


def test_predict_then_evaluate_round_trip(tiny_data, backbone_dir, tmp_path, capsys):
    from sewer_hf.cli import main

    out = tmp_path / "ft"
    finetune(FinetuneConfig(**{**TINY, "epochs": 1}, data=tiny_data, backbone=backbone_dir, output_dir=str(out)))
    scores = tmp_path / "scores.csv"
    assert main(["predict", "--model", str(out / "classifier"), "--data", tiny_data, "--split", "Val",
                 "--out", str(scores), "--batch-size", "5"]) == 0
    rows = list(csv.DictReader(scores.open()))
    assert len(rows) == 16 and list(rows[0]) == ["Filename", *L.CLASSES]
    capsys.readouterr()
    assert main(["evaluate", "--annotations", f"{tiny_data}/SewerML_Val.csv", "--scores", str(scores),
                 "--json", str(tmp_path / "m.json")]) == 0
    # the predict path reproduces the validation scores of the training loop (same model, same split)
    got = json.loads((tmp_path / "m.json").read_text())
    best = json.loads((out / "eval.json").read_text())
    assert got["mAP"] == pytest.approx(best["mAP"], abs=0.02)


def test_linear_probe_leaves_the_backbone_untouched(tiny_data, backbone_dir, tmp_path):
    out = tmp_path / "lin"
    finetune(FinetuneConfig(**{**TINY, "epochs": 1}, data=tiny_data, backbone=backbone_dir, linear_probe=True,
                            output_dir=str(out)))
    before = load_file(f"{backbone_dir}/model.safetensors")
    after = load_file(str(out / "classifier" / "model.safetensors"))
    key = "encoder.layer.0.attention.attention.query.weight"
    assert torch.equal(before[key], after["vit." + key])
    assert not torch.equal(after["classifier.weight"], torch.zeros_like(after["classifier.weight"]))


def _weight_average(checkpoint):
    """The WeightAverage state a checkpoint holds (accelerate pickles registered objects in order:
    the loop counters, then the average)."""
    return torch.load(checkpoint / "custom_checkpoint_1.pkl", weights_only=False)


@pytest.mark.parametrize("repeat_factor_threshold", [0.0, 0.5])
def test_fraction_and_resume_from_scratch(tiny_data, tmp_path, repeat_factor_threshold):
    """A killed run resumes to the same weights, and to the same weight average, which is what
    the classifier ships; with repeat-factor sampling too (the resumed epoch redraws its frames)."""
    common = dict(TINY, data=tiny_data, fraction=0.5, epochs=2, threshold_holdout=0.0, ema_decay=0.9,
                  repeat_factor_threshold=repeat_factor_threshold)
    finetune(FinetuneConfig(**common, output_dir=str(tmp_path / "full")))
    finetune(FinetuneConfig(**common, output_dir=str(tmp_path / "split"), max_steps=4))
    finetune(FinetuneConfig(**common, output_dir=str(tmp_path / "split"), resume_from_checkpoint="latest"))
    a = load_file(str(tmp_path / "full" / "checkpoints" / "step_00000006" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "checkpoints" / "step_00000006" / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    ema_a, ema_b = (_weight_average(tmp_path / run / "checkpoints" / "step_00000006") for run in ("full", "split"))
    assert int(ema_a["updates"]) == 6 and max((ema_a[k] - ema_b[k]).abs().max().item() for k in ema_a) < 1e-5
    assert (ema_a["module.head.weight"] - a["head.weight"]).abs().max() > 1e-6  # an average, not the last step
    epoch = json.loads((tmp_path / "full" / "eval.json").read_text())["epoch"]
    shipped = load_file(str(tmp_path / "full" / "classifier" / "model.safetensors"))["classifier.weight"]
    chosen = _weight_average(tmp_path / "full" / "checkpoints" / f"step_{3 * epoch:08d}")
    assert torch.allclose(shipped, chosen["module.head.weight"])
    lines = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert sum("loss" in r for r in lines) == 6  # 24 of 48 images, batch 8: 3 steps x 2 epochs


def test_weight_average_forgets_the_init_then_averages_at_its_decay():
    from sewer_hf.train.optim import WeightAverage

    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = WeightAverage(model, decay=0.99)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # decay min(0.99, 2 / 11): mostly the new weights already
    assert ema.module.weight[0, 0].item() == pytest.approx(1 - 2 / 11)
    for _ in range(1000):
        ema.update(model)
    with torch.no_grad():
        model.weight.fill_(2.0)
    before = ema.module.weight[0, 0].item()
    ema.update(model)  # after 1,002 updates the ramp (1 + n) / (10 + n) has reached 0.99
    assert ema.module.weight[0, 0].item() == pytest.approx(before + 0.01 * (2.0 - before))
    assert not ema.module.weight.requires_grad
    # the parameters are walked once per model: weights swapped under a parameter (a resumed
    # run's load) and another model object are both followed
    with torch.no_grad():
        model.weight.data = torch.full((1, 2), 3.0)
    before = ema.module.weight[0, 0].item()
    ema.update(model)
    assert ema.module.weight[0, 0].item() == pytest.approx(before + 0.01 * (3.0 - before))
    other = torch.nn.Linear(2, 1)
    with torch.no_grad():
        other.weight.fill_(-1.0)
    before = ema.module.weight[0, 0].item()
    ema.update(other)
    assert ema.module.weight[0, 0].item() == pytest.approx(before + 0.01 * (-1.0 - before))


def test_weight_average_copies_buffers_even_when_reassigned():
    from sewer_hf.train.optim import WeightAverage

    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    ema = WeightAverage(model, decay=0.99)
    model[1].running_mean.fill_(4.0)
    ema.update(model)
    assert ema.module[1].running_mean.tolist() == [4.0] * 3
    model[1].running_mean = torch.full((3,), 5.0)  # a new tensor object under the same buffer
    ema.update(model)
    assert ema.module[1].running_mean.tolist() == [5.0] * 3 and int(ema.updates) == 2


def test_prior_logits_minimise_the_weighted_loss_among_constants():
    from sewer_hf.models.losses import WeightedBCE, prior_logits

    rng = np.random.default_rng(0)
    y = torch.as_tensor((rng.random((400, 17)) < np.linspace(0.02, 0.6, 17)).astype(np.float32))
    b = prior_logits(y)
    loss = WeightedBCE()
    best = loss(b.expand(400, 17), y)
    for shift in (-0.2, 0.2):
        assert loss((b + shift).expand(400, 17), y) > best


def test_batch_augmentation_on_the_device_path_resumes_exactly(tiny_data, tmp_path, capsys):
    """The batched feed (here on the CPU, with float16 colour ops): workers only decode;
    the batched fine-tuning augmentation draws from a generator keyed by epoch and batch, so a
    resumed run matches, and so does one whose batches were prepared ahead in the feed thread."""
    common = dict(TINY, data=tiny_data, fraction=0.5, epochs=2, augment_dtype="float16",
                  threshold_holdout=0.0)
    finetune(FinetuneConfig(**common, output_dir=str(tmp_path / "full"), feed="batched_thread"))
    assert "augmentation batched on the CPU, the next batches prepared in a background thread;" in capsys.readouterr().out
    finetune(FinetuneConfig(**common, output_dir=str(tmp_path / "split"), max_steps=4, feed="batched"))
    threads = torch.get_num_threads()  # the recipe set them: the cores, no loader workers (0 in TINY)
    assert f"augmentation batched on the CPU; {threads} torch thread(s), 0 loader worker(s)" in capsys.readouterr().out
    finetune(FinetuneConfig(**common, output_dir=str(tmp_path / "split"), resume_from_checkpoint="latest", feed="batched_thread"))
    a = load_file(str(tmp_path / "full" / "checkpoints" / "step_00000006" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "checkpoints" / "step_00000006" / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    lines = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert sum("loss" in r for r in lines) == 6 and all(math.isfinite(r["loss"]) for r in lines if "loss" in r)


def test_augment_generator_differs_per_batch_and_process():
    from types import SimpleNamespace

    from sewer_hf.feed.pipeline import augment_generator

    rank0 = SimpleNamespace(device=torch.device("cpu"), process_index=0)
    rank1 = SimpleNamespace(device=torch.device("cpu"), process_index=1)
    draws = [torch.rand(4, generator=augment_generator(7, epoch, batch, rank0)) for epoch, batch in [(0, 1), (0, 2), (1, 1), (0, 1)]]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert torch.equal(draws[0], draws[3])  # same (epoch, batch): same draws, as after a resume
    assert not torch.equal(draws[0], torch.rand(4, generator=augment_generator(7, 0, 1, rank1)))


def test_feed_thread_needs_no_accumulation_and_old_feed_keys_are_named(tiny_data, tmp_path):
    from sewer_hf.errors import ConfigError

    cfg = FinetuneConfig(**{**TINY, "gradient_accumulation_steps": 2}, data=tiny_data, output_dir=str(tmp_path / "x"),
                         feed="batched_thread")
    with pytest.raises(ConfigError, match="feed=batched_thread with gradient_accumulation_steps=2"):
        finetune(cfg)
    # the settings of earlier versions are refused with what replaced them
    with pytest.raises(ConfigError, match="option --device_feed was replaced by --feed .thread -> feed: batched_thread"):
        load_config(FinetuneConfig, None, {"device_feed": "thread"})
    with pytest.raises(ConfigError, match="option --gpu_augment was replaced by --feed .false -> feed: per_image"):
        load_config(FinetuneConfig, None, {"gpu_augment": "false"})


def test_images_decoded_on_the_device_skip_a_corrupt_one(tiny_data, tmp_path, capsys):
    """decode_on_device: the workers hand over the files' bytes and the feed decodes each batch
    (nvjpeg on CUDA; the CPU here). A corrupt frame is dropped with its labels, counted, and the
    run goes on."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    first = (data / "SewerML_Train.csv").read_text().splitlines()[1].split(",")[0]
    (data / first).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    cfg = FinetuneConfig(**TINY, data=str(data), output_dir=str(tmp_path / "ft"),
                         decode_on_device=True, feed="batched_thread", threshold_holdout=0.0)  # all 48 train
    result = finetune(cfg)
    assert "images decoded there" in capsys.readouterr().out
    assert result["skipped_images"] == TINY["epochs"]  # 48 frames, batch 8: every frame in every epoch
    lines = [json.loads(l) for l in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert sum("loss" in r for r in lines) == 12 and all(math.isfinite(r["loss"]) for r in lines if "loss" in r)

    from sewer_hf.errors import ConfigError

    with pytest.raises(ConfigError, match="decode_on_device .* needs feed=auto, batched or batched_thread, not feed=per_image"):
        finetune(FinetuneConfig(**TINY, data=str(data), output_dir=str(tmp_path / "x"), feed="per_image",
                                decode_on_device=True))


def test_repeat_factor_sampling_reaches_the_prepared_loader(tiny_data):
    """The recipe's loader as accelerate prepares it draws frames by their repeat factors: frames
    come back more than once in an epoch, the rarer ones more often, each epoch its own seeded
    draw (set_epoch reaches the sampler), the same draw again for the same epoch (a resume)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    from sewer_hf.data.sampling import repeat_factors
    from sewer_hf.data.sources import load_split
    from sewer_hf.train.finetune import finetune_feed

    cfg = FinetuneConfig(**TINY, data=tiny_data, repeat_factor_threshold=0.5)
    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    train = load_split(tiny_data, "Train", labelled=True)
    weights = repeat_factors(np.asarray(train["labels"]), 0.5)
    assert weights.max() > 1.5 * weights.min()  # the fixture has rare and frequent classes
    _, loader = finetune_feed(cfg, accelerator, train)
    loader = accelerator.prepare(loader)

    def drawn(epoch: int) -> list[int]:
        loader.set_epoch(epoch)
        return [i for batch in loader for i in batch["index"].tolist()]

    epochs = [drawn(e) for e in range(6)]
    assert all(len(e) == len(train) for e in epochs)  # 48 frames, batch 8: the epoch keeps its length
    assert any(len(set(e)) < len(e) for e in epochs)  # with replacement: not a permutation
    assert epochs[1] != epochs[0] and drawn(0) == epochs[0]
    every = np.concatenate(epochs)
    assert weights[every].mean() > weights.mean() + 0.1  # uniform shuffling would give exactly the mean


@pytest.mark.parametrize("selection, shipped_epoch", [("best", 1), ("last", 3)])
def test_epoch_selection_ships_the_best_hold_out_epoch_or_the_last(tiny_data, tmp_path, monkeypatch, selection,
                                                                     shipped_epoch):
    """With the hold-out's score made to fall after epoch 1, "best" ships epoch 1 and "last" epoch 3;
    eval.json and the exported classifier name the same epoch."""
    from sewer_hf.train import evaluation

    real, fitted_calls = evaluation.compute_metrics, []

    def falling_after_epoch_one(scores, targets, thresholds=None):
        metrics = real(scores, targets) if thresholds is None else real(scores, targets, thresholds)
        if thresholds is not None and len(fitted_calls) < 3:  # the hold-out at its fitted thresholds, epochs 1-3
            fitted_calls.append(1)
            metrics = {**metrics, "F2_CIW": 1.0 / len(fitted_calls)}
        return metrics

    monkeypatch.setattr(evaluation, "compute_metrics", falling_after_epoch_one)
    out = tmp_path / selection
    finetune(FinetuneConfig(**{**TINY, "epochs": 3}, data=tiny_data, threshold_holdout=0.25, epoch_selection=selection,
                            output_dir=str(out)))
    assert len(fitted_calls) == 3
    assert json.loads((out / "eval.json").read_text())["epoch"] == shipped_epoch
    config = json.loads((out / "classifier" / "config.json").read_text())
    assert config["sewer_hf"]["best_epoch"] == shipped_epoch
