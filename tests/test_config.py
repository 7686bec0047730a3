"""Config: typed defaults + YAML + overrides, validated with errors that name the key and the closest valid one."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from video_st.config import ConfigError, load_config, save_config

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"


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
