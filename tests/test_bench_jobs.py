"""The benchmarks' child processes (video_st/bench/jobs.py): chains of steps, at most N at once, stopped at the
first failing step or at a step's timeout, each child with its thread share, and none outliving the benchmark
(SIGTERM, kill -9)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from video_st.bench.jobs import Step, child_env, run_chains

PY = sys.executable


def _mark(path, what: str) -> str:
    # a child that appends "start <t>" / "end <t>" (monotonic clock, shared by the processes of this machine)
    return f"import time; open({str(path)!r}, 'a').write('{what} ' + repr(time.monotonic()) + chr(10))"


def _window(path) -> tuple[float, float]:
    values = dict(line.split() for line in path.read_text().splitlines())
    return float(values["start"]), float(values["end"])


def _chain(tmp_path, name: str, *, sleep: float = 1.5) -> list[Step]:
    # long beside an interpreter's start-up, so two children started together overlap even on a loaded machine
    marks = tmp_path / f"{name}.marks"
    body = f"{_mark(marks, 'start')}; time.sleep({sleep}); {_mark(marks, 'end')}"
    return [Step(name="work", cmd=[PY, "-c", body], log=str(tmp_path / f"{name}.log"))]


@pytest.mark.parametrize("jobs", [1, 2])
def test_chains_run_at_most_jobs_at_once(tmp_path, jobs):
    chains = {name: _chain(tmp_path, name) for name in ("a", "b", "c")}
    events = []
    outcomes = run_chains(chains, jobs=jobs, on_start=lambda key: events.append(f"start {key}"),
                          on_done=lambda key, _: events.append(f"done {key}"))
    assert all(o.code == 0 and o.failed is None and o.seconds["work"] > 1.4 for o in outcomes.values())
    assert [e for e in events if e.startswith("start")] == ["start a", "start b", "start c"]
    if jobs == 1:  # strictly one after another: a run's results are read before the next one starts
        assert events == ["start a", "done a", "start b", "done b", "start c", "done c"]
    windows = {name: _window(tmp_path / f"{name}.marks") for name in chains}
    overlap = lambda x, y: windows[x][0] < windows[y][1] and windows[y][0] < windows[x][1]  # noqa: E731
    if jobs == 1:  # one after another, in the given order
        assert windows["a"][1] <= windows["b"][0] and windows["b"][1] <= windows["c"][0]
    else:  # a and b together; c only once one of them ended
        assert overlap("a", "b") and not (overlap("a", "c") and overlap("b", "c"))
    assert (tmp_path / "a.log").read_text().startswith(f"$ {PY} -c ")  # the command line heads its log


def test_a_chain_stops_at_its_first_failing_step_and_a_step_at_its_timeout(tmp_path):
    never = tmp_path / "never"
    failing = [Step(name="train", cmd=[PY, "-c", "import sys; print('diverged'); sys.exit(3)"],
                    log=str(tmp_path / "train.log")),
               Step(name="test", cmd=[PY, "-c", f"open({str(never)!r}, 'w')"], log=str(tmp_path / "test.log"))]
    slow = [Step(name="train", cmd=[PY, "-c", "import time; time.sleep(60)"], log=str(tmp_path / "slow.log"),
                 timeout=1.0)]
    outcomes = run_chains({"failing": failing, "slow": slow}, jobs=2)
    assert (outcomes["failing"].code, outcomes["failing"].failed) == (3, "train") and not never.exists()
    assert list(outcomes["failing"].seconds) == ["train"] and "diverged" in (tmp_path / "train.log").read_text()
    assert (outcomes["slow"].code, outcomes["slow"].failed) == (124, "train")
    assert outcomes["slow"].seconds["train"] < 30 and "timed out after 1.0 s" in (tmp_path / "slow.log").read_text()


def test_each_child_gets_its_thread_share(tmp_path):
    step = Step(name="env", cmd=[PY, "-c", "import os; print(os.environ['OMP_NUM_THREADS'])"],
                log=str(tmp_path / "env.log"))
    assert run_chains({"env": [step]}, env=child_env(3))["env"].code == 0
    assert (tmp_path / "env.log").read_text().splitlines()[-1] == "3"


# A benchmark process that starts a long child through run_chains, says the child's pid, and waits on it.
# With "no-prctl" the kernel's parent-death signal is off, so only the benchmark's own cleanup can stop the child.
_PARENT = """
import sys, time
from video_st.bench import jobs
from video_st.bench.jobs import Step, run_chains
pid_file, log = sys.argv[1], sys.argv[2]
if sys.argv[3] == "no-prctl":
    jobs.die_with_parent_after_fork = lambda parent_pid: (lambda: None)
child = "import os, time; open(%r, 'w').write(str(os.getpid())); time.sleep(120)" % pid_file
run_chains({"long": [Step(name="train", cmd=[sys.executable, "-c", child], log=log)]})
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def _wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; prctl is Linux's")
@pytest.mark.parametrize("how", ["sigterm", "kill -9"])
def test_no_child_outlives_the_benchmark(tmp_path, how):
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([PY, "-c", _PARENT, str(pid_file), str(tmp_path / "child.log"),
                               "no-prctl" if how == "sigterm" else "prctl"],
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    child = None
    try:
        assert _wait_for(lambda: pid_file.exists() and pid_file.read_text(), timeout=60), "the child never started"
        child = int(pid_file.read_text())
        assert _alive(child)
        parent.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
        code = parent.wait(timeout=30)
        # SIGTERM: the loop stops the child itself, then exits 143; kill -9: the kernel ends the child
        assert code == (143 if how == "sigterm" else -9)
        assert _wait_for(lambda: not _alive(child), timeout=10), f"{how}: child {child} lives on"
    finally:
        if parent.poll() is None:
            parent.kill()
        if child is not None and _alive(child):
            os.kill(child, signal.SIGKILL)


def test_two_runs_in_one_folder_are_refused_before_anything_runs(tmp_path):
    from video_st.bench.sweeps import Sweep, run_sweeps

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sweep = Sweep(methods=["linear"], config=os.path.join(root, "configs/hard/target.yaml"),
                  backbone=str(tmp_path / "backbone.pt"), data=str(tmp_path / "data"), output_dir=str(tmp_path / "runs"))
    with pytest.raises(ValueError, match="two runs in one folder .*runs/linear"):
        run_sweeps([sweep, sweep], jobs=2)
    assert not (tmp_path / "runs").exists()  # nothing prepared, nothing started


def test_an_edited_base_config_is_another_run_under_the_same_names(tmp_path):
    # configs/hard/target.yaml reads configs/hard/pretrain.yaml as its base: an edit there (a stage-1 setting
    # such as optim.attention_guide) changes every stage-2 run, though no path or override does
    from video_st.bench.sweeps import Sweep, _plan_run
    from video_st.config import load_config

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / "base.yaml").write_text(f"base: {os.path.join(root, 'configs/tiny_cpu.yaml')}\n")
    (tmp_path / "run.yaml").write_text("base: base.yaml\n")
    sweep = Sweep(methods=["linear"], config=str(tmp_path / "run.yaml"), backbone=str(tmp_path / "backbone.pt"),
                  data=str(tmp_path / "data"), output_dir=str(tmp_path / "runs"))

    def settings():
        return _plan_run(sweep, "linear", base=load_config(sweep.config), threads=1, digests={}).settings

    before = settings()
    (tmp_path / "base.yaml").write_text((tmp_path / "base.yaml").read_text() + "optim:\n  attention_guide: 1.0\n")
    after = settings()
    assert before["overrides"] == after["overrides"] and before["config"] == after["config"]
    assert before != after and after["resolved"]["optim"]["attention_guide"] == 1.0


def test_the_command_line_names_each_method_and_number_once():
    import argparse

    from video_st.bench.cli import _methods, _numbers

    parser = argparse.ArgumentParser()
    assert _methods(parser, "linear, full,linear") == ["linear", "full"]
    assert _numbers(parser, "--keep-rates", "0.5,0.50,0.3", float) == [0.5, 0.3]
