"""Stages run once: what the quickstart and the label-efficiency experiment chain.

``<out>/<name>/stage.json`` marks a finished stage (written atomically by the main process),
so a re-run reuses it and an interrupted run resumes at the stage it was in. Progress is
printed per stage, with an ETA weighted by each stage's cost when the total is known.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

from sewer_hf.atomic import write_json_atomically
from sewer_hf.errors import ConfigError

RUN_KEYS_NOT_HASHED = ("output_dir", "resume_from_checkpoint", "report_to", "overwrite_output_dir", "data")


def process_state() -> PartialState:
    """This process's place under `accelerate launch`, built as the recipes' Accelerator builds it:
    a bare PartialState() ignores ACCELERATE_USE_CPU, so 2 CPU processes would each think they
    were alone, and the Accelerator made later would inherit that."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


class Stages:
    """``run(name, fn)`` calls ``fn`` once: a finished stage's ``stage.json`` is read back
    instead. ``seconds`` holds each stage's time (a reused one's from its record), ``reused``
    the names of the stages read back."""

    def __init__(self, out: Path, label: str, total_cost: float = 0.0) -> None:
        self.out, self.label, self.total = Path(out), label, total_cost
        self.done_cost, self.spent = 0.0, 0.0
        self.seconds: dict[str, float] = {}
        self.reused: list[str] = []
        self.state = process_state()
        self.start = time.perf_counter()

    def run(self, name: str, fn: Callable[[], Optional[dict[str, Any]]], cost: float = 0.0,
            config_hash: str | None = None) -> dict[str, Any]:
        """``fn()``'s result (with ``seconds`` and ``config_hash``) or, when the stage finished
        before, its record; a record made with another ``config_hash`` is a ConfigError."""
        marker = self.out / name / "stage.json"
        if marker.is_file():
            done = json.loads(marker.read_text())
            if config_hash and done.get("config_hash") not in (None, config_hash):
                raise ConfigError(
                    f"{marker}: this finished run was made with config {done['config_hash']}, the experiment now "
                    f"asks for {config_hash}; remove {marker.parent} to redo it, or use another --out")
            self.state.print(f"[{self.label}] {name}: reusing the finished run ({marker})")
            self.seconds[name] = done.get("seconds", 0.0)
            self.reused.append(name)
            return done
        self.state.print(f"[{self.label}] {name} ...", flush=True)
        began = time.perf_counter()
        result = fn() or {}
        result["seconds"] = round(time.perf_counter() - began, 1)
        if config_hash:
            result["config_hash"] = config_hash
        if self.state.is_main_process:
            marker.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomically(result, marker, indent=2)
        self.state.wait_for_everyone()
        result = json.loads(marker.read_text())  # every process: what the main process recorded
        self.seconds[name] = result["seconds"]
        self.done_cost += cost
        self.spent += result["seconds"]
        progress = ""
        if self.total:
            left = max(self.total - self.done_cost, 0.0)
            eta = self.spent / self.done_cost * left if self.done_cost else float("nan")
            progress = (f"; {100 * self.done_cost / self.total:.0f} % of the work, elapsed "
                        f"{minutes(time.perf_counter() - self.start)}, ETA {minutes(eta)}")
        self.state.print(f"[{self.label}] {name}: done in {minutes(result['seconds'])}{progress}", flush=True)
        return result


def config_hash(cfg) -> str:
    """A short hash of what determines a run's result (paths and logging excluded)."""
    d = {k: v for k, v in asdict(cfg).items() if k not in RUN_KEYS_NOT_HASHED}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def minutes(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
