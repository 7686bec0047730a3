from pathlib import Path

import pytest

from video_st.config import load_config
from video_st.engine.build import build_model

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml") if p.name != "base.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_every_config_builds_its_model(path):
    cfg = load_config(path)
    model = build_model(cfg)
    assert model.num_classes == cfg.model.num_classes
    if cfg.model.method == "sparse_tuning":
        assert model.keep_rates and all(0 < r < 1 for r in model.keep_rates)
    if "k400" in path.parts:
        assert (cfg.test.temporal_views, cfg.test.spatial_views, cfg.data.sampling) == (1, 3, "dense")
    if "ssv2" in path.parts:
        assert (cfg.test.temporal_views, cfg.test.spatial_views, cfg.data.hflip) == (3, 1, "none")


def test_paper_settings_of_sparse_tuning():
    for dataset, epochs in (("k400", 12), ("ssv2", 50)):
        cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / dataset / "sparse_tuning_vit_b16.yaml")
        assert list(cfg.model.sparse_layers) == [4, 7, 10] and cfg.model.keep_rate == 0.7
        assert cfg.model.adapter_bottleneck == 32 and cfg.data.num_frames == 8
        assert (cfg.optim.lr, cfg.optim.base_batch, cfg.optim.weight_decay, cfg.optim.epochs) == (1e-3, 128, 0.01, epochs)
