"""Config: typed defaults + YAML files (with their bases) + overrides, validated with errors that name the key and
the closest valid one; clip geometry stated once; the tools' --config A [B ...] with key=value overrides."""

import argparse
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from video_st.errors import ConfigError
from video_st.cli_args import add_config_arguments, parse_config_args
from video_st.config import load_config, save_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_cpu.yaml"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_layers_merge_in_order(tmp_path):
    cfg = load_config(TINY, ["optim.lr=5e-4", "model.keep_rate=0.5", "data.scale=[0.3,0.9]"])
    assert cfg.optim.lr == 5e-4 and cfg.model.keep_rate == 0.5 and list(cfg.data.scale) == [0.3, 0.9]
    assert cfg.model.arch == "vit_tiny_test"  # from the YAML
    assert cfg.optim.weight_decay == 0.01  # a typed default the YAML does not touch
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg  # the saved config reproduces the run


@pytest.mark.parametrize(("overrides", "message"), [
    (["optim.lrr=1"], "unknown config key 'optim.lrr' in command-line overrides; did you mean 'optim.lr'?"),
    (["model.keep_ratee=0.5"], "did you mean 'model.keep_rate'?"),
    (["engine.zero=2"], "did you mean 'engine.zero_stage'?"),
    (["optim.lr=fast"], "invalid value for 'optim.lr'"),
    (["engine.precision=fp8"], "engine.precision='fp8': expected one of 'bf16', 'fp16', 'fp32'"),
    (["data.batch_size=0"], "data.batch_size must be >= 1"),
    (["data.scale=[0.5]"], "data.scale must be [min, max]"),
    (["optim.lr"], "is not key=value"),
])
def test_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(TINY, overrides)
    assert message in str(err.value)


def test_yaml_typo_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  batch_sise: 4\n")
    with pytest.raises(ConfigError, match=r"'data.batch_sise' in .*bad.yaml; did you mean 'data.batch_size'"):
        load_config(bad)


def test_yaml_syntax_error_names_the_file(tmp_path):
    bad = _write(tmp_path / "broken.yaml", "optim:\n  lr: [1e-3,\n")
    with pytest.raises(ConfigError, match=r"cannot read config .*broken\.yaml: invalid YAML at line 3"):
        load_config(bad)
    tabbed = _write(tmp_path / "tabbed.yaml", "optim:\n\tlr: 1\n")
    with pytest.raises(ConfigError, match=r"tabbed\.yaml: invalid YAML at line 2"):
        load_config(tabbed)
    child = _write(tmp_path / "child.yaml", "base: broken.yaml\n")  # also when it is a base
    with pytest.raises(ConfigError, match=r"broken\.yaml"):
        load_config(child)


def test_base_may_be_a_list_merged_in_order(tmp_path):
    _write(tmp_path / "common" / "a.yaml", "data:\n  batch_size: 2\n  num_workers: 1\noptim:\n  lr: 1.0\n")
    _write(tmp_path / "common" / "b.yaml", "base: a.yaml\ndata:\n  batch_size: 3\n")  # relative to its file
    _write(tmp_path / "c.yaml", "optim:\n  lr: 2.0\n  epochs: 7\n")
    top = _write(tmp_path / "top.yaml", "base: [common/b.yaml, c.yaml]\noptim:\n  epochs: 9\n")
    cfg = load_config(top)
    assert (cfg.data.num_workers, cfg.data.batch_size) == (1, 3)  # a < b
    assert (cfg.optim.lr, cfg.optim.epochs) == (2.0, 9)  # b < c < the file itself
    assert "base" not in cfg
    single = _write(tmp_path / "single.yaml", "base: c.yaml\n")
    assert load_config(single).optim.epochs == 7


@pytest.mark.parametrize(("base", "message"), [
    ("[]", "base must be a path or a list of paths"),
    ("[a.yaml, 3]", "base must be a path or a list of paths"),
    ("missing.yaml", "cannot read config"),
    ("loop.yaml", "config base cycle"),
])
def test_bad_bases(tmp_path, base, message):
    path = _write(tmp_path / "loop.yaml", f"base: {base}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_several_files_merge_left_to_right_each_after_its_bases(tmp_path):
    first = _write(tmp_path / "first.yaml", "optim:\n  lr: 1.0\n  epochs: 3\n")
    _write(tmp_path / "second_base.yaml", "optim:\n  epochs: 4\n  min_lr: 0.5\n")
    second = _write(tmp_path / "second.yaml", "base: second_base.yaml\noptim:\n  lr: 2.0\n")
    cfg = load_config([first, second], ["optim.min_lr=0.25"])
    assert (cfg.optim.lr, cfg.optim.epochs, cfg.optim.min_lr) == (2.0, 4, 0.25)
    assert load_config([second, first]).optim.lr == 1.0
    assert load_config([str(first)]) == load_config(first) == load_config(str(first))
    assert load_config([]) == load_config(None)
    composed = load_config([ROOT / "configs" / "datasets" / "ssv2.yaml", ROOT / "configs" / "methods" / "full.yaml"])
    assert (composed.data.dataset, composed.model.method, composed.optim.layer_decay) == ("ssv2", "full", 0.75)
    assert composed.optim.lr == 5e-4  # the method file comes after the dataset file


def test_clip_geometry_is_stated_once(tmp_path):
    # Equal values are accepted and dropped: the data section is the one statement.
    cfg = load_config(TINY, ["model.num_frames=4", "model.img_size=32"])
    assert "num_frames" not in cfg.model and "img_size" not in cfg.model
    assert (cfg.data.num_frames, cfg.data.size) == (4, 32)
    with pytest.raises(ConfigError) as err:
        load_config(TINY, ["model.num_frames=8"])
    assert ("model.num_frames=8 (command-line overrides) but data.num_frames=4 (" in str(err.value)
            and "tiny_cpu.yaml): clip geometry is stated once, in data.num_frames" in str(err.value))
    with pytest.raises(ConfigError, match=r"model.img_size=64 \(.*geo.yaml\) but data.size=32 .*stated once, in data.size"):
        load_config([TINY, _write(tmp_path / "geo.yaml", "model:\n  img_size: 64\n")])
    # A model value that matched until the data changed is a contradiction too.
    same = _write(tmp_path / "same.yaml", "base: " + str(TINY) + "\nmodel:\n  num_frames: 4\n")
    assert "num_frames" not in load_config(same).model
    with pytest.raises(ConfigError, match=r"model.num_frames=4 \(.*same.yaml\) but data.num_frames=8 \(command-line"):
        load_config(same, ["data.num_frames=8"])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tool")
    add_config_arguments(parser)
    parser.add_argument("--checkpoint")
    parser.add_argument("--local_rank", type=int)
    return parser


@pytest.mark.parametrize(("argv", "configs", "overrides"), [
    (["--config", "a.yaml", "b.yaml", "optim.lr=1", "data.size=2"], ["a.yaml", "b.yaml"], ["optim.lr=1", "data.size=2"]),
    (["--config", "a.yaml", "optim.lr=1"], ["a.yaml"], ["optim.lr=1"]),  # the one-file form of before
    (["optim.lr=1", "--config", "a.yaml", "b.yaml", "optim.lr=2"], ["a.yaml", "b.yaml"], ["optim.lr=1", "optim.lr=2"]),
    (["--config", "a.yaml", "--checkpoint", "c", "x=1", "--config", "b.yaml", "y=2"], ["a.yaml", "b.yaml"],
     ["x=1", "y=2"]),
    (["--local_rank=0", "--config=a.yaml", "x=1"], ["a.yaml"], ["x=1"]),
    (["--config", "a.yaml", "b.yaml", "--", "x=1"], ["a.yaml", "b.yaml"], ["x=1"]),
    (["x=1"], None, ["x=1"]),
])
def test_config_files_and_overrides_are_told_apart(argv, configs, overrides):
    args = parse_config_args(_parser(), argv)
    assert (args.config, args.overrides) == (configs, overrides)


def test_config_needs_a_file():
    with pytest.raises(SystemExit):
        parse_config_args(_parser(), ["--config", "optim.lr=1"])


def test_every_shipped_config_loads():
    for path in sorted(TINY.parent.rglob("*.yaml")):
        cfg = load_config(path)
        assert OmegaConf.is_readonly(cfg), path


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    import os
    import stat

    from video_st.fileio import write_atomic

    target = tmp_path / "report.json"
    write_atomic(target, "{}")
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o666 & ~mask  # not mkstemp's 0600
