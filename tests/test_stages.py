"""`Stages.run_side_by_side`: independent stages at the same time, each in a process of its own on
its own share of the CPUs (the quickstart's two fine-tunings, the tables' runs), more stages
than cores waiting their turn. A stage that fails lets the running ones finish and be recorded
before its error is raised, and no waiting one starts; a re-run reuses what finished and redoes
only the rest."""
import functools
import json
import os
import time
from pathlib import Path

import pytest

from sewer_hf.errors import ConfigError
from sewer_hf.experiments.stages import Stages
from sewer_hf.feed.machine import available_cpus


def placement(tag: str, fail: bool = False, signal: str | None = None, wait_for: str | None = None) -> dict:
    """A stage's job: where and when it ran (it runs in the stage's own process). It writes the
    file ``signal`` just before it ends, or first waits for the file ``wait_for``."""
    import torch

    where = {"pid": os.getpid(), "cpus": sorted(available_cpus()), "threads": torch.get_num_threads(),
             "start": time.time()}
    print(f"{tag} ran at {json.dumps(where)}", flush=True)
    while wait_for and not Path(wait_for).exists() and time.time() < where["start"] + 60:
        time.sleep(0.05)
    if wait_for:
        time.sleep(1.0)  # its end reaches the parent after the other's failure
    if signal:
        Path(signal).touch()
    if fail:
        raise ValueError(f"{tag} broke")
    return {**where, "end": time.time()}


@pytest.mark.skipif(len(available_cpus()) < 2, reason="side by side needs 2 CPUs (this process may run on 1)")
def test_side_by_side_stages_run_apart_on_their_own_cpus_and_a_failure_keeps_the_other(tmp_path):
    cpus = sorted(available_cpus())
    share = 1  # below, always at least as many jobs as CPUs

    def check_apart(*runs):  # each in its own process, on its own CPUs, with one torch thread per CPU
        for where in runs:
            assert where["pid"] != os.getpid()
            assert len(where["cpus"]) == share and where["threads"] == share and set(where["cpus"]) <= set(cpus)
        assert runs[0]["pid"] != runs[1]["pid"] and not set(runs[0]["cpus"]) & set(runs[1]["cpus"])

    stages = Stages(tmp_path, "test")
    failed_flag = str(tmp_path / "b_failed")
    jobs = {"a": (functools.partial(placement, "a", wait_for=failed_flag), "hash-a"),
            "b": (functools.partial(placement, "b", fail=True, signal=failed_flag), "hash-b")}
    # on more than 2 CPUs, jobs that also run until b failed; then 2 that wait for a CPU
    jobs.update({f"filler{i}": (functools.partial(placement, f"filler{i}", wait_for=failed_flag), None)
                 for i in range(len(cpus) - 2)})
    jobs.update({f"later{i}": (functools.partial(placement, f"later{i}"), None) for i in range(2)})
    with pytest.raises(RuntimeError, match=r"stage b failed; its output: .*/b\.log") as failed:
        stages.run_side_by_side(jobs)
    assert isinstance(failed.value.__cause__, ValueError) and "b broke" in str(failed.value.__cause__)
    # a finished and was recorded although b failed; b left no record, only its output; the jobs
    # waiting for a core (more jobs than cores) did not start after the failure
    a = json.loads((tmp_path / "a" / "stage.json").read_text())
    assert not (tmp_path / "b" / "stage.json").exists()
    assert not any((tmp_path / f"later{i}.log").exists() for i in range(2))
    b = json.loads((tmp_path / "b.log").read_text().split("b ran at ", 1)[1].splitlines()[0])
    check_apart(a, b)
    assert a["config_hash"] == "hash-a" and a["seconds"] >= 0 and "a ran at" in (tmp_path / "a.log").read_text()

    # a re-run reuses a and redoes b, side by side with the others: more jobs than shares of the
    # cores, so the last waits for a share to come free; the records keep the jobs' order
    again = Stages(tmp_path, "test")
    jobs["b"] = (functools.partial(placement, "b"), "hash-b")
    results = again.run_side_by_side(jobs)
    pending = [name for name in jobs if name != "a"]
    assert again.reused == ["a"] and list(results) == list(again.seconds) == list(jobs)
    assert [group["stages"] for group in again.side_by_side] == [pending]
    assert results["a"]["pid"] == a["pid"] and all((tmp_path / name / "stage.json").is_file() for name in pending)
    first, last = [results[name] for name in pending[:len(cpus)]], results[pending[-1]]
    check_apart(*first[:2])
    assert len(last["cpus"]) == share and last["start"] >= min(run["end"] for run in first) - 0.01

    # a changed stage is refused, not silently reused
    jobs["a"] = (functools.partial(placement, "a"), "hash-a2")
    with pytest.raises(ConfigError, match="made with config hash-a"):
        Stages(tmp_path, "test").run_side_by_side(jobs)


def test_side_by_side_turned_off_runs_each_stage_here_in_order(tmp_path):
    stages = Stages(tmp_path, "test")
    jobs = {name: (functools.partial(placement, name), None) for name in ("first", "second")}
    results = stages.run_side_by_side(jobs, enabled=False)
    assert list(results) == list(stages.seconds) == ["first", "second"] and stages.side_by_side == []
    assert {results[name]["pid"] for name in results} == {os.getpid()}
