"""Engine parts on their own: launch environments, samplers, schedule, parameter groups, checkpoints, gathering,
device-side augmentation, and gradient clipping in both backends."""

import json
import logging
import os

import pytest
import torch

from video_st import create_model
from video_st.data.samplers import ShardSampler, TrainSampler
from video_st.data.transforms import BatchAugment
from video_st.engine import distributed
from video_st.engine.backends import DDPBackend, DeepSpeedBackend, deepspeed_config
from video_st.engine.checkpoint import CheckpointManager, verify
from video_st.engine.evaluate import Predictions, accuracy, ensemble_views, gather
from video_st.engine.optim import CosineSchedule, make_adamw, param_groups


# -- launchers -----------------------------------------------------------------------------------------------
def test_detect_torchrun_srun_and_plain():
    env = distributed.detect({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "n1", "MASTER_PORT": "1234"})
    assert (env.rank, env.local_rank, env.world_size, env.master_addr, env.master_port, env.launcher) == (3, 1, 4, "n1", 1234, "torchrun")
    srun = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_STEP_NUM_TASKS": "8", "SLURM_NTASKS": "8",
            "SLURM_STEP_NODELIST": "gpu[08-11]", "SLURM_JOB_ID": "4242"}
    env = distributed.detect(srun)
    assert (env.rank, env.local_rank, env.world_size, env.master_addr, env.launcher) == (5, 1, 8, "gpu08", "srun")
    assert env.master_port == distributed.slurm_port("4242") == 20000 + 42420 % 20000
    assert distributed.detect({**srun, "SLURM_RESTART_COUNT": "1"}).master_port == env.master_port + 1
    # A batch script running python itself (no srun step) is a world of one, whatever SLURM_NTASKS says.
    env = distributed.detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "1"})
    assert (env.world_size, env.launcher) == (1, "none")


def test_expand_nodelist():
    assert distributed.expand_nodelist("gpu[01-03,07],cpu1,n[9-10]") == ["gpu01", "gpu02", "gpu03", "gpu07", "cpu1", "n9", "n10"]
    assert distributed.expand_nodelist("node001") == ["node001"]


# -- samplers ------------------------------------------------------------------------------------------------
def test_train_sampler_splits_ranks_and_resumes():
    ranks = [list(TrainSampler(11, rank=r, world_size=3, seed=1)) for r in range(3)]
    assert all(len(r) == 3 for r in ranks)  # 11 // 3: the tail is dropped so ranks step together
    indices = [i for r in ranks for i, _ in r]
    assert len(set(indices)) == 9
    sampler = TrainSampler(11, rank=1, world_size=3, seed=1)
    sampler.set_epoch(0, skip=2)
    assert list(sampler) == ranks[1][2:]  # resuming mid-epoch yields exactly the rest, seeds included
    sampler.set_epoch(1)
    assert [i for i, _ in sampler] != [i for i, _ in ranks[1]]  # a new shuffle each epoch
    seeds = [s for r in ranks for _, s in r]
    assert len(set(seeds)) == len(seeds)


def test_shard_sampler_covers_every_item_once():
    for world in (1, 2, 3, 7):
        got = sorted(i for r in range(world) for i in ShardSampler(10, rank=r, world_size=world))
        assert got == list(range(10))


# -- optimisation --------------------------------------------------------------------------------------------
def test_schedule_warms_up_then_decays():
    schedule = CosineSchedule(peak=1.0, total_steps=10, warmup_steps=2, minimum=0.1)
    values = [schedule(s) for s in range(10)]
    assert values[:2] == [0.5, 1.0] and values[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[2:], values[3:], strict=False)) and schedule(10) == pytest.approx(0.1)


def test_param_groups_exclude_frozen_and_decay_norms():
    model = create_model("vit_tiny_test", method="sparse_tuning", num_classes=4)
    groups = param_groups(model, weight_decay=0.05)
    names = [n for g in groups for n in g.names]
    assert set(names) == {n for n, p in model.named_parameters() if p.requires_grad}
    no_decay = {n for g in groups if g.weight_decay == 0 for n in g.names}
    assert "head.bias" in no_decay and "head.weight" not in no_decay
    full = create_model("vit_tiny_test", method="full", num_classes=4)
    scales = {n: g.lr_scale for g in param_groups(full, weight_decay=0.05, layer_decay=0.5) for n in g.names}
    assert scales["head.weight"] == 1.0 and scales["blocks.3.mlp.fc1.weight"] == 0.5
    assert scales["blocks.0.mlp.fc1.weight"] == 0.5**4 and scales["patch_embed.proj.weight"] == 0.5**5
    assert "cls_token" in {n for g in param_groups(full, weight_decay=0.05) if g.weight_decay == 0 for n in g.names}


def test_token_ratio_follows_keep_rate():
    model = create_model("vit_tiny_test", method="sparse_tuning", num_classes=4, sparse_layers=[2, 3], keep_rate=0.5)
    # 32 tokens; layers 1-2 see 32, layer 3 sees 16 + 1 fused, layer 4 sees 9 + 1.
    assert model.token_ratio() == pytest.approx((32 + 32 + 17 + 10) / (4 * 32))
    model.set_keep_rate(1.0)
    assert model.token_ratio() == 1.0  # keep 1.0 drops nothing, so nothing is fused


# -- checkpoints ---------------------------------------------------------------------------------------------
def _write(folder, payload):
    with open(os.path.join(folder, "weights.bin"), "wb") as f:
        f.write(payload)


def test_checkpoints_are_verified_pruned_and_fall_back(tmp_path, caplog):
    manager = CheckpointManager(str(tmp_path), keep_last=2)
    for step in (1, 2, 3):
        manager.save(step, lambda d, s=step: _write(d, bytes([s]) * 1000))
    assert manager.tags() == ["step_00000003", "step_00000002"]  # step 1 pruned
    assert (tmp_path / "latest").read_text() == "step_00000003"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]
    manager.update_best("step_00000002", 0.5)
    manager.save(4, lambda d: _write(d, b"4" * 1000))
    assert "step_00000002" in manager.tags()  # the best survives pruning
    # Truncate the newest: resume must fall back to the previous one, and say so.
    newest = tmp_path / "step_00000004" / "weights.bin"
    newest.write_bytes(newest.read_bytes()[:10])
    with caplog.at_level(logging.WARNING):
        assert manager.newest_valid() == str(tmp_path / "step_00000003")
    assert "step_00000004 is damaged (weights.bin has 10 bytes, expected 1000)" in caplog.text
    # A flipped byte of the same size is caught by the checksum; a missing manifest by its absence.
    (tmp_path / "step_00000003" / "weights.bin").write_bytes(b"\x00" * 1000)
    assert "checksum" in verify(str(tmp_path / "step_00000003"))
    os.remove(tmp_path / "step_00000002" / "MANIFEST.json")
    assert manager.newest_valid() is None


def test_half_written_checkpoint_is_invisible(tmp_path):
    manager = CheckpointManager(str(tmp_path))
    manager.save(1, lambda d: _write(d, b"ok"))

    def killed(folder):
        _write(folder, b"partial")
        raise KeyboardInterrupt  # as if the process died while writing

    with pytest.raises(KeyboardInterrupt):
        manager.save(2, killed)
    assert manager.newest_valid() == str(tmp_path / "step_00000001")
    manager.save(2, lambda d: _write(d, b"whole"))  # the next save clears the leftover staging folder
    assert manager.newest_valid() == str(tmp_path / "step_00000002")
    assert json.loads((tmp_path / "step_00000002" / "MANIFEST.json").read_text())["step"] == 2


# -- evaluation ----------------------------------------------------------------------------------------------
def test_ensembles_and_single_process_gather():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(ensemble_views(logits, "logit"), torch.tensor([1.0, 0.5]))
    assert torch.allclose(ensemble_views(logits, "prob"), logits.softmax(-1).mean(0))
    assert torch.allclose(ensemble_views(logits, "max"), logits.softmax(-1).amax(0))
    preds = Predictions(torch.tensor([2, 0, 1]), torch.eye(3)[[2, 1, 1]], torch.tensor([2, 0, 1]), torch.tensor([3, 3, 3]))
    merged = gather(preds, 3)
    assert merged.index.tolist() == [0, 1, 2] and accuracy(merged.scores, merged.labels) == pytest.approx(2 / 3)
    twice = Predictions(torch.tensor([0, 0]), torch.eye(2), torch.tensor([0, 0]), torch.tensor([1, 1]))
    with pytest.raises(RuntimeError, match="more than once"):
        gather(twice, 2)


# -- device-side augmentation --------------------------------------------------------------------------------
def test_batch_augment_normalises_and_keeps_frames_consistent():
    torch.manual_seed(0)
    frame = torch.randint(0, 256, (3, 1, 16, 16), dtype=torch.uint8)
    batch = frame.repeat(1, 4, 1, 1)[None].repeat(2, 1, 1, 1, 1)  # (B=2, C, T=4, H, W), every frame the same
    plain = BatchAugment(rand_augment=None)(batch)
    assert plain.dtype == torch.float32 and plain.shape == batch.shape
    assert torch.allclose(plain[0, 0, 0, 0, 0], (batch[0, 0, 0, 0, 0] / 255 - 0.485) / 0.229)
    augmented = BatchAugment(rand_augment=(2, 9))(batch)
    # One draw per clip: every frame of a clip gets the same ops, so identical frames stay identical.
    assert all(torch.equal(augmented[b, :, t], augmented[b, :, 0]) for b in range(2) for t in range(4))
    assert BatchAugment()(plain) is plain  # already normalised by a worker: passes through


# -- backends ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def process_group():
    saved = {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env = distributed.detect({})
    distributed.init(env, torch.device("cpu"))  # exports RANK etc. for DeepSpeed, in this process
    yield
    # Leave no launcher variables behind: later tests start launchers whose children inherit them.
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _one_step(kind: str, clip_grad, precision="fp32"):
    torch.manual_seed(0)
    model = create_model("vit_tiny_test", method="full", num_classes=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = make_adamw(param_groups(model, weight_decay=0.0), lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    if kind == "deepspeed":
        config = deepspeed_config(micro_batch=2, accumulation=1, world_size=1, precision=precision, zero_stage=0,
                                  clip_grad=clip_grad)
        backend = DeepSpeedBackend(model, optimizer, config, torch.device("cpu"))
    else:
        backend = DDPBackend(model, optimizer, accumulation=1, precision=precision, clip_grad=clip_grad,
                             device=torch.device("cpu"), world_size=1)
    torch.manual_seed(1)
    video, labels = torch.randn(2, 3, 4, 32, 32), torch.tensor([0, 3])
    backend.train()
    loss = torch.nn.functional.cross_entropy(backend.forward(video).float(), labels)
    backend.backward(loss)
    backend.step()
    return {n: (p.detach().float() - before[n]) for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind", ["deepspeed", "ddp"])
def test_gradient_clipping_is_applied(process_group, kind):
    free, clipped = _one_step(kind, None), _one_step(kind, 1e-9)
    # Adam normalises the gradient, so only a clip far below its norm shows: the update then shrinks to ~g/eps.
    free_size = sum(d.abs().sum() for d in free.values())
    clipped_size = sum(d.abs().sum() for d in clipped.values())
    assert clipped_size < 0.5 * free_size


def test_ddp_and_deepspeed_take_the_same_step(process_group):
    ds, ddp = _one_step("deepspeed", 1.0), _one_step("ddp", 1.0)
    for name in ds:
        assert torch.allclose(ds[name], ddp[name], atol=1e-6), name
