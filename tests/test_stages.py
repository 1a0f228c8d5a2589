"""`Stages.run_side_by_side`: independent stages at the same time, each in a process of its own on
its own share of the CPUs (what the quickstart does with its two fine-tunings). A stage that
fails lets the other finish and be recorded before its error is raised; a re-run reuses what
finished and redoes only the rest."""
import functools
import json
import os

import pytest

from sewer_hf.errors import ConfigError
from sewer_hf.experiments.stages import Stages
from sewer_hf.feed.machine import available_cpus


def placement(tag: str, fail: bool = False) -> dict:
    """A stage's job: where it ran (it runs in the stage's own process)."""
    import torch

    where = {"pid": os.getpid(), "cpus": sorted(available_cpus()), "threads": torch.get_num_threads()}
    print(f"{tag} ran at {json.dumps(where)}", flush=True)
    if fail:
        raise ValueError(f"{tag} broke")
    return where


@pytest.mark.skipif(len(available_cpus()) < 2, reason="side by side needs 2 CPUs (this process may run on 1)")
def test_side_by_side_stages_run_apart_on_their_own_cpus_and_a_failure_keeps_the_other(tmp_path):
    cpus = sorted(available_cpus())
    share = len(cpus) // 2

    def check_apart(*runs):  # each in its own process, on its own CPUs, with one torch thread per CPU
        for where in runs:
            assert where["pid"] != os.getpid()
            assert len(where["cpus"]) == share and where["threads"] == share and set(where["cpus"]) <= set(cpus)
        assert runs[0]["pid"] != runs[1]["pid"] and not set(runs[0]["cpus"]) & set(runs[1]["cpus"])

    stages = Stages(tmp_path, "test")
    jobs = {"a": (functools.partial(placement, "a"), "hash-a"), "b": (functools.partial(placement, "b", fail=True), "hash-b")}
    with pytest.raises(RuntimeError, match=r"stage b failed; its output: .*/b\.log") as failed:
        stages.run_side_by_side(jobs)
    assert isinstance(failed.value.__cause__, ValueError) and "b broke" in str(failed.value.__cause__)
    # a finished and was recorded although b failed; b left no record, only its output
    a = json.loads((tmp_path / "a" / "stage.json").read_text())
    assert not (tmp_path / "b" / "stage.json").exists()
    b = json.loads((tmp_path / "b.log").read_text().split("b ran at ", 1)[1].splitlines()[0])
    check_apart(a, b)
    assert a["config_hash"] == "hash-a" and a["seconds"] >= 0 and "a ran at" in (tmp_path / "a.log").read_text()

    # a re-run reuses a and redoes b, side by side with a new c; the records keep the jobs' order
    again = Stages(tmp_path, "test")
    jobs["b"] = (functools.partial(placement, "b"), "hash-b")
    jobs["c"] = (functools.partial(placement, "c"), None)
    results = again.run_side_by_side(jobs)
    assert again.reused == ["a"] and list(results) == list(again.seconds) == ["a", "b", "c"]
    assert [group["stages"] for group in again.side_by_side] == [["b", "c"]]
    assert results["a"]["pid"] == a["pid"] and (tmp_path / "c" / "stage.json").is_file()
    check_apart(results["b"], results["c"])

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
