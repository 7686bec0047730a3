"""tools/train_net.py end to end on the tiny model and a generated K400-style set, in subprocesses: DeepSpeed
bf16 + ZeRO-2 over 2 gloo ranks, exact resume after SIGKILL, graceful stop on SIGUSR1, DDP == DeepSpeed (fp32)."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from .conftest import python_launcher, tiny_overrides
from video_st import create_model
from video_st.engine.requeue import EXIT_REQUEUE

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny_cpu.yaml")


def _command(summary, out, *extra, nproc=1):
    return [*python_launcher(nproc), str(ROOT / "tools" / "train_net.py"), "--config", TINY, *tiny_overrides(summary, out, *extra)]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _run(summary, out, *extra, nproc=1, timeout=300):
    result = subprocess.run(_command(summary, out, *extra, nproc=nproc), capture_output=True, text=True,
                            timeout=timeout, env=_env(), cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _log(out):
    return [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]


def _final(out):
    return torch.load(Path(out) / "model_final.pt", weights_only=True)["state_dict"]


def test_deepspeed_bf16_zero2_on_two_ranks_trains(tiny_k400, tmp_path):
    # One training video per class, all four in every step (2 per rank): the loss must fall fast. (On the whole
    # tiny set a from-scratch transformer needs hundreds of steps to move; that is the demo's business.)
    lines = Path(tiny_k400.annotation_files["train"]).read_text().splitlines()
    first = {}
    for line in lines[1:]:
        first.setdefault(line.split(",")[0], line)
    subset = tmp_path / "train4.csv"
    subset.write_text("\n".join([lines[0], *first.values()]) + "\n")
    out = tmp_path / "run"
    result = _run(tiny_k400, out, "model.method=full", "engine.precision=bf16", "engine.zero_stage=2",
                  "data.batch_size=2", "optim.epochs=20", "optim.lr=4e-3", "data.scale=[1.0,1.0]",
                  "log.every_steps=1", f"data.train={subset}", nproc=2)
    ds_config = json.loads((out / "deepspeed_config.json").read_text())
    assert ds_config["bf16"]["enabled"] and ds_config["zero_optimization"]["stage"] == 2
    assert ds_config["train_batch_size"] == 4  # 2 per rank x 2 ranks
    losses = [r["loss"] for r in _log(out) if r["kind"] == "train"]
    assert len(losses) == 20 and sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4, losses
    epochs = [r for r in _log(out) if r["kind"] == "epoch"]
    assert len(epochs) == 20 and all(r["val_videos"] + r["val_failed"] == 8 for r in epochs)
    # The export consolidates the fp32 master weights of both ZeRO partitions into a loadable file.
    final = torch.load(out / "model_final.pt", weights_only=True)
    model = create_model("vit_tiny_test", method="full", num_classes=4)
    model.load_state_dict(final["state_dict"])
    assert final["state_dict"]["head.weight"].dtype == torch.float32
    assert final["video_st"]["spec"]["classes"] == list(tiny_k400.classes)
    assert result.returncode == 0


def test_unreadable_training_videos_are_replaced_and_listed(tiny_k400, tmp_path):
    bad = [c.path for c in tiny_k400.corrupt if c.split == "train"]
    assert bad, "the fixture plants one corrupt training video"
    result = _run(tiny_k400, tmp_path, "engine.precision=fp32", "optim.epochs=1", "data.batch_size=3")
    listed = (tmp_path / "bad_files.txt").read_text()
    assert all(p in listed for p in bad) and "unreadable video replaced" in result.stderr


RESUME_ARGS = ("engine.precision=fp32", "data.batch_size=2", "optim.epochs=3", "checkpoint.every_steps=1",
               "checkpoint.keep_last=3", "engine.deterministic=true")


@pytest.fixture(scope="module")
def uninterrupted(tiny_k400, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    _run(tiny_k400, out, *RESUME_ARGS)
    return out


def _start_and_signal(summary, out, sig, at_step):
    proc = subprocess.Popen(_command(summary, out, *RESUME_ARGS), env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    target = Path(out) / "checkpoints" / f"step_{at_step:08d}"
    deadline = time.monotonic() + 240
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=240)
    return proc.returncode, stderr


def test_resume_after_kill_ends_where_the_uninterrupted_run_ends(tiny_k400, tmp_path, uninterrupted):
    out = tmp_path / "killed"
    code, stderr = _start_and_signal(tiny_k400, out, signal.SIGKILL, at_step=4)
    assert code == -signal.SIGKILL, f"the run ended before the kill ({code}): {stderr[-2000:]}"
    _run(tiny_k400, out, *RESUME_ARGS)
    resumed = [r for r in _log(out) if r["kind"] == "resume"]
    assert resumed and resumed[0]["step"] >= 4
    expected, got = _final(uninterrupted), _final(out)
    assert all(torch.equal(expected[k], got[k]) for k in expected), "resumed weights differ"
    steps = [r["step"] for r in _log(out) if r["kind"] == "checkpoint"]
    assert steps[-1] == [r["step"] for r in _log(uninterrupted) if r["kind"] == "checkpoint"][-1]


def test_sigusr1_saves_and_exits_for_requeue(tiny_k400, tmp_path, uninterrupted):
    out = tmp_path / "stopped"
    code, stderr = _start_and_signal(tiny_k400, out, signal.SIGUSR1, at_step=3)
    assert code == EXIT_REQUEUE, stderr[-2000:]
    stopped = [r for r in _log(out) if r["kind"] == "stopped"]
    assert stopped and stopped[0]["signal"] == signal.SIGUSR1
    assert (out / "checkpoints" / (out / "checkpoints" / "latest").read_text()).is_dir()
    _run(tiny_k400, out, *RESUME_ARGS)
    expected, got = _final(uninterrupted), _final(out)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_ddp_engine_matches_deepspeed_in_fp32(tiny_k400, tmp_path):
    args = ("engine.precision=fp32", "data.batch_size=4", "engine.max_steps=5", "optim.clip_grad=1.0",
            "optim.global_batch=8")  # 2 micro-batches per step: accumulation too
    _run(tiny_k400, tmp_path / "ds", *args, "engine.kind=deepspeed")
    _run(tiny_k400, tmp_path / "ddp", *args, "engine.kind=ddp")
    ds, ddp = _final(tmp_path / "ds"), _final(tmp_path / "ddp")
    assert all(torch.allclose(ds[k], ddp[k], atol=1e-5) for k in ds)
    assert not all(torch.equal(ds[k], create_model("vit_tiny_test", method="sparse_tuning", num_classes=4,
                                                   sparse_layers=[2, 3]).state_dict()[k]) for k in ds)


def test_mixup_cutmix_ema_and_device_randaugment_run(tiny_k400, tmp_path):
    """The recipe parts the other tests leave off: video mixup/cutmix with soft targets, EMA of the trainable
    weights, RandAugment on the device, keep-rate warm-up, drop path; the EMA export differs from the weights."""
    _run(tiny_k400, tmp_path, "engine.max_steps=3", "engine.precision=fp32", "optim.mixup_alpha=0.8",
         "optim.cutmix_alpha=1.0", "optim.ema_decay=0.5", "data.rand_augment=[2,9]", "data.augment_on=device",
         "optim.keep_rate_warmup_epochs=1", "model.drop_path_rate=0.1", "log.every_steps=1")
    records = [r for r in _log(tmp_path) if r["kind"] == "train"]
    assert len(records) == 3 and all(0.7 <= r["keep_rate"] <= 1.0 for r in records)
    assert records[0]["keep_rate"] > records[-1]["keep_rate"]  # warming up towards 0.7
    ema = torch.load(tmp_path / "trainable_ema.pt", weights_only=True)["state_dict"]
    final = _final(tmp_path)
    assert set(ema) < set(final) and any(not torch.equal(ema[k], final[k]) for k in ema)


def test_submit_py_runs_training_with_the_local_executor(tiny_k400, tmp_path):
    cmd = [*python_launcher(1), str(ROOT / "tools" / "submit.py"), "train", "--local", "--config", TINY,
           *tiny_overrides(tiny_k400, tmp_path, "engine.max_steps=2", "engine.precision=fp32")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env(), cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "submitted train job" in result.stdout and (tmp_path / "model_final.pt").exists()


@pytest.mark.parametrize("method, extra", [("dyt", ("model.distill_weight=0.5", "model.calibrate=true")),
                                           ("asvit", ("model.keep_rate=0.5", "model.calibrate=true"))])
def test_dynamic_methods_train_with_their_losses_and_test_on_the_kept_tokens(tiny_k400, tmp_path, method, extra):
    """DyT (with self-distillation) and AS-ViT through the engine: calibrated at the start (the option
    calibrate=true), their auxiliary losses and measured rates logged, and tools/test_net.py counts the FLOPs their
    inference paths really compute."""
    # A backbone whose attention is peaked, as a pre-trained one is: with the random init's near-uniform [CLS]
    # attention every token scores about 1 / N, and which side of a threshold a whole clip lands on is noise.
    from video_st.models.spec import save_model_file

    torch.manual_seed(0)
    backbone = create_model("vit_tiny_test", method="full", num_classes=0)
    with torch.no_grad():
        for block in backbone.blocks:
            block.attn.qkv.weight.mul_(30.0)
    save_model_file(tmp_path / "backbone.pt", backbone.state_dict(), spec=backbone.spec, content="backbone")
    extra = (*extra, f"model.pretrained={tmp_path / 'backbone.pt'}")
    result = _run(tiny_k400, tmp_path, f"model.method={method}", "engine.max_steps=2", "engine.precision=fp32",
                  "log.every_steps=1", *extra)
    assert "calibrated to the target rates" in result.stderr
    records = [r for r in _log(tmp_path) if r["kind"] == "train"]
    if method == "dyt":
        assert all({"loss_activation", "loss_distill", "loss_full_token", "activation_rate"} <= set(r) for r in records)
    else:
        assert all({"loss_budget", "kept_ratio"} <= set(r) for r in records) and "token_ratio" not in records[0]
    test = subprocess.run([*python_launcher(1), str(ROOT / "tools" / "test_net.py"), "--config", TINY,
                           *tiny_overrides(tiny_k400, tmp_path, f"model.method={method}", "test.batch_size=1",
                                           *extra)],
                          capture_output=True, text=True, timeout=300, env=_env(), cwd=ROOT)
    assert test.returncode == 0, test.stderr[-3000:]
    summary = json.loads((tmp_path / "test" / "summary.json").read_text())
    # Against the same adapters on every token (on the tiny model a bottleneck of 64 is as wide as the model).
    dense = create_model("vit_tiny_test", method="adaptformer", num_classes=4)
    from video_st.models.flops import count_flops

    assert 0 < summary["gflops_per_view"] < count_flops(dense, (1, 3, 4, 32, 32))
    assert 0 < summary["activation_rate" if method == "dyt" else "kept_ratio"] < 1


def test_a_seeded_run_is_reproduced_exactly_with_loader_workers(tiny_k400, tmp_path):
    # The benchmarks compare methods across runs, so a run must be a function of its config: two loader workers
    # (clips drawn in forked processes, a corrupt training video replaced by a random other one) and the same
    # seed give the same weights bit for bit; another seed gives other weights.
    args = ("engine.precision=fp32", "data.batch_size=3", "engine.max_steps=4", "data.num_workers=2",
            "model.method=full")
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        _run(tiny_k400, tmp_path / name, *args, f"engine.seed={seed}")
    a, b, c = (_final(tmp_path / name) for name in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a), "same seed, different weights"
    assert not all(torch.equal(a[k], c[k]) for k in a)
    replaced = [(tmp_path / name / "bad_files.txt").read_text() for name in "ab"]
    assert replaced[0] == replaced[1] and replaced[0]
