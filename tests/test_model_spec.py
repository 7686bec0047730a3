"""The method table and the model spec (issue "Nothing silently wrong"): every method of list_methods() trains
exactly what its record says, equals its backbone with its reduction off, comes back identical from every file
kind, and seeds any other method with its backbone only; a config that disagrees with a trained file is an error
naming both values."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import video_st
from video_st import create_model, list_methods, load_model
from video_st.config import load_config
from video_st.engine.backends import DDPBackend
from video_st.engine.checkpoint import SPEC_FILE, CheckpointManager
from video_st.engine.multiview import load_for_test
from video_st.errors import CheckpointError, ConfigError
from video_st.models.calibrate import calibrate
from video_st.models.pruning import ThresholdPruner
from video_st.models.methods import METHODS, trainable_names
from video_st.models.slots import Prompts
from video_st.models.spec import save_model_file

from .conftest import tiny_clip

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny_cpu.yaml")
CLASSES = ["down", "left", "right", "up"]


def _model(method, seed=0, **kwargs):
    torch.manual_seed(seed)
    return create_model("vit_tiny_test", method=method, num_classes=4, classes=CLASSES, **kwargs)


def _perturb(model, seed=1):
    """Give every trainable parameter a random push (fresh adapters are zero and would hide a loading bug)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.dtype.is_floating_point:
                p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    return model


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", list_methods())
def test_trainable_set_is_the_records_and_gradients_reach_exactly_it(method):
    # AS-ViT's published tau (1e-4) passes a gradient to a threshold only from tokens scoring within about 2e-3 of
    # it (fp32 sigmoid); calibrated thresholds and a wider tau make it certain on the tiny model's few tokens.
    model = _perturb(_model(method, **({"threshold_temperature": 0.01} if method == "asvit" else {}))).train()
    if model.input_dependent:
        calibrate(model, tiny_clip())
    expected = trainable_names(model, METHODS[method].trains)
    assert _trainable(model) == expected and expected
    if METHODS[method].trains != ("all",):  # a frozen backbone: its attention weights never train
        assert "blocks.0.attn.qkv.weight" not in expected
    logits, terms = model(tiny_clip(), return_terms=True)
    assert set(terms.losses) <= set(METHODS[method].losses)
    (logits.square().sum() + sum(terms.losses.values())).backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert got == expected


@pytest.mark.parametrize("method", list_methods())
def test_with_its_reduction_off_each_method_equals_its_backbone(method):
    full = _model("full").eval()
    model = _model(method, seed=7).eval()
    missing = model.load_state_dict(full.state_dict(), strict=False).missing_keys
    method_parts = tuple(f"{n}." for n in model.slot_module_names())
    assert all(k.startswith(method_parts) for k in missing)  # the rest of the model is the backbone
    if model.keep_rates:
        model.set_keep_rate(1.0)
    for module in model.modules():
        if isinstance(module, ThresholdPruner):
            module.threshold.data.fill_(-1e4)  # below every score: nothing is pruned
    model.prompts = Prompts()  # VPT's prompts are random from the start; without them the blocks are the backbone's
    clip = tiny_clip()
    with torch.no_grad():
        # full_tokens: DyT's dispatchers let every token through (the self-distillation teacher's pass).
        logits = model.forward_head(model.forward_features(clip, full_tokens=True))
    torch.testing.assert_close(logits, full(clip), rtol=1e-5, atol=1e-5)  # fresh method parts add nothing


def _engine_folder(model, root):
    """An engine checkpoint folder as training writes it (the DDP backend's format), with the model spec."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    backend = DDPBackend(model, optimizer, accumulation=1, precision="fp32", clip_grad=None,
                         device=torch.device("cpu"), world_size=1)
    manager = CheckpointManager(str(root / "checkpoints"))
    return manager.save(3, lambda d: backend.save(d, {"step": 3}),
                        files={SPEC_FILE: json.dumps(model.spec.to_dict())})


@pytest.mark.parametrize("method", list_methods())
def test_train_save_load_gives_identical_logits_from_every_file_kind(method, tmp_path):
    model = _model(method).train()
    if model.input_dependent:
        calibrate(model, tiny_clip())
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    logits, terms = model(tiny_clip(), return_terms=True)
    (logits.square().mean() + sum(terms.with_task(lambda s: s.square().mean()).values())).backward()
    optimizer.step()  # one real training step: the trained parts differ from any fresh init
    model.eval()
    clip = tiny_clip()
    with torch.no_grad():
        expected = model(clip)
    state = model.state_dict()
    backbone = tmp_path / "backbone.pt"
    save_model_file(backbone, state, spec=model.spec)
    save_model_file(tmp_path / "model_final.pt", state, spec=model.spec)
    save_model_file(tmp_path / "trainable_final.pt", {k: v for k, v in state.items() if k in _trainable(model)},
                    spec=model.spec, content="trainable")
    folder = _engine_folder(model, tmp_path)
    for path, kwargs in ((folder, {}), (tmp_path / "model_final.pt", {}), (tmp_path / "checkpoints", {}),
                         (tmp_path / "trainable_final.pt", {"backbone": backbone})):
        loaded, spec = load_model(path, **kwargs)
        assert spec == model.spec.__class__.from_dict(model.spec.to_dict(), source="test")
        assert spec.classes == tuple(CLASSES) and spec.method == method
        with torch.no_grad():
            torch.testing.assert_close(loaded.eval()(clip), expected, rtol=0, atol=0, msg=str(path))


def test_seeding_a_method_from_any_other_methods_file_takes_the_backbone_only(tmp_path):
    files = {}
    for method in list_methods():
        files[method] = tmp_path / f"{method}.pt"
        save_model_file(files[method], _perturb(_model(method)).state_dict(), spec=_model(method).spec)
    for target in list_methods():
        fresh = _model(target)
        shapes = {k: v.shape for k, v in fresh.state_dict().items()}
        for source, path in files.items():
            seeded = create_model("vit_tiny_test", method=target, num_classes=4, classes=CLASSES, pretrained=path)
            assert seeded.spec == fresh.spec, (source, target)
            assert {k: v.shape for k, v in seeded.state_dict().items()} == shapes, (source, target)
            # The backbone came from the file; the method's own parts start from their init.
            assert torch.equal(seeded.blocks[1].mlp.fc1.weight, torch.load(path)["state_dict"]["blocks.1.mlp.fc1.weight"])


def _cfg(*overrides):
    return load_config(TINY, ["model.pretrained=none", *overrides])


def _final(tmp_path, method="sparse_tuning", **kwargs) -> str:
    """A model_final.pt of a fresh tiny model (what training exports)."""
    path = tmp_path / "model_final.pt"
    model = _model(method, **kwargs)
    save_model_file(path, model.state_dict(), spec=model.spec)
    return path


def test_a_file_tested_under_another_method_is_an_error_naming_both(tmp_path):
    path = _final(tmp_path)
    with pytest.raises(ConfigError, match="model.method=evit in the config but sparse_tuning in the file"):
        load_for_test(_cfg("model.method=evit"), path)
    loaded, changes = load_for_test(_cfg(), path)  # the config says nothing else: the file's model
    assert loaded.spec.method == "sparse_tuning" and changes == {}


def test_keep_rate_of_the_file_rules_and_a_test_time_change_is_explicit(tmp_path):
    path = _final(tmp_path, keep_rate=0.5)
    with pytest.raises(ConfigError, match=r"model.keep_rate=0.7 in the config but 0.5 in the file"):
        load_for_test(_cfg("model.keep_rate=0.7"), path)
    loaded, _ = load_for_test(_cfg(), path)
    assert loaded.model.keep_rates == (0.5, 0.5)
    loaded, changes = load_for_test(_cfg("test.keep_rate=0.7"), path)
    assert loaded.model.keep_rates == (0.7, 0.7) and changes == {"keep_rate": {"trained": [0.5, 0.5], "tested": [0.7, 0.7]}}


def test_a_six_block_file_is_rebuilt_with_six_blocks_and_a_config_saying_four_is_an_error(tmp_path):
    path = _final(tmp_path, depth=6)
    loaded, spec = load_model(path)
    assert len(loaded.blocks) == 6 and spec.backbone["depth"] == 6
    with pytest.raises(ConfigError, match="model.depth=4 in the config but 6 in the file"):
        load_for_test(_cfg("model.depth=4"), path)


def test_clip_geometry_of_the_config_must_be_the_files(tmp_path):
    path = _final(tmp_path)
    with pytest.raises(ConfigError, match="data.num_frames=8, data.size=32 in the config but the model takes 4"):
        load_for_test(_cfg("data.num_frames=8"), path)


def test_a_wrong_arch_name_for_a_backbone_is_an_error_not_a_silent_rebuild(tmp_path):
    path = tmp_path / "backbone.pt"
    tiny = _model("full")
    save_model_file(path, tiny.state_dict(), spec=tiny.spec, content="backbone")
    with pytest.raises(CheckpointError, match="embed_dim=64 but vit_small_patch16 has embed_dim=384"):
        create_model("vit_small_patch16", method="sparse_tuning", pretrained=path)


def test_an_option_the_method_does_not_take_is_an_error():
    with pytest.raises(ValueError, match="method 'full' has no option 'sparse_layers'.*sparse_tuning"):
        create_model("vit_tiny_test", method="full", sparse_layers=(2,))
    with pytest.raises(ConfigError, match="model: method 'lora' has no option 'num_prompts'"):
        from video_st.engine.build import build_model

        build_model(_cfg("model.method=lora", "model.num_prompts=4"))


def test_a_frozen_backbone_needs_pretrained_weights_unless_none_is_said():
    from video_st.engine.build import build_model

    cfg = load_config(TINY)  # sparse_tuning, no model.pretrained
    with pytest.raises(ConfigError, match="model.method=sparse_tuning freezes the backbone, but model.pretrained"):
        build_model(cfg, for_training=True)
    assert build_model(_cfg(), for_training=True).spec.method == "sparse_tuning"  # none: said on purpose
    assert build_model(load_config(TINY, ["model.method=full"]), for_training=True).spec.method == "full"


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_folder_carrying_a_pickled_payload_is_refused_and_never_runs(tmp_path):
    model = _model("sparse_tuning")
    folder = Path(_engine_folder(model, tmp_path))
    marker = tmp_path / "payload_ran"
    state = torch.load(folder / "ddp_state.pt", weights_only=True)
    state["client_state"]["evil"] = _Payload(marker)
    torch.save(state, folder / "ddp_state.pt", pickle_protocol=pickle.HIGHEST_PROTOCOL)
    # A manifest that matches: the attacker rewrote it too, so only weights_only stands in the way.
    from video_st.engine.checkpoint import MANIFEST, _files
    from video_st.fileio import sha256_file

    files = {rel: {"size": os.path.getsize(folder / rel), "sha256": sha256_file(folder / rel)}
             for rel in _files(str(folder))}
    (folder / MANIFEST).write_text(json.dumps({"step": 3, "files": files}))
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "test_net.py"), "--config", TINY,
                             f"--checkpoint={folder}", "model.pretrained=none", f"output_dir={tmp_path}"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2 and not marker.exists()
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "ddp_state.pt: refused: not loadable as weights only" in lines[0]
    assert "Traceback" not in result.stderr


def test_the_public_api_lists_the_table():
    assert video_st.list_methods() == sorted(METHODS)
    for record in METHODS.values():  # every option default resolves on the test model and builds
        create_model("vit_tiny_test", method=record.name)
