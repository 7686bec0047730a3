from pathlib import Path

import pytest
from omegaconf import OmegaConf

from video_st import create_model

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_every_config_builds_its_model(path):
    model_args = OmegaConf.to_container(OmegaConf.load(path).model)
    arch = model_args.pop("arch")
    model = create_model(arch, **model_args)
    assert model.num_classes == model_args["num_classes"]
    if model_args.get("method") == "sparse_tuning":
        assert model.keep_rates and all(0 < r < 1 for r in model.keep_rates)
