"""The launchers on a real single-node Slurm (tests/slurm/local_cluster.sh): sbatch slurm/k400.sh trains,
checkpoints and tests; a 2-task job runs 2 ranks, survives USR1 by checkpoint + requeue + resume; preprocessing
arrays through slurm/preprocess.sh and tools/submit.py cover every video. Skipped where Slurm cannot be
installed (no root or apt); every wait is bounded and the cluster is stopped even when a test fails."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "slurm" / "local_cluster.sh"
pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slurm")
    launcher_vars = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher_vars}
    env["SLURM_TEST_DIR"] = str(folder / "cluster")
    start = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=600)
    if start.returncode == 3:
        pytest.skip(f"no Slurm here and it cannot be installed: {start.stderr.strip()}")
    try:
        assert start.returncode == 0, start.stderr
        env["SLURM_CONF"] = str(folder / "cluster" / "slurm.conf")
        env["REPO"] = str(ROOT)
        yield env, folder
    finally:
        subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


def _sbatch(env, cwd, script, *flags, extra_env=None, timeout=600, wait=True):
    """``sbatch --wait``: run to the end (wait=True), or return the waiting sbatch process (wait=False)."""
    cmd = ["sbatch", "--parsable", "--wait", "--time=15", "--cpus-per-task=1", *flags, str(script)]
    if wait:
        return subprocess.run(cmd, env={**env, **(extra_env or {})}, cwd=cwd, capture_output=True, text=True,
                              timeout=timeout)
    return subprocess.Popen(cmd, env={**env, **(extra_env or {})}, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _train_env(summary, out, *extra):
    return {"CONFIG": "configs/tiny_cpu.yaml", "DATA_ROOT": summary.root, "OUTPUT_DIR": str(out),
            "EXTRA": " ".join(["model.pretrained=none", "log.progress=false", "data.num_workers=0", "data.hflip=none",
                               *extra])}


def _squeue(env, job):
    result = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], env=env, capture_output=True, text=True,
                            timeout=30)
    return result.stdout.strip()


def test_sbatch_k400_trains_checkpoints_and_tests(cluster, tiny_k400):
    env, folder = cluster
    out = folder / "k400"
    result = _sbatch(env, folder, ROOT / "slurm" / "k400.sh", "--ntasks-per-node=1", "--gres=gpu:1",
                     extra_env=_train_env(tiny_k400, out, "optim.epochs=2"))
    job = result.stdout.strip().split(";")[0]
    log, err = (folder / f"k400_{job}.out").read_text(), (folder / f"k400_{job}.err").read_text()
    assert result.returncode == 0, log + err
    assert "training finished" in log and "videos evaluated: 7 (3 views each: 1 temporal x 3 spatial" in log
    assert "requeue" not in log  # a finished job never requeues
    assert "epoch 2: val top-1" in err and (out / "checkpoints" / "best.json").exists()
    assert json.loads((out / "test" / "summary.json").read_text())["excluded"] == 1


def _records(path):
    """The complete lines of a log.jsonl that a running job may still be appending to (none before it exists)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def _wait_for(found, waiter, deadline, what):
    """Poll ``found()`` until it returns something truthy; fails at the deadline or when the job has ended."""
    while not (value := found()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        assert waiter.poll() is None, f"the job ended before {what}: {waiter.communicate()}"
        time.sleep(0.2)
    return value


def _write_config(path, **sections):
    # JSON is YAML; `base:` is joined to this file's folder, and an absolute path stays itself.
    path.write_text(json.dumps({"base": str(ROOT / "configs" / "tiny_cpu.yaml"), **sections}, indent=1))


def test_two_rank_job_requeues_on_usr1_and_resumes(cluster, tiny_k400):
    """Nothing here depends on how fast the job trains: the first run has an end it cannot reach (slurm/
    _train_job.sh re-reads CONFIG at every start, so the test gives the requeued run a finite one), the USR1 waits
    for a train record in log.jsonl (the ranks hold their stop handler by then, and the record stays), and the
    finite end is written once the stopped record shows the first run is over, before the job may start again."""
    env, folder = cluster
    out = folder / "requeue"
    config = folder / "requeue.yaml"
    _write_config(config, optim={"epochs": 100_000})  # 16 videos / (2 ranks x 2): 400,000 steps, hours
    log_file = out / "log.jsonl"
    waiter = _sbatch(env, folder, ROOT / "slurm" / "k400.sh", "--ntasks-per-node=2", "--gres=gpu:2", wait=False,
                     extra_env={**_train_env(tiny_k400, out, "data.batch_size=2", "checkpoint.every_steps=2",
                                             "log.every_steps=1"), "CONFIG": str(config)})
    job = None
    try:
        deadline = time.monotonic() + 300
        _wait_for(lambda: any(r["kind"] == "train" for r in _records(log_file)), waiter, deadline,
                  "a train record in log.jsonl")
        job = subprocess.run(["squeue", "-h", "-o", "%i", "-n", "k400"], env=env, capture_output=True, text=True,
                             timeout=30).stdout.split()[0]
        subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=env, check=True, timeout=30)
        stopped = _wait_for(lambda: next((r for r in _records(log_file) if r["kind"] == "stopped"), None), waiter,
                            deadline, "the stopped record")
        final = stopped["step"] + 6
        # The first run's ranks read the config when they started and have stopped; the requeued run reads this.
        _write_config(config, optim={"epochs": 100_000}, engine={"max_steps": final})
        # A requeued job waits ~2 minutes for its begin time; release it at once.
        while time.monotonic() < deadline and waiter.poll() is None:
            state = _squeue(env, job)
            if state.startswith("PENDING") and "BeginTime" in state:
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, timeout=30)
            time.sleep(1)
        assert waiter.wait(timeout=max(1, deadline - time.monotonic())) == 0
    finally:
        if waiter.poll() is None:
            waiter.kill()
            if job is not None:  # a job left running would hold the cluster's CPUs for the next tests
                subprocess.run(["scancel", job], env=env, capture_output=True, timeout=30)
    log = (folder / f"k400_{job}.out").read_text()
    assert "training stopped at a checkpoint: requeueing" in log and f"job {job} restart 1" in log
    assert "over 2 process(es)" in log
    records = _records(log_file)
    resumed = next(r for r in records if r["kind"] == "resume")
    assert stopped["step"] >= 1 and resumed["step"] == stopped["step"] and resumed["slurm_restart_count"] == 1
    # The step count runs on across the requeue without a gap or a repeat, to the end set for the second run.
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps == list(range(1, final + 1)) and next(r for r in records if r["kind"] == "done")["step"] == final


def _covered(tiny_k400, output):
    lines = [json.loads(line) for p in Path(output).glob("manifest.scan.shard*.jsonl")
             for line in p.read_text().splitlines()]
    train = Path(tiny_k400.annotation_files["train"]).read_text().splitlines()[1:]
    assert len(lines) == len(train) == len({entry["input"] for entry in lines})
    bad = {c.path for c in tiny_k400.corrupt if c.split == "train"}
    assert {Path(e["input"]).relative_to(tiny_k400.root).as_posix() for e in lines if e["status"] == "failed"} == bad


def test_preprocess_array_through_sbatch(cluster, tiny_k400):
    env, folder = cluster
    out = folder / "scan_sbatch"
    result = _sbatch(env, folder, ROOT / "slurm" / "preprocess.sh", "--array=0-1",
                     extra_env={"SUBCOMMAND": "scan", "INPUT": tiny_k400.annotation_files["train"],
                                "OUTPUT": str(out), "EXTRA": f"--root {tiny_k400.root}"})
    assert result.returncode == 0, result.stderr
    _covered(tiny_k400, out)


def test_preprocess_array_through_submit_py(cluster, tiny_k400):
    env, folder = cluster
    out = folder / "scan_submitit"
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "submit.py"), "preprocess", "scan", "--input",
                             tiny_k400.annotation_files["train"], "--root", tiny_k400.root, "--output", str(out),
                             "--num-shards", "2", "--cpus", "1", "--time", "10"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    _covered(tiny_k400, out)
