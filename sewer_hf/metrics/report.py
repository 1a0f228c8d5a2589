"""Plain-text report of a :func:`sewer_hf.metrics.compute_metrics` result (numbers in percent)."""
from __future__ import annotations

from sewer_hf.data.labels import CLASS_NAMES, CLASSES

HEADLINE = (
    ("F2_CIW", "F2_CIW"), ("F1_Normal", "F1_Normal"), ("mAP", "mAP"),
    ("macro_F1", "macro F1"), ("micro_F1", "micro F1"), ("micro_precision", "micro P"),
    ("micro_recall", "micro R"), ("CP", "CP"), ("CR", "CR"), ("CF1", "CF1"),
    ("exact_match", "exact match"),
)


def _pct(value: float) -> str:
    return f"{100.0 * value:6.2f}"


def format_report(result: dict) -> str:
    """Headline metrics, then one row per class and the Normal row: P/R/F1/F2/AP in percent."""
    lines = [f"Sewer-ML metrics on {result['num_images']} images (percent)"]
    lines += [f"  {label:<12} {_pct(result[key])}" for key, label in HEADLINE]
    thresholds = set(result["threshold"].values())
    if len(thresholds) == 1:
        lines.append(f"  threshold    {thresholds.pop():g} (inclusive)")
    else:
        lines.append("  threshold    per class (inclusive), see table")
    lines.append("")
    lines.append(f"  {'class':<6} {'P':>6} {'R':>6} {'F1':>6} {'F2':>6} {'AP':>6} {'support':>8} {'thr':>5}  name")
    for code in CLASSES:
        m = result["per_class"][code]
        lines.append(
            f"  {code:<6} {_pct(m['precision'])} {_pct(m['recall'])} {_pct(m['F1'])} {_pct(m['F2'])} "
            f"{_pct(m['AP'])} {m['support']:>8} {result['threshold'][code]:>5.2f}  {CLASS_NAMES[code]}"
        )
    n = result["normal"]
    lines.append(
        f"  {'Normal':<6} {_pct(n['precision'])} {_pct(n['recall'])} {_pct(n['F1'])} {_pct(n['F2'])} "
        f"{'':>6} {n['support']:>8} {'':>5}  no class at or above its threshold"
    )
    return "\n".join(lines)
