"""The paper's label-efficiency claim (Table 2) in miniature, on synthetic frames, as one rerunnable
experiment (`recipes/label_efficiency.py`, configs `recipes/configs/label_efficiency_*.yaml`).

    data     -> an unlabelled pool (Train: pretraining never reads its labels), Val (the epoch and
                the thresholds are chosen there) and a test set rendered with another seed, only
                ever reported; all `sewer-hf prepare`d to the training size
    pretrain -> DINO on the pool, once, shared by both DINO arms; a curve per epoch (loss,
                teacher entropy, RankMe, kNN mAP)
    arms     -> per label fraction and seed: DINO + fine-tune, DINO + linear probe, and the same
                architecture from scratch, each on the same stratified labelled subset (the
                fine-tuning `fraction` drawn with the run's seed; `train_rows.json` proves it)
    report   -> results.json (every run), label_efficiency.png, pretraining_curve.png

Each stage leaves `<out>/<stage>/stage.json`: a re-run reuses finished stages (refusing one made
with another config), and an interrupted training stage resumes from its last checkpoint.
"""
from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sewer_hf import __version__
from sewer_hf.atomic import write_json_atomically
from sewer_hf.cli import main as cli
from sewer_hf.config import FinetuneConfig, PretrainConfig, load_config
from sewer_hf.errors import ConfigError
from sewer_hf.experiments.quickstart import prepare_shards, shipped_config
from sewer_hf.experiments.stages import Stages, config_hash, process_state
from sewer_hf.feed.machine import available_cores, machine_record
from sewer_hf.metrics import LEARNED_BAR, constant_baseline, learned, read_annotation_targets
from sewer_hf.synth import generate_dataset
from sewer_hf.train.finetune import finetune
from sewer_hf.train.pretrain import pretrain
from sewer_hf.train.run import runs_share_the_launch, training_progress

ARMS = {  # name -> (label, uses the DINO backbone, linear probe)
    "dino_finetune": ("DINO + fine-tune", True, False),
    "dino_linear": ("DINO + linear probe", True, True),
    "scratch": ("from scratch", False, False),
}
METRICS = ("F2_CIW", "F1_Normal", "mAP")
TEST_SEED_OFFSET = 1000  # the test frames' renderer seed: never the pool's or Val's frames
# relative cost of one image, for the ETA: a DINO image is two views through student and teacher;
# a linear probe's backbone runs without gradients
COST = {"pretrain": 2.0, "finetune": 1.0, "linear": 0.4}
def load_experiment(path: str | Path) -> dict[str, Any]:
    """An experiment YAML (see label_efficiency_cpu.yaml), checked enough to fail before hours of work."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such experiment config")
    spec = yaml.safe_load(path.read_text()) or {}
    for key in ("data", "fractions", "seeds", "arms", "pretrain", "finetune"):
        if key not in spec:
            raise ConfigError(f"{path}: missing key {key!r}")
    unknown = [a for a in spec["arms"] if a not in ARMS]
    if unknown:
        raise ConfigError(f"{path}: arms {unknown}: expected some of {', '.join(ARMS)}")
    for f in spec["fractions"]:
        if not 0 < float(f) <= 1:
            raise ConfigError(f"{path}: fraction {f}: expected a value in (0, 1]")
    if len(spec["seeds"]) < 1:
        raise ConfigError(f"{path}: seeds: expected at least one")
    for f, seeds in (spec.get("seeds_by_fraction") or {}).items():
        if float(f) not in [float(x) for x in spec["fractions"]] or not seeds:
            raise ConfigError(f"{path}: seeds_by_fraction {f}: {seeds}: expected one of the fractions and a list of seeds")
    spec["_path"] = str(path)
    return spec


def seeds_for(spec: dict[str, Any], fraction: float) -> list[int]:
    """The seeds of one label fraction: `seeds`, or its entry in `seeds_by_fraction` (more seeds
    where runs are cheap and noisy, i.e. at small fractions)."""
    by_fraction = {float(k): v for k, v in (spec.get("seeds_by_fraction") or {}).items()}
    return [int(s) for s in by_fraction.get(float(fraction), spec["seeds"])]


def repo_relative(path: str | None) -> str | None:
    """A path inside this checkout as written from its root (results.json is committed)."""
    if path is None:
        return None
    root = Path(__file__).resolve().parents[2]
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)


def run_name(arm: str, fraction: float, seed: int) -> str:
    return f"runs/{arm}-f{fraction:g}-s{seed}"


def run_cost(cfg: FinetuneConfig, pool: int) -> float:
    return COST["linear" if cfg.linear_probe else "finetune"] * cfg.epochs * cfg.fraction * pool


def git_commit() -> str:
    """The commit of the code that ran ("+dirty" with uncommitted changes to tracked files)."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return f"sewer_hf {__version__} (not a git checkout)"


def make_data(spec: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Pool + Val (one seed) and the test set (another seed), rendered and prepared to the training size."""
    d = spec["data"]
    total = d["pool"] + d["val"] + d["test"]
    # a rendering process costs ~2 s to start: worth it from a few hundred frames on
    common = dict(size=d.get("frame_size", "176x144"), defect_fraction=d.get("defect_fraction", 0.6),
                  progress=True, overwrite=True, workers=max(1, min(available_cores(), total // 400)))
    info = {}
    for name, n_train, n_val, seed in (("pool", d["pool"], d["val"], d.get("seed", 0)),
                                       ("test", 0, d["test"], d.get("seed", 0) + TEST_SEED_OFFSET)):
        raw = folder / name / "raw"
        info[name] = generate_dataset(raw, n_train, n_val, seed=seed, **common)
    # training reads shards at its own size; the test set is read as a user's footage frames are
    prepare_shards(folder / "pool" / "raw", folder / "pool" / "prepared", size=d["prepared_size"])
    return {"pool": str(folder / "pool" / "prepared"), "test": str(folder / "test" / "raw"),
            "test_annotations": str(folder / "test" / "raw" / "SewerML_Val.csv"), "info": info}


def pretrain_config(spec: dict[str, Any], data: str, out: Path) -> PretrainConfig:
    over = {k: v for k, v in spec["pretrain"].items() if k != "base"}
    over.update(data=data, output_dir=str(out / "pretrain"), resume_from_checkpoint="latest", report_to="none")
    return load_config(PretrainConfig, shipped_config(spec["pretrain"].get("base", "smoke_dino.yaml")), over)


def arm_config(spec: dict[str, Any], arm: str, fraction: float, seed: int, data: str, backbone: str | None,
               out_dir: Path) -> FinetuneConfig:
    _, uses_dino, linear = ARMS[arm]
    ft = spec["finetune"]
    over = {k: v for k, v in ft.items() if k not in ("base", "by_fraction", "linear")}
    by_fraction = {float(k): v for k, v in (ft.get("by_fraction") or {}).items()}
    over.update(by_fraction.get(float(fraction), {}))
    if linear:
        over.update(ft.get("linear") or {})
    over.update(data=data, output_dir=str(out_dir), fraction=float(fraction), seed=int(seed),
                backbone=backbone if uses_dino else None, linear_probe=linear,
                resume_from_checkpoint="latest", report_to="none")
    return load_config(FinetuneConfig, shipped_config(ft.get("base", "smoke_finetune.yaml")), over)


def score_on_test(classifier: Path, test_data: str, annotations: str, folder: Path) -> dict[str, Any]:
    """The user's own commands on the test set: `sewer-hf predict`, `sewer-hf evaluate` at the
    classifier's shipped thresholds and at the benchmark's 0.5."""
    def command(*argv: str) -> None:
        if cli(list(argv)) != 0:
            raise RuntimeError(f"`sewer-hf {' '.join(argv)}` failed (its error is printed above)")

    scores = folder / "test_scores.csv"
    command("predict", "--model", str(classifier), "--data", test_data, "--split", "Val", "--out", str(scores))
    result = {}
    for label, threshold in (("shipped", str(classifier / "config.json")), ("at_0.5", "0.5")):
        report = folder / f"test_metrics_{label}.json"
        command("evaluate", "--annotations", annotations, "--scores", str(scores), "--threshold", threshold,
                "--json", str(report))
        m = json.loads(report.read_text())
        result[label] = {k: float(m[k]) for k in METRICS}
    return result


def subset_digest(run_dir: Path) -> tuple[int, str]:
    """(number of labelled frames trained on, SHA-256 of their sorted file names)."""
    rows = json.loads((run_dir / "train_rows.json").read_text())
    names = sorted(rows["trained_on"])
    return len(names), hashlib.sha256("\n".join(names).encode()).hexdigest()


def run_experiment(spec: dict[str, Any], out: str | Path, budget: str = "custom", side_by_side: bool = True) -> dict[str, Any]:
    """The experiment into ``out``; ``side_by_side=False`` runs the runs after pretraining one
    after the other with every core, as on a shared machine (``--one-at-a-time``)."""
    out = Path(out)
    state = process_state()
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    commit = git_commit()
    d = spec["data"]
    fractions, arms = [float(f) for f in spec["fractions"]], list(spec["arms"])

    # the ETA's weights: images each stage still to run processes, times its relative cost per image
    plan = [(a, f, s) for f in fractions for s in seeds_for(spec, f) for a in arms]
    def pending(name: str) -> bool:
        return not (out / name / "stage.json").is_file()

    total = COST["pretrain"] * pretrain_config(spec, "<data>", out).epochs * d["pool"] if pending("pretrain") else 0.0
    for arm, fraction, seed in plan:
        if pending(run_name(arm, fraction, seed)):
            total += run_cost(arm_config(spec, arm, fraction, seed, "<data>", "<backbone>", out), d["pool"])
    stages = Stages(out, "label-efficiency", total)

    def data_stage():
        result = make_data(spec, out / "data") if state.is_main_process else {}
        state.wait_for_everyone()
        return result

    data_hash = hashlib.sha256(json.dumps(spec["data"], sort_keys=True).encode()).hexdigest()[:12]
    data = stages.run("data", data_stage, 0.0, data_hash)
    _, test_targets = read_annotation_targets(data["test_annotations"])
    baseline = constant_baseline(test_targets)

    with runs_share_the_launch():  # one process group for every run of this launch
        results = train_and_report(spec, out, budget, state, commit, stages, data, baseline, plan, side_by_side)
    state.destroy_process_group()
    return results


def train_and_score(cfg: FinetuneConfig, data: dict[str, Any], commit: str) -> dict[str, Any]:
    """One arm's run: fine-tune (or probe), then score the shipped classifier on the test set."""
    state = process_state()
    began = time.perf_counter()
    trained = finetune(cfg)
    train_seconds = time.perf_counter() - began
    test = {}
    if state.is_main_process:
        folder = Path(cfg.output_dir)
        test = score_on_test(folder / "classifier", data["test"], data["test_annotations"], folder)
    state.wait_for_everyone()
    return {"train_seconds": round(train_seconds, 1), "test": test, "best_epoch": trained.get("best_epoch"),
            "commit": commit}


def train_and_report(spec, out: Path, budget: str, state, commit: str, stages: Stages, data: dict, baseline: dict,
                     plan: list, side_by_side: bool = True) -> dict[str, Any]:
    """Pretraining, then every (arm, fraction, seed) run scored on the test set; results.json and plots."""
    d = spec["data"]
    pre_cfg = pretrain_config(spec, data["pool"], out)
    pre = stages.run("pretrain", lambda: pretrain(pre_cfg), COST["pretrain"] * pre_cfg.epochs * d["pool"],
                     config_hash(pre_cfg))

    names = {(arm, fraction, seed): run_name(arm, fraction, seed) for arm, fraction, seed in plan}
    configs = {name: arm_config(spec, *run, data["pool"], pre["backbone"], out / name) for run, name in names.items()}
    costs = {name: run_cost(cfg, d["pool"]) for name, cfg in configs.items()}
    # on a CPU, side by side (a process per core, the next run where one ends), the longest first
    jobs = {name: (functools.partial(train_and_score, configs[name], data, commit), config_hash(configs[name]))
            for name in sorted(configs, key=lambda name: -costs[name])}
    finished = stages.run_side_by_side(
        jobs, progress=lambda name: training_progress(out / name, configs[name].epochs), enabled=side_by_side,
        costs=costs)
    runs = []
    for (arm, fraction, seed), name in names.items():
        done = finished[name]
        n_labelled, digest = subset_digest(out / name)
        runs.append({"arm": arm, "label": ARMS[arm][0], "fraction": fraction, "seed": seed,
                     "labelled_frames": n_labelled, "subset_sha256": digest,
                     "test_shipped": done["test"]["shipped"], "test_at_0.5": done["test"]["at_0.5"],
                     "learned": learned(done["test"]["shipped"], baseline),
                     "seconds": done["seconds"], "config_hash": done["config_hash"],
                     "commit": done.get("commit", commit), "output_dir": name})

    results = {
        "experiment": "label_efficiency", "budget": budget, "config_file": repo_relative(spec.get("_path")),
        "config": {k: v for k, v in spec.items() if not k.startswith("_")}, "commit": commit,
        "machine": {**machine_record(), "processes": state.num_processes, "device": str(state.device)},
        "data": {"pool": d["pool"], "val": d["val"], "test": d["test"], "image_size": pre_cfg.image_size,
                 "test_constant_baseline": baseline,
                 "note": "synthetic frames; pool labels never read by pretraining (kNN monitoring only)"},
        "pretrain": {"seconds": pre["seconds"], "config_hash": pre["config_hash"], "knn": pre.get("knn"),
                     "images_seen": pre.get("images_seen"), "curve": pretraining_curve(out / "pretrain")},
        "runs": runs,
        "summary": summarise(runs),
        "learned_bar": f"at its shipped thresholds, {LEARNED_BAR} (on the test set)",
        "stage_seconds": {"data": data.get("seconds"), "pretrain": pre["seconds"],
                          "runs": round(sum(r["seconds"] for r in runs), 1)},
        "side_by_side": stages.side_by_side,  # runs at once on a CPU: the sum above counts overlapping time
    }
    if state.is_main_process:
        write_json_atomically(results, out / "results.json", indent=2)
        plot_label_efficiency(results, out / "label_efficiency.png")
        plot_pretraining_curve(results, out / "pretraining_curve.png")
        print(format_table(results))
    state.wait_for_everyone()
    return results


def pretraining_curve(run_dir: Path) -> list[dict[str, float]]:
    """Per epoch: mean DINO loss, teacher entropy, RankMe and kNN mAP / F2_CIW (where measured)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        e = by_epoch.setdefault(int(r.get("epoch", 0)), {"losses": []})
        if "loss" in r:
            e["losses"].append(r["loss"])
        for key in ("teacher_entropy", "rankme", "knn_mAP", "knn_F2_CIW"):
            if key in r:
                e[key] = r[key]
    curve = []
    for epoch in sorted(by_epoch):
        e = by_epoch[epoch]
        row = {"epoch": epoch + 1, "loss": float(np.mean(e["losses"])) if e["losses"] else None}
        row.update({k: v for k, v in e.items() if k != "losses"})
        curve.append(row)
    return curve


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (arm, fraction): mean, std and range over seeds of each metric at the shipped thresholds,
    and for the DINO arms the gap to scratch with whether it exceeds the seed spread (the ranges
    over seeds do not overlap)."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["arm"], r["fraction"]), []).append(r)
    rows = []
    for (arm, fraction), members in groups.items():
        row: dict[str, Any] = {"arm": arm, "fraction": fraction, "seeds": len(members),
                               "labelled_frames": members[0]["labelled_frames"],
                               "seeds_that_learned": sum(all(x["learned"].values()) for x in members)}
        for m in METRICS:
            v = np.array([x["test_shipped"][m] for x in members])
            row[m] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                      "min": float(v.min()), "max": float(v.max())}
        rows.append(row)
    for row in rows:
        scratch = next((r for r in rows if r["arm"] == "scratch" and r["fraction"] == row["fraction"]), None)
        if row["arm"] == "scratch" or scratch is None:
            continue
        # the same seed drew the same labelled frames for both arms: compare seed by seed too
        by_seed = {x["seed"]: x for x in groups[("scratch", row["fraction"])]}
        pairs = [(x, by_seed[x["seed"]]) for x in groups[(row["arm"], row["fraction"])] if x["seed"] in by_seed]
        row["vs_scratch"] = {}
        for m in METRICS:
            gaps = np.array([a["test_shipped"][m] - b["test_shipped"][m] for a, b in pairs])
            row["vs_scratch"][m] = {
                "gap": row[m]["mean"] - scratch[m]["mean"],
                "beyond_seed_spread": row[m]["min"] > scratch[m]["max"],  # the ranges over seeds do not overlap
                "paired_gaps": [float(g) for g in gaps],
                "paired_gap_std": float(gaps.std(ddof=1)) if len(gaps) > 1 else 0.0,
                "seeds_better": int((gaps > 0).sum())}
    return rows


def format_table(results: dict[str, Any]) -> str:
    base = results["data"]["test_constant_baseline"]
    lines = ["| arm | labels | F2_CIW | F1_Normal | mAP | vs scratch (F2_CIW / mAP) | seeds that learned |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in sorted(results["summary"], key=lambda r: (r["fraction"], list(ARMS).index(r["arm"]))):
        cells = [f"{100 * row[m]['mean']:.2f} ± {100 * row[m]['std']:.2f}" for m in METRICS]
        vs = row.get("vs_scratch")
        gap = "" if vs is None else " / ".join(
            f"{100 * vs[m]['gap']:+.2f}{' (beyond seed spread)' if vs[m]['beyond_seed_spread'] else ''}"
            for m in ("F2_CIW", "mAP")) + \
            f"; better in {vs['mAP']['seeds_better']} of {len(vs['mAP']['paired_gaps'])} seeds (mAP)"
        lines.append(f"| {ARMS[row['arm']][0]} | {100 * row['fraction']:g} % ({row['labelled_frames']} frames) | "
                     + " | ".join(cells) + f" | {gap} | {row['seeds_that_learned']} of {row['seeds']} |")
    lines.append(f"| constant predictor | - | {100 * base['F2_CIW']:.2f} | {100 * base['F1_Normal']:.2f} | "
                 f"{100 * base['mAP']:.2f} | | |")
    lines.append(f"\nTest set of {results['data']['test']} synthetic frames, at each classifier's shipped thresholds "
                 f"(fitted on Val), mean ± std over the row's seeds. learned = {results['learned_bar']}.")
    return "\n".join(lines)


def plot_label_efficiency(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    base = results["data"]["test_constant_baseline"]
    fractions = sorted({r["fraction"] for r in results["runs"]})
    for ax, metric in zip(axes, METRICS):
        for i, arm in enumerate(a for a in ARMS if any(r["arm"] == a for r in results["runs"])):
            rows = sorted((r for r in results["summary"] if r["arm"] == arm), key=lambda r: r["fraction"])
            x = [r["fraction"] for r in rows]
            mean = [100 * r[metric]["mean"] for r in rows]
            ax.plot(x, mean, marker="o", color=f"C{i}", label=ARMS[arm][0])
            ax.fill_between(x, [100 * r[metric]["min"] for r in rows], [100 * r[metric]["max"] for r in rows],
                            color=f"C{i}", alpha=0.15)
            seeds = [r for r in results["runs"] if r["arm"] == arm]
            ax.scatter([r["fraction"] for r in seeds], [100 * r["test_shipped"][metric] for r in seeds],
                       color=f"C{i}", s=10, alpha=0.6)
        ax.axhline(100 * base[metric], color="grey", linestyle="--", label="constant predictor")
        ax.set_xscale("log")
        ax.set_xticks(fractions, [f"{100 * f:g} %" for f in fractions])
        ax.set_xlabel("labelled share of the pool")
        ax.set_title(f"{metric} (test, shipped thresholds)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Label efficiency on synthetic frames ({results['data']['pool']}-frame pool, "
                 f"{results['data']['image_size']} px; band = range over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pretraining_curve(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = results["pretrain"]["curve"]
    if not curve:
        return
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    knn = results["pretrain"].get("knn") or {}
    for ax, key, title in zip(axes, ("loss", "teacher_entropy", "rankme", "knn_mAP"),
                              ("DINO loss", "teacher entropy", "RankMe", "kNN mAP (Val)")):
        pts = [(r["epoch"], r[key]) for r in curve if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="." if key == "knn_mAP" else None)
        if key == "knn_mAP" and "random_init" in knn:
            ax.axhline(knn["random_init"]["mAP"], color="grey", linestyle="--", label="random init")
            ax.legend(fontsize=8)
        ax.set_title(title)
        ax.set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
