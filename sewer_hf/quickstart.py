"""`sewer-hf quickstart`: the paper end to end, in miniature, on synthetic data (2 CPU cores).

Stages (each one's result is kept in `<out>/<stage>/stage.json`, so a re-run reuses finished
stages): synthetic data -> DINO pretraining (smoke) -> fine-tuning from it -> the same budget
from scratch -> predict + evaluate both on Val -> `pipeline(...)` on a held-out frame -> the Hub
repo folder of the fine-tuned classifier, as a dry run (`<out>/hub_dry_run/`). A table
and `<out>/summary.json` close the run. Synthetic numbers are not Sewer-ML numbers.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable

from sewer_hf import labels as L

# More defect frames than Sewer-ML's 47 %, so that 256 val frames hold positives of most classes.
DEFECT_FRACTION = 0.6
CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "configs"


def _config_path(name: str) -> str:
    """The smoke YAML from the source tree, or the packaged copy when installed as a wheel."""
    local = CONFIGS / name
    if local.is_file():
        return str(local)
    from importlib import resources

    return str(resources.files("sewer_hf") / "resources" / "configs" / name)


def run_stage(out: Path, name: str, fn: Callable[[], dict[str, Any]], timings: dict[str, float]) -> dict[str, Any]:
    marker = out / name / "stage.json"
    if marker.is_file():
        done = json.loads(marker.read_text())
        print(f"[quickstart] {name}: reusing the finished stage ({marker})")
        timings[name] = done.get("seconds", 0.0)
        return done
    print(f"[quickstart] {name} ...", flush=True)
    start = time.perf_counter()
    result = fn()
    result["seconds"] = round(time.perf_counter() - start, 1)
    timings[name] = result["seconds"]
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    tmp.replace(marker)
    print(f"[quickstart] {name}: done in {result['seconds']:.0f} s", flush=True)
    return result


def quickstart(out: str | Path = "runs/quickstart", n_train: int = 768, n_val: int = 256, seed: int = 0,
               pretrain_epochs: int | None = None, finetune_epochs: int | None = None) -> dict[str, Any]:
    from sewer_hf.config import FinetuneConfig, PretrainConfig, load_config
    from sewer_hf.finetune import finetune
    from sewer_hf.pretrain import pretrain
    from sewer_hf.synth import generate_dataset

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    timings: dict[str, float] = {}
    wall = time.perf_counter()

    def make_data():
        info = generate_dataset(data, n_train, n_val, seed=seed, size=(352, 288), defect_fraction=DEFECT_FRACTION,
                                progress=True, overwrite=True)
        return {"data": str(data), "train": n_train, "val": n_val, "info": info}

    run_stage(out, "data", make_data, timings)

    def pretrain_stage():
        over = {"data": str(data), "output_dir": str(out / "dino"), "seed": seed, "report_to": "none"}
        if pretrain_epochs:
            over["epochs"] = pretrain_epochs
        cfg = load_config(PretrainConfig, _config_path("smoke_dino.yaml"), over)
        return pretrain(cfg)

    dino = run_stage(out, "dino", pretrain_stage, timings)

    def finetune_stage(name: str, backbone: str | None):
        def fn():
            over = {"data": str(data), "output_dir": str(out / name), "seed": seed, "report_to": "none",
                    "backbone": backbone}
            if finetune_epochs:
                over["epochs"] = finetune_epochs
            return finetune(load_config(FinetuneConfig, _config_path("smoke_finetune.yaml"), over))
        return fn

    run_stage(out, "ssl_finetune", finetune_stage("ssl_finetune", dino["backbone"]), timings)
    run_stage(out, "supervised", finetune_stage("supervised", None), timings)

    def evaluate_stage():
        from sewer_hf.cli import main as cli

        results = {}
        for name in ("ssl_finetune", "supervised"):  # the user's own commands: predict, then evaluate
            scores, report = out / name / "val_scores.csv", out / name / "val_metrics.json"
            cli(["predict", "--model", str(out / name / "classifier"), "--data", str(data), "--split", "Val",
                 "--out", str(scores)])
            cli(["evaluate", "--annotations", str(data / "SewerML_Val.csv"), "--scores", str(scores),
                 "--json", str(report)])
            m = json.loads(report.read_text())
            results[name] = {k: m[k] for k in ("F2_CIW", "F1_Normal", "mAP")}
        return results

    evaluation = run_stage(out, "evaluate", evaluate_stage, timings)

    def pipeline_stage():
        from PIL import Image
        from transformers import pipeline

        from sewer_hf.synth import render_frame
        import numpy as np

        labels = np.zeros(L.NUM_CLASSES, dtype=np.uint8)
        labels[L.CLASSES.index("RO")] = 1  # a held-out frame with roots, never in the training set
        frame = render_frame(labels, water_level=10, size=(352, 288), rng=np.random.default_rng(10_000 + seed))
        frame.save(out / "heldout_frame.png")
        clf = pipeline("image-classification", model=str(out / "ssl_finetune" / "classifier"), top_k=L.NUM_CLASSES)
        preds = clf(Image.open(out / "heldout_frame.png"))
        return {"frame": str(out / "heldout_frame.png"), "true_labels": ["RO"],
                "top5": [(p["label"], round(p["score"], 4)) for p in preds[:5]]}

    pipe = run_stage(out, "pipeline", pipeline_stage, timings)

    def push_stage():  # the Hub repo folder `sewer-hf push` would upload (dry run: no token, no network)
        import shutil

        from sewer_hf.hub import push_model

        folder = out / "hub_dry_run"
        shutil.rmtree(folder, ignore_errors=True)  # left half-written by an interrupted run
        result = push_model(out / "ssl_finetune" / "classifier", "your-name/sewer-vit-tiny-quickstart",
                            dry_run=True, out_dir=folder, synthetic=True)
        return {"folder": str(folder), "files": result.files}

    hub = run_stage(out, "push", push_stage, timings)

    summary = {
        "ssl_finetune": evaluation["ssl_finetune"], "supervised": evaluation["supervised"],
        "knn": dino.get("knn"), "pipeline_top5": pipe["top5"], "stage_seconds": timings,
        "total_seconds": round(time.perf_counter() - wall, 1),
        "hub_dry_run": hub["folder"],
        "note": "Synthetic data: these numbers are not Sewer-ML numbers.",
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    print("\n| run (synthetic Val) | F2_CIW | F1_Normal | mAP |")
    print("| --- | --- | --- | --- |")
    for name, label in (("ssl_finetune", "DINO + fine-tune"), ("supervised", "from scratch, same budget")):
        m = summary[name]
        print(f"| {label} | {100 * m['F2_CIW']:.2f} | {100 * m['F1_Normal']:.2f} | {100 * m['mAP']:.2f} |")
    print("\n| stage | seconds |\n| --- | --- |")
    for stage, sec in summary["stage_seconds"].items():
        print(f"| {stage} | {sec:.0f} |")
    print(f"\npipeline on a held-out frame with roots (RO): top 5 {summary['pipeline_top5']}")
    if summary.get("hub_dry_run"):
        print(f"Hub repo folder (dry run, with its model card): {summary['hub_dry_run']}")
    print(summary["note"])


def add_quickstart_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/quickstart")
    parser.add_argument("--train", type=int, default=768, help="synthetic training frames")
    parser.add_argument("--val", type=int, default=256, help="synthetic validation frames")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain-epochs", type=int, default=None)
    parser.add_argument("--finetune-epochs", type=int, default=None)
    parser.set_defaults(func=lambda a: quickstart(a.out, a.train, a.val, a.seed, a.pretrain_epochs,
                                                  a.finetune_epochs) and 0)
