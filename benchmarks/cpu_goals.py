#!/usr/bin/env python
"""Every CPU goal of issues #14 and #17, measured in one run on this machine: measured vs goal.

The goals were set on a 2-core x86-64 CPU with AVX2 only; most sessions since ran on other
2-core machines (AVX-512, AMX), where every library picks faster kernels. On whichever machine
a session gets, this one command measures them all as a user would, each part in a process of
its own (its output kept in OUT/<part>.log), and prints one table with the machine next to it:

  tests        the suite as `make test` runs it, torch.compile's cache empty as on a fresh
               clone: seconds of tests (goal <= 360 on 2 cores)
  quickstart   `sewer-hf quickstart` into a fresh folder: wall time (goal <= 12 min) and whether
               both classifiers clear the learned bar at their shipped thresholds
  training     benchmarks/cpu_training.py: fine-tuning end to end >= 2x the former feed and
               >= 0.9 of the bare step; DINO pretraining >= 1.5x the former feed (each ratio
               the median of 3 interleaved rounds, their range in the note)
  inference    benchmarks/inference_cpu.py: files -> scores (default `auto`) >= 2x the stock
               pipeline (the median of 3 interleaved rounds); `scan` at 2 fps >= 40 sampled frames/s

    python benchmarks/cpu_goals.py                      # ~45 min on 2 cores, machine otherwise idle
    python benchmarks/cpu_goals.py --parts training,inference --out runs/cpu_goals
    benchmarks/avx2_only.sh .venv/bin/python benchmarks/cpu_goals.py   # AVX2 kernels on a bigger CPU
    python benchmarks/cpu_goals.py --quick              # tiny sizes (make bench): the code path, no verdicts

A part whose command fails is a missed goal (its log named) and the other parts still run.
Exit status 0 when every goal measured was met, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PARTS = ("tests", "quickstart", "training", "inference")


class PartFailed(Exception):
    """A part's command failed or printed no result: that part's goals count as missed."""


def run_part(name: str, command: list[str], out: Path, env: dict | None = None) -> tuple[str, float]:
    """Run ``command`` from the repository root with its output in OUT/<name>.log; return that
    output and the wall seconds (``PartFailed``, naming the log, when it exits non-zero)."""
    log = out / f"{name}.log"
    print(f"[{name}] {' '.join(command)}  (output: {log})", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run(command, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}).returncode
    seconds = time.perf_counter() - t0
    text = log.read_text(errors="replace")
    if rc != 0:
        raise PartFailed(f"exited with {rc} after {seconds:.0f} s; see {log}")
    return text, seconds


def found(pattern: str, text: str, name: str) -> str | tuple[str, ...]:
    """The last match of ``pattern`` in a part's output (its groups, as ``re.findall`` gives them)."""
    matches = re.findall(pattern, text)
    if not matches:
        raise PartFailed(f"no line matching {pattern!r} in its output ({name}.log)")
    return matches[-1]


def measure_tests(out: Path, quick: bool) -> list[tuple]:
    # `make test` itself (its pytest options live in the Makefile); --quick: one small file
    command = [sys.executable, "-m", "pytest", "-q", "tests/test_machine.py"] if quick else ["make", "-s", "test"]
    with tempfile.TemporaryDirectory() as cache:  # cold, as on a fresh clone
        text, _ = run_part("tests", command, out, {"TORCHINDUCTOR_CACHE_DIR": cache})
    summary = found(r"\n=*\s*(\d+ passed.*?) in ([\d.]+)s", text, "tests")
    return [("make test: seconds of tests (cold compile cache)", float(summary[1]), "<=", 360.0, summary[0].strip())]


def measure_quickstart(out: Path, quick: bool) -> list[tuple]:
    folder = out / "quickstart"  # fresh: checked before any part ran
    tiny = ["--train", "48", "--val", "48", "--pretrain-epochs", "1", "--finetune-epochs", "1"] if quick else []
    _, wall = run_part("quickstart", [sys.executable, "-m", "sewer_hf.cli", "quickstart", "--out", str(folder), *tiny], out)
    summary = json.loads((folder / "summary.json").read_text())
    rows = [("quickstart: wall seconds", wall, "<=", 720.0, "")]
    for name in ("ssl_finetune", "supervised"):
        learned = summary[name]["learned"]
        shipped = summary[name]["shipped"]
        note = (f"F2_CIW {100 * shipped['F2_CIW']:.2f}, F1_Normal {100 * shipped['F1_Normal']:.2f}, "
                f"mAP {100 * shipped['mAP']:.2f}; short on: {', '.join(k for k, ok in learned.items() if not ok) or '-'}")
        rows.append((f"quickstart: {name} clears the learned bar", float(all(learned.values())), ">=", 1.0, note))
    return rows


def measure_training(out: Path, quick: bool) -> list[tuple]:
    text, _ = run_part("training", [sys.executable, str(HERE / "cpu_training.py"), *(["--quick"] if quick else [])], out)
    values = {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", found(r"finetune_speedup=.*", text, "training"))}
    # each ratio is the median over interleaved rounds; the note gives the rounds' range

    def note(key: str) -> str:
        return f"median of {values['rounds']:.0f} rounds, range {values[key + '_min']:.2f}-{values[key + '_max']:.2f}"

    return [("fine-tuning end to end vs the former feed (x)", values["finetune_speedup"], ">=", 2.0, note("finetune_speedup")),
            ("fine-tuning end to end / bare step", values["finetune_fed"], ">=", 0.9, note("finetune_fed")),
            ("DINO end to end vs the former feed (x)", values["dino_speedup"], ">=", 1.5,
             f"{note('dino_speedup')}; ceiling (bare step / former feed) {values['dino_ceiling']:.2f}")]


def measure_inference(out: Path, quick: bool) -> list[tuple]:
    text, _ = run_part("inference", [sys.executable, str(HERE / "inference_cpu.py"), *(["--quick"] if quick else [])], out)
    speedup, rate = found(r"speedup_vs_pipeline=([\d.]+) img_per_s=([\d.]+)", text, "inference")
    scan = found(r"footage: scan at 2 fps, default \(([^)]*)\): ([\d.]+) sampled frames/s", text, "inference")
    rounds = found(r"headline, (\d+) interleaved rounds", text, "inference")
    return [("files -> scores, default, vs stock pipeline (x)", float(speedup), ">=", 2.0,
             f"{float(rate):.1f} img/s; median of {rounds} interleaved rounds"),
            ("scan at 2 fps, default: sampled frames/s", float(scan[1]), ">=", 40.0, scan[0])]


MEASURE = {"tests": measure_tests, "quickstart": measure_quickstart, "training": measure_training,
           "inference": measure_inference}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--out", default=None, help="folder for the logs (default: runs/cpu_goals/<date-time>)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the code, not the goals")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {', '.join(unknown)}; expected some of {', '.join(PARTS)}")
    sys.path.insert(0, str(ROOT))
    from sewer_hf.feed.machine import machine_record

    out = Path(args.out or ROOT / "runs" / "cpu_goals" / time.strftime("%Y%m%d-%H%M%S"))
    if "quickstart" in parts and (out / "quickstart").exists():
        parser.error(f"{out / 'quickstart'} exists: pass another --out (a quickstart there would reuse its finished stages)")
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_record()
    header = (f"machine: {machine['cpu_model']}, {machine['cores']} cores ({machine['cpu_features']})"
              f"{', AVX2 proxy (avx2_only.sh)' if os.environ.get('SEWER_HF_AVX2_ONLY') else ''}; "
              f"{time.strftime('%Y-%m-%d %H:%M')}, load average at start {os.getloadavg()[0]:.2f}")
    print(header, flush=True)
    rows = []
    for part in parts:  # a failed part is a missed goal, and the other parts still run
        try:
            rows += MEASURE[part](out, args.quick)
        except PartFailed as failure:
            print(f"[{part}] FAILED: {failure}", flush=True)
            rows.append((f"{part}: ran to the end", 0.0, ">=", 1.0, str(failure)))
    lines = [header, "", "| goal | measured | target | met | note |", "| --- | --- | --- | --- | --- |"]
    met_all = True
    for goal, value, op, target, note in rows:
        met = value >= target if op == ">=" else value <= target
        met_all &= met
        verdict = "-" if args.quick else ("yes" if met else "**no**")
        lines.append(f"| {goal} | {value:.2f} | {op} {target:g} | {verdict} | {note} |")
    if args.quick:
        lines.append("\n--quick: tiny sizes, so no verdicts (the code path only)")
    (out / "goals.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[1:]))
    print(f"(also in {out / 'goals.md'})")
    failed = any(goal.endswith(": ran to the end") for goal, *_ in rows)
    return 0 if (met_all or (args.quick and not failed)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
