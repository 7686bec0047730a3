"""The shipped configs: every dataset x method composition loads and builds its model at the data's clip geometry,
the dataset files carry the papers' test protocols, and each fact is stated once (no geometry in the model
section, no method-table default in a method file)."""

from pathlib import Path

import pytest
import yaml

from video_st.config import load_config
from video_st.engine.build import build_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DATASETS = ("k400", "ssv2")
METHODS = ("full", "linear", "adapter", "adaptformer", "lora", "vpt", "bitfit", "dense_adapter", "sparse_tuning",
           "dyt", "dyt_moe", "asvit", "evit", "tome")
# What a method file may set: the method, and the training settings that are the method's own (not options of
# the method table in video_st/models/methods.py).
METHOD_OWN = {
    "full": {"model": {"method"}, "optim": {"layer_decay", "lr", "weight_decay"}},
    "linear": {"model": {"method"}, "optim": {"weight_decay", "mixup_alpha", "cutmix_alpha"}},
    "sparse_tuning": {"model": {"method", "drop_path_rate"}},
    "dyt_moe": {"model": {"method", "adapter"}},  # DyT with the MoE adapter
}
STANDALONE = ("tiny_cpu.yaml", "demo/pretrain_ssv2.yaml")


def compose(dataset: str, method: str) -> list[Path]:
    return [CONFIGS / "datasets" / f"{dataset}.yaml", CONFIGS / "methods" / f"{method}.yaml"]


def _geometry(model) -> tuple[int, int]:
    return model.patch_embed.num_frames, model.patch_embed.img_size


def test_every_method_has_a_file_and_nothing_else_is_left():
    assert sorted(p.stem for p in (CONFIGS / "methods").glob("*.yaml")) == sorted(METHODS)
    assert sorted(p.stem for p in (CONFIGS / "datasets").glob("*.yaml")) == sorted(DATASETS)
    assert not (CONFIGS / "k400").exists() and not (CONFIGS / "ssv2").exists()


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("method", METHODS)
def test_every_composition_builds_its_model(dataset, method):
    cfg = load_config(compose(dataset, method))
    assert cfg.model.method == ("dyt" if method == "dyt_moe" else method)
    assert cfg.data.dataset == dataset and "num_frames" not in cfg.model and "img_size" not in cfg.model
    model = build_model(cfg)
    assert model.num_classes == cfg.model.num_classes == {"k400": 400, "ssv2": 174}[dataset]
    assert _geometry(model) == (cfg.data.num_frames, cfg.data.size) == (8, 224)  # the model follows the data
    if method in ("sparse_tuning", "evit", "tome", "asvit"):
        assert model.keep_rates and all(0 < r < 1 for r in model.keep_rates)
    if method == "dyt_moe":
        assert any(type(m).__name__ == "MoEAdapter" for m in model.modules())


@pytest.mark.parametrize("name", STANDALONE)
def test_standalone_configs_build_at_their_clip_geometry(name):
    cfg = load_config(CONFIGS / name)
    model = build_model(cfg)
    assert model.num_classes == cfg.model.num_classes
    assert _geometry(model) == (cfg.data.num_frames, cfg.data.size) == (4, 32)


@pytest.mark.parametrize("method", METHODS)
def test_protocols(method):
    k400, ssv2 = (load_config(compose(d, method)) for d in DATASETS)
    # K400: dense sampling, flip, 1 temporal x 3 spatial test views, 12 epochs.
    assert (k400.data.sampling, k400.data.hflip, k400.test.temporal_views, k400.test.spatial_views,
            k400.optim.epochs) == ("dense", "flip", 1, 3, 12)
    # SSv2: TSN segments, no flip (left and right are classes), 3 temporal x 1 spatial, 50 epochs.
    assert (ssv2.data.sampling, ssv2.data.hflip, ssv2.test.temporal_views, ssv2.test.spatial_views,
            ssv2.optim.epochs) == ("segment", "none", 3, 1, 50)
    assert ssv2.data.labels and k400.data.train.endswith(".csv")
    # A method file says the same on both datasets: only the dataset's own sections differ.
    assert k400.model.method == ssv2.model.method and k400.model.get("drop_path_rate") == ssv2.model.get("drop_path_rate")


def test_method_files_state_no_method_table_default():
    for method in METHODS:
        delta = yaml.safe_load((CONFIGS / "methods" / f"{method}.yaml").read_text())
        allowed = METHOD_OWN.get(method, {"model": {"method"}})
        assert "base" not in delta, method
        assert set(delta) <= set(allowed), (method, set(delta))
        for section, keys in delta.items():
            assert set(keys) <= allowed[section], (method, section, set(keys) - allowed[section])


def test_geometry_is_stated_once_in_every_shipped_file():
    for path in sorted(CONFIGS.rglob("*.yaml")):
        model = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
        assert not {"num_frames", "img_size"} & set(model), path


@pytest.mark.parametrize("dataset", DATASETS)
def test_paper_settings_of_sparse_tuning(dataset):
    """Sparse-Tuning on ViT-B/16: 8 frames at 224 with 2-frame tubelets; token sparsification at layers 4, 7, 10
    with keep rate 0.7, fusing by weighted average; Dense Adapters of bottleneck 32 at scale 1.0; AdamW lr 1e-3 at
    batch 128, wd 0.01. The model settings come from the method table, so they are checked on the built model."""
    cfg = load_config(compose(dataset, "sparse_tuning"))
    assert (cfg.optim.lr, cfg.optim.base_batch, cfg.optim.weight_decay) == (1e-3, 128, 0.01)
    assert (cfg.data.num_frames, cfg.data.size, cfg.model.tubelet_size) == (8, 224, 2)
    model = build_model(cfg)

    def modules(kind: str, block=model):
        return [m for m in block.modules() if type(m).__name__ == kind]

    reducing = [i + 1 for i, block in enumerate(model.blocks) if modules("TopKFuse", block)]
    assert reducing == [4, 7, 10]
    assert model.keep_rates == pytest.approx((0.7, 0.7, 0.7))
    assert {m.fuse for m in modules("TopKFuse")} == {"mean"}  # the weighted average
    adapters = modules("DenseAdapter")
    assert len(adapters) == 12 and {(m.up.in_features, m.scale) for m in adapters} == {(32, 1.0)}
    assert max(len(m.downs) for m in adapters) == 3  # each layer reads up to two earlier adapters
    assert max(m.drop_prob for m in modules("DropPath")) == pytest.approx(0.1)  # the method file's
    assert (model.patch_embed.num_frames, model.patch_embed.img_size, model.patch_embed.tubelet_size) == (8, 224, 2)
    spec = getattr(model, "spec", None)  # the resolved model spec (video_st/models/spec.py), where built with one
    if spec is not None:
        assert tuple(spec.options["sparse_layers"]) == (4, 7, 10) and spec.options["keep_rate"] == 0.7
        assert (spec.options["adapter_bottleneck"], spec.options["adapter_scale"]) == (32, 1.0)
        assert (spec.backbone["num_frames"], spec.backbone["img_size"]) == (8, 224)
