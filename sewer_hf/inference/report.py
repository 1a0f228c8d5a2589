"""The report of a footage scan (`sewer_hf.inference.video.ScanResult`), written to one folder:

    timeline.csv   time_s, the 17 smoothed scores, defect (1 when any class is at/over threshold)
    events.json    the scan settings, decode counts and, per class, the merged event segments
    timeline.png   one lane per class: smoothed score over time, threshold dashed, events shaded
    report.html    self-contained (plot and thumbnails embedded as base64): summary, events
                   table with full class names, thumbnails of flagged frames
"""
from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path

import numpy as np

from sewer_hf.data import labels as L

SCORE_DECIMALS = 4


def write_timeline_csv(result, path: Path) -> Path:
    flags = result.flags.any(axis=1)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["time_s", *L.CLASSES, "defect"])
        for t, row, flag in zip(result.times, result.smoothed, flags):
            writer.writerow([f"{t:.3f}", *(f"{s:.{SCORE_DECIMALS}f}" for s in row), int(flag)])
    return path


def events_document(result) -> dict:
    return {
        "source": result.source,
        "model": result.model,
        "duration_s": round(result.duration_s, 3),  # as declared by the container (else the scanned span)
        "scanned_s": round(result.scanned_s, 3),  # decoded: short of duration_s when the file is truncated
        "coverage": None if result.coverage is None else round(result.coverage, 4),
        "coverage_warning": result.coverage_warning,
        "sample_fps": result.sample_fps,
        "smoothing": {"method": "centred moving average", "window_samples": result.smooth},
        "merge_gap_s": result.merge_gap_s,
        "frames_read": result.stats.read,  # every frame in the file (decoded or skipped as needed by no sample)
        "frames_decoded": result.stats.decoded,
        "frames_sampled": result.stats.sampled,
        "corrupt_frames": result.stats.corrupt,
        "thresholds": {c: round(float(t), 4) for c, t in zip(L.CLASSES, result.thresholds)},
        "events": result.events,
    }


def write_events_json(result, path: Path) -> Path:
    path.write_text(json.dumps(events_document(result), indent=2) + "\n")
    return path


def plot_timeline(result, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    n = L.NUM_CLASSES
    fig, axes = plt.subplots(n, 1, figsize=(11, 0.42 * n + 1.0), sharex=True, squeeze=False)
    end = max(result.duration_s, float(result.times[-1]) if len(result.times) else 0.0) or 1.0
    for k, (ax, code) in enumerate(zip(axes[:, 0], L.CLASSES)):
        for ev in result.events[code]:
            ax.axvspan(ev["start"], ev["end"], color="tab:red", alpha=0.25, lw=0)
        ax.plot(result.times, result.smoothed[:, k], color="tab:blue", lw=1)
        ax.axhline(result.thresholds[k], color="tab:red", ls="--", lw=0.8)
        ax.set_ylim(0, 1)
        ax.set_xlim(0, end)
        ax.set_yticks([])
        ax.set_ylabel(code, rotation=0, ha="right", va="center", fontsize=8)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    if result.coverage_warning:  # grey out what could not be decoded
        for ax in axes[:, 0]:
            ax.axvspan(result.scanned_s, end, color="0.85", lw=0)
        axes[0, 0].text(result.scanned_s, 1.0, " not decoded", fontsize=7, va="bottom")
    axes[-1, 0].set_xlabel("time (s)")
    fig.suptitle("smoothed score per class (dashed: threshold, shaded: events)", fontsize=9)
    fig.tight_layout(h_pad=0.1)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def render_html(result, png: bytes) -> str:
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(ev['class'])}</td><td>{esc(L.CLASS_NAMES[ev['class']])}</td><td>{ev['start']:.1f}</td>"
        f"<td>{ev['end']:.1f}</td><td>{ev['peak_score']:.3f}</td><td>{ev['peak_time']:.1f}</td></tr>"
        for ev in result.flat_events())
    thumbs = []
    for i, jpeg in sorted(result.thumbnails.items()):
        codes = [c for c, f in zip(L.CLASSES, result.flags[i]) if f]
        caption = f"{result.times[i]:.1f} s: " + (", ".join(L.CLASS_NAMES[c] for c in codes) or "normal")
        thumbs.append(f'<figure><img src="data:image/jpeg;base64,{_b64(jpeg)}" alt="{esc(caption)}">'
                      f"<figcaption>{esc(caption)}</figcaption></figure>")
    corrupt = (f"<p class=warn>{result.stats.corrupt} damaged frame(s) could not be decoded and were skipped.</p>"
               if result.stats.corrupt else "")
    if result.coverage_warning:
        corrupt += f"<p class=warn>Warning: {esc(result.coverage_warning)}.</p>"
    table = ("<table><tr><th>code</th><th>defect</th><th>start (s)</th><th>end (s)</th><th>peak score</th>"
             f"<th>peak at (s)</th></tr>{rows}</table>" if rows else "<p>No defect events: normal pipe throughout.</p>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Sewer inspection report: {esc(Path(result.source).name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}} figure{{display:inline-block;margin:4px;font-size:11px;
max-width:180px}} .warn{{color:#a40}} img.plot{{max-width:100%}}</style></head><body>
<h1>Sewer inspection report</h1>
<p>Footage <code>{esc(result.source)}</code>, {result.duration_s:.1f} s ({result.scanned_s:.1f} s scanned); model <code>{esc(result.model)}</code>.
{result.stats.sampled} frames scored ({result.sample_fps:g} per second), scores smoothed by a centred moving average
over {result.smooth} samples; events use the model's per-class thresholds, gaps up to {result.merge_gap_s:g} s merged.</p>
{corrupt}
<h2>Events</h2>{table}
<h2>Timeline</h2><img class=plot src="data:image/png;base64,{_b64(png)}" alt="score timeline">
<h2>Flagged frames</h2>{''.join(thumbs) or '<p>none</p>'}
</body></html>
"""


def write_report(result, out_dir) -> dict[str, Path]:
    """Write the four report files into `out_dir` (created); returns their paths by kind."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": write_timeline_csv(result, out / "timeline.csv"),
             "events": write_events_json(result, out / "events.json"),
             "plot": plot_timeline(result, out / "timeline.png")}
    paths["html"] = out / "report.html"
    paths["html"].write_text(render_html(result, paths["plot"].read_bytes()), encoding="utf-8")
    return paths


def match_events(predicted: list[dict], truth: list[dict]) -> dict:
    """Event-level precision/recall: a predicted segment is correct when it overlaps a true
    segment of the same class; a true segment is found when some predicted one overlaps it."""
    def overlaps(a, b):
        return a["class"] == b["class"] and a["start"] < b["end"] and b["start"] < a["end"]

    tp_pred = sum(any(overlaps(p, t) for t in truth) for p in predicted)
    found = sum(any(overlaps(p, t) for p in predicted) for t in truth)
    precision = tp_pred / len(predicted) if predicted else 0.0
    recall = found / len(truth) if truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "predicted": len(predicted), "true": len(truth)}


def random_placement_baseline(predicted: list[dict], truth: list[dict], duration: float, draws: int = 200,
                              seed: int = 0) -> dict:
    """Chance level of `match_events`: the same predicted segments (class, length) placed at
    uniformly random times, averaged over `draws`."""
    rng = np.random.default_rng(seed)
    totals = {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    for _ in range(draws):
        moved = []
        for p in predicted:
            length = min(p["end"] - p["start"], duration)
            start = float(rng.uniform(0, max(duration - length, 0.0)))
            moved.append({"class": p["class"], "start": start, "end": start + length})
        m = match_events(moved, truth)
        for k in totals:
            totals[k] += m[k] / draws
    return totals
