"""Stages run once: what the quickstart and the label-efficiency experiment chain.

``<out>/<name>/stage.json`` marks a finished stage (written atomically by the main process),
so a re-run reuses it and an interrupted run resumes at the stage it was in. Progress is
printed per stage, with an ETA weighted by each stage's cost when the total is known.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import json
import math
import multiprocessing
import os
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

from sewer_hf.atomic import write_json_atomically
from sewer_hf.errors import ConfigError
from sewer_hf.feed.machine import available_cores, available_cpus

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
        self.side_by_side: list[dict[str, Any]] = []
        self.state = process_state()
        self.start = time.perf_counter()

    def run(self, name: str, fn: Callable[[], Optional[dict[str, Any]]], cost: float = 0.0,
            config_hash: str | None = None) -> dict[str, Any]:
        """``fn()``'s result (with ``seconds`` and ``config_hash``) or, when the stage finished
        before, its record; a record made with another ``config_hash`` is a ConfigError."""
        done = self._finished(name, config_hash)
        if done is not None:
            return done
        self.state.print(f"[{self.label}] {name} ...", flush=True)
        began = time.perf_counter()
        result = fn() or {}
        return self._record(name, result, time.perf_counter() - began, cost, config_hash)

    def run_side_by_side(self, jobs: dict[str, tuple[Callable[[], dict[str, Any]], Optional[str]]],
                         progress: Optional[Callable[[str], tuple[int, int, str]]] = None,
                         enabled: bool = True, costs: Optional[dict[str, float]] = None) -> dict[str, dict[str, Any]]:
        """``run`` for each of ``jobs`` (name -> (fn, config hash)), the unfinished ones at the same
        time, as many as this machine has cores, each in a process of its own on its own share of
        them; the rest wait, in ``jobs``' order, for a share to come free (put the longest first).
        ``fn`` must pickle (a module-level function, or a ``functools.partial`` of one). For
        independent CPU runs whose step does not use every core well: on 2 cores, two 1-thread
        ViT-T/16 fine-tuning steps at 64 px made 1.26x the images/s of one 2-thread step, and two
        4-epoch runs ended 1.24x sooner side by side (``benchmarks/side_by_side.py``).
        Each job writes its output to ``<out>/<name>.log``; here a bar shows ``progress(name)`` =
        (done, total, note) of each; ``costs`` (name -> share of the work) weigh the ETA, as
        ``run``'s ``cost``. On a GPU (the runs would share the device), on one core, several
        processes (``accelerate launch``), one job or ``enabled`` False (e.g. jobs too short to pay
        for a process's imports, ~10 s): one stage after the other, as ``run``.
        When a job fails, no waiting one starts; the running ones finish (and are recorded) before
        its error is raised."""
        costs = costs or {}
        results = {name: done for name, (_, config_hash) in jobs.items()
                   if (done := self._finished(name, config_hash)) is not None}
        pending = [name for name in jobs if name not in results]
        cores = sorted(available_cpus())[:available_cores()]  # a container's CPU limit counts too
        if (not enabled or len(pending) < 2 or len(cores) < 2 or self.state.num_processes > 1
                or torch.cuda.is_available()):
            for name in pending:
                results[name] = self.run(name, jobs[name][0], costs.get(name, 0.0), jobs[name][1])
            return {name: results[name] for name in jobs}
        slots = min(len(pending), len(cores))
        share = len(cores) // slots
        free = [cores[i * share:(i + 1) * share] for i in range(slots)]
        for name in pending:  # the stages keep the jobs' order in ``seconds``, whichever ends first
            self.seconds[name] = 0.0
        logs = {name: self.out / f"{name}.log" for name in pending}  # beside the run: its output_dir stays its own
        self.state.print(f"[{self.label}] {' + '.join(pending)} ... side by side, {slots} at a time on "
                         f"{share} core(s) each; their output: {self.out}/<name>.log", flush=True)
        began = time.perf_counter()
        waiting, running = list(pending), {}
        accounted = 0.0  # the ETA's time is wall time: side by side, the jobs' own seconds overlap
        errors: dict[str, BaseException] = {}
        with concurrent.futures.ProcessPoolExecutor(slots, mp_context=multiprocessing.get_context("spawn")) as pool:
            bar = _SideBySideBar(pending, progress, enabled=self.state.is_main_process)
            while waiting or running:
                while waiting and free and not errors:
                    name, cpus = waiting.pop(0), free.pop(0)
                    running[pool.submit(_run_pinned, jobs[name][0], cpus, str(logs[name]), os.getpid())] = (name, cpus)
                    with bar.cleared():
                        self.state.print(f"[{self.label}] {name} ... on CPU {','.join(map(str, cpus))}; "
                                         f"its output: {logs[name]}", flush=True)
                if not running:
                    break  # a job failed: the waiting ones stay unstarted
                done, _ = concurrent.futures.wait(running, timeout=2.0)
                bar.refresh([name for name, _ in running.values()], len(waiting))
                for future in done:
                    name, cpus = running.pop(future)
                    free.append(cpus)
                    with bar.cleared():
                        try:
                            result, seconds = future.result()
                        except BaseException as exc:  # noqa: BLE001 - raised once the running ones finish
                            errors[name] = exc
                            self.state.print(f"[{self.label}] {name}: failed ({type(exc).__name__}: {exc}); "
                                             f"its output: {logs[name]}", flush=True)
                            continue
                        wall = time.perf_counter() - began
                        results[name] = self._record(name, result, seconds, costs.get(name, 0.0), jobs[name][1],
                                                     spent=wall - accounted)
                        accounted = wall
            bar.close()
        if errors:
            name, exc = next(iter(errors.items()))
            raise RuntimeError(f"stage {name} failed; its output: {logs[name]}") from exc
        self.side_by_side.append({"stages": pending, "at_once": slots, "seconds": round(time.perf_counter() - began, 1)})
        return {name: results[name] for name in jobs}

    def _finished(self, name: str, config_hash: str | None) -> Optional[dict[str, Any]]:
        """The record of stage ``name`` when it finished before (None when it did not)."""
        marker = self.out / name / "stage.json"
        if not marker.is_file():
            return None
        done = json.loads(marker.read_text())
        if config_hash and done.get("config_hash") not in (None, config_hash):
            raise ConfigError(
                f"{marker}: this finished run was made with config {done['config_hash']}, the experiment now "
                f"asks for {config_hash}; remove {marker.parent} to redo it, or use another --out")
        self.state.print(f"[{self.label}] {name}: reusing the finished run ({marker})")
        self.seconds[name] = done.get("seconds", 0.0)
        self.reused.append(name)
        return done

    def _record(self, name: str, result: dict[str, Any], seconds: float, cost: float,
                config_hash: str | None, spent: Optional[float] = None) -> dict[str, Any]:
        """Write stage ``name``'s ``stage.json`` (main process) and report it done; ``spent``: the
        time it adds to the ETA's (its ``seconds`` when it ran alone)."""
        marker = self.out / name / "stage.json"
        result["seconds"] = round(seconds, 1)
        if config_hash:
            result["config_hash"] = config_hash
        if self.state.is_main_process:
            marker.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomically(result, marker, indent=2)
        self.state.wait_for_everyone()
        result = json.loads(marker.read_text())  # every process: what the main process recorded
        self.seconds[name] = result["seconds"]
        self.done_cost += cost
        self.spent += result["seconds"] if spent is None else spent
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


def _run_pinned(fn: Callable[[], dict[str, Any]], cpus: list[int], log: str, parent: int) -> tuple[dict[str, Any], float]:
    """In a ``run_side_by_side`` process (one may run several jobs in turn): ``fn()`` on ``cpus``
    only (its torch threads, and what ``available_cores`` tells the run's plan), all output to
    ``log``; (its result, its seconds)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)
    os.environ["OMP_NUM_THREADS"] = str(len(cpus))  # the runs' thread plan keeps a set count
    torch.set_num_threads(len(cpus))
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", buffering=1) as fh:  # the C level too (warnings, tqdm, prints)
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
    _watch_parent(parent)
    began = time.perf_counter()
    result = fn() or {}
    return result, time.perf_counter() - began


@functools.lru_cache(maxsize=None)  # one watchdog per process
def _watch_parent(parent: int) -> None:
    """Exit this process when ``parent`` dies (it was killed): stop instead of training unseen."""

    def orphaned() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=orphaned, daemon=True).start()


class _SideBySideBar:
    """The main process's view of side-by-side stages: one bar over their ``progress`` units, the
    running ones' notes, how many wait."""

    def __init__(self, names: list[str], progress, enabled: bool) -> None:
        self.names, self.progress, self.bar = names, progress, None
        self.running: list[str] = []
        self.waiting = 0
        if progress is not None and enabled:
            from tqdm.auto import tqdm

            desc = " + ".join(names) if len(names) <= 2 else f"{len(names)} stages"
            self.bar = tqdm(total=0, desc=desc, unit="epoch", dynamic_ncols=True)

    def refresh(self, running: Optional[list[str]] = None, waiting: Optional[int] = None) -> None:
        self.running = self.running if running is None else running
        self.waiting = self.waiting if waiting is None else waiting
        if self.bar is None:
            return
        states = {name: self.progress(name) for name in self.names}
        self.bar.total = sum(total for _, total, _ in states.values())
        self.bar.n = sum(done for done, _, _ in states.values())
        notes = [f"{name} {states[name][2]}" for name in self.running] + ([f"{self.waiting} waiting"] if self.waiting else [])
        self.bar.set_postfix_str(", ".join(notes), refresh=False)
        self.bar.refresh()

    @contextlib.contextmanager
    def cleared(self):
        """The bar off the terminal while the caller prints."""
        if self.bar is not None:
            self.bar.clear()
        try:
            yield
        finally:
            self.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.refresh()
            self.bar.close()
            self.bar = None
