"""Fine-tuning's evaluation: every epoch the selection split (a held-out part of train, or val)
is scored, the thresholds fitted there (F2_CIW with an F1_Normal floor) and the best epoch
exported as ``classifier/``; at the end val is scored once on what ships, at 0.5 and at the
shipped thresholds, next to the constant-predictor baseline (``eval.json``)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import ViTConfig

from sewer_hf.config import save_config
from sewer_hf.data import labels as L
from sewer_hf.metrics import beats_baseline, compute_metrics, learned, tune_thresholds
from sewer_hf.models.hf_export import load_classifier_module, load_classifier_thresholds, save_classifier


@torch.no_grad()
def predict_scores(model, loader, accelerator, desc: str = "eval") -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid scores and targets of a (prepared) loader, gathered over processes. Rows are
    matched by dataset index, so neither the padding that evens out the last batch nor skipped
    unreadable images can duplicate or shift a row."""
    model.eval()
    scores, targets, indices = [], [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not accelerator.is_local_main_process):
        if batch is None:
            batch = {"pixel_values": torch.zeros(0, 3, 1, 1), "labels": torch.zeros(0, L.NUM_CLASSES),
                     "index": torch.zeros(0, dtype=torch.long)}
        with accelerator.autocast():
            logits = model(batch["pixel_values"].to(accelerator.device)) if len(batch["index"]) else \
                torch.zeros(0, L.NUM_CLASSES, device=accelerator.device)
        idx = torch.as_tensor(batch["index"], device=accelerator.device)
        prob = torch.sigmoid(logits.float())
        lab = batch["labels"].to(accelerator.device).float()
        # Pad to a common size so uneven batches (skipped images) can be gathered; -1 marks padding.
        idx = accelerator.pad_across_processes(idx, dim=0, pad_index=-1)
        prob = accelerator.pad_across_processes(prob, dim=0)
        lab = accelerator.pad_across_processes(lab, dim=0)
        indices.append(accelerator.gather(idx).cpu())
        scores.append(accelerator.gather(prob).cpu())
        targets.append(accelerator.gather(lab).cpu())
    model.train()
    idx = torch.cat(indices).numpy()
    keep = idx >= 0
    idx, s, t = idx[keep], torch.cat(scores).numpy()[keep], torch.cat(targets).numpy()[keep]
    _, first = np.unique(idx, return_index=True)
    return s[first], t[first].astype(np.int64)


@dataclass
class Evaluation:
    """What every epoch is scored on: val (reported), the held-out part of train (thresholds and
    the choice of epoch; None = val plays that part) and val's constant-predictor baseline."""

    val: Any
    holdout: Any
    baseline: dict


def validate(run, model, evaluation: Evaluation) -> None:
    """Score the selection split (the hold-out, or val when there is none) and fit the
    thresholds there; when the selection score improves (or every epoch, with
    ``epoch_selection="last"``), export the classifier with them.
    With a hold-out, val is not looked at here: `report_val` scores the chosen classifier once
    at the end (val is a report, and scoring it every epoch cost ~2 s of a ~30-s CPU epoch)."""
    cfg, accelerator, state = run.cfg, run.accelerator, run.state
    # Every process holds the gathered scores, so all agree on the best epoch; only main writes.
    on_holdout = evaluation.holdout is not None
    split = "hold-out" if on_holdout else cfg.val_split
    scores, targets = predict_scores(model, evaluation.holdout if on_holdout else evaluation.val, accelerator,
                                     desc=f"{split} epoch {state.epoch}")
    at_half = compute_metrics(scores, targets)
    thresholds = tune_thresholds(scores, targets) if cfg.tune_thresholds else np.full(L.NUM_CLASSES, 0.5)
    fitted = compute_metrics(scores, targets, thresholds)
    # the epoch is chosen where the thresholds were fitted, at those thresholds; without a
    # hold-out, val at 0.5 (choosing on val at thresholds fitted on val would be doubly optimistic)
    selection = fitted["F2_CIW"] if on_holdout else at_half["F2_CIW"]
    prefix = "holdout" if on_holdout else "val"
    headline = ("F2_CIW", "F1_Normal", "mAP")
    run.log.write({"step": state.step, "epoch": state.epoch, "selection_F2_CIW": selection,
               **{f"{prefix}_{k}": v for k, v in at_half.items() if isinstance(v, float)},
               **{f"{prefix}_shipped_{k}": fitted[k] for k in headline}})
    improved = selection > state.best_f2_ciw
    ship = improved or cfg.epoch_selection == "last"  # "last": each epoch replaces the one before
    accelerator.print(
        f"epoch {state.epoch}: {split} at 0.5 F2_CIW {100 * at_half['F2_CIW']:.2f} F1_Normal "
        f"{100 * at_half['F1_Normal']:.2f} mAP {100 * at_half['mAP']:.2f} | at fitted thresholds F2_CIW "
        f"{100 * fitted['F2_CIW']:.2f} F1_Normal {100 * fitted['F1_Normal']:.2f}"
        + ("  (best so far)" if improved and cfg.epoch_selection == "best" else ""))
    if ship:
        state.best_f2_ciw, state.best_epoch = float(selection), state.epoch
    if ship and accelerator.is_main_process:
        net = accelerator.unwrap_model(model)
        export_classifier(cfg, getattr(net, "_orig_mod", net), thresholds, state.epoch, len(targets), on_holdout)
        if not on_holdout:
            write_eval_report(cfg, state.epoch, at_half, fitted, thresholds, evaluation.baseline,
                              fitted_on(cfg, len(targets), False))
    accelerator.wait_for_everyone()


def report_val(run, evaluation: Evaluation) -> None:
    """Val, scored once on the exported classifier (the epoch chosen on the hold-out, with its
    thresholds), at 0.5 and at the shipped thresholds, next to the constant-predictor baseline:
    eval.json. Read back from disk, so a resumed run reports what it ships too."""
    cfg, accelerator, state = run.cfg, run.accelerator, run.state
    accelerator.wait_for_everyone()
    folder = Path(cfg.output_dir) / "classifier"
    model = load_classifier_module(folder, accelerator.device)
    config = ViTConfig.from_pretrained(folder)
    thresholds = load_classifier_thresholds(config)
    scores, targets = predict_scores(model, evaluation.val, accelerator, desc=f"{cfg.val_split} (epoch {state.best_epoch})")
    metrics, shipped = compute_metrics(scores, targets), compute_metrics(scores, targets, thresholds)
    base = evaluation.baseline
    accelerator.print(
        f"{cfg.val_split}, epoch {state.best_epoch} ({chosen(cfg)}): at 0.5 F2_CIW {100 * metrics['F2_CIW']:.2f} "
        f"F1_Normal {100 * metrics['F1_Normal']:.2f} mAP {100 * metrics['mAP']:.2f} | at the shipped thresholds F2_CIW "
        f"{100 * shipped['F2_CIW']:.2f} F1_Normal {100 * shipped['F1_Normal']:.2f} | constant predictor F2_CIW "
        f"{100 * base['F2_CIW']:.2f} F1_Normal {100 * base['F1_Normal']:.2f} mAP {100 * base['mAP']:.2f}")
    if accelerator.is_main_process:
        write_eval_report(cfg, state.best_epoch, metrics, shipped, thresholds, base,
                          getattr(config, "sewer_hf", {}).get("thresholds_fitted_on", fitted_on(cfg, None, True)))
    accelerator.wait_for_everyone()


def chosen(cfg) -> str:
    """How the shipped epoch was chosen, for the report line."""
    return "the last epoch" if cfg.epoch_selection == "last" else "chosen on the hold-out"


def fitted_on(cfg, n_images: int | None, on_holdout: bool) -> str:
    if on_holdout:
        size = f" ({n_images} images)" if n_images is not None else ""
        return f"a held-out {cfg.threshold_holdout:g} of the labelled train split{size}"
    return f"{cfg.val_split} (the reported split: optimistic)"


def export_classifier(cfg, net, thresholds, epoch: int, n_fit: int, on_holdout: bool) -> None:
    """classifier/ (native ViTForImageClassification + its thresholds) and its training config."""

    out = Path(cfg.output_dir)
    save_classifier(net.backbone, net.head, out / "classifier", image_size=cfg.image_size,
                    thresholds=dict(zip(L.CLASSES, map(float, thresholds))),
                    extra_config={"sewer_hf": {"stage": "finetune", "arch": cfg.arch,
                                               "linear_probe": cfg.linear_probe, "fraction": cfg.fraction,
                                               "backbone": cfg.backbone, "best_epoch": epoch,
                                               "thresholds_fitted_on": fitted_on(cfg, n_fit, on_holdout)}})
    save_config(cfg, out / "classifier" / "training_config.yaml")


def write_eval_report(cfg, epoch: int, metrics: dict, shipped: dict, thresholds, base: dict, fitted: str) -> None:
    report = {"split": cfg.val_split, "epoch": epoch, "threshold": 0.5, **metrics,
              "shipped_thresholds": dict(zip(L.CLASSES, map(float, thresholds))),
              "thresholds_fitted_on": fitted,
              "at_shipped_thresholds": {k: v for k, v in shipped.items() if isinstance(v, float)},
              "constant_baseline": base, "beats_constant_baseline": beats_baseline(shipped, base),
              "learned": learned(shipped, base)}
    (Path(cfg.output_dir) / "eval.json").write_text(json.dumps(report, indent=2))
