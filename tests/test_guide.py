"""The attention guide (video_st/models/guide.py, optim.attention_guide): its loss on hand-built rows, a tiny model
trained by it alone, the trainer feeding it each training clip's masks; and what the two users of the training
masks (the guide, data.object_first) refuse."""

import json
import math
from pathlib import Path

import pytest
import torch

from .conftest import tiny_overrides
from video_st import create_model
from video_st.config import load_config
from video_st.engine.train import train
from video_st.errors import ConfigError
from video_st.models import guide as guide_module
from video_st.models import vit
from video_st.models.guide import GuideRecord, guide_record
from video_st.models.sparsify import TokenState

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml")


def test_loss_is_the_cross_entropy_from_the_foreground_to_the_row_over_the_current_tokens():
    # 1 prefix + 4 tokens, 2 heads; their mean row is [0.2 | 0.1, 0.4, 0.2, 0.1], renormalised over the 4 tokens
    # q = [0.125, 0.5, 0.25, 0.125]. The tokens are grid ids 3, 0, a fused token (-1), 2; the grid's foreground
    # is {0, 2, 3}, so tokens 0, 1 and 3 are foreground now and the fused one is not.
    head_rows = torch.tensor([[0.1, 0.1, 0.5, 0.2, 0.1], [0.3, 0.1, 0.3, 0.2, 0.1]])
    rows = torch.stack([head_rows, head_rows])  # clip 2: the same row, but no foreground at all
    state = TokenState(ids=torch.tensor([[3, 0, -1, 2], [3, 0, -1, 2]]),
                       guide=torch.tensor([[True, False, True, True], [False, False, False, False]]))
    record = guide_record(rows, state, num_prefix=1, weight=2.0)
    expected = -(math.log(0.125) + math.log(0.5) + math.log(0.125)) / 3  # clip 2 has nothing to be drawn to
    assert record.clips.item() == 1 and record.loss_sum.item() == pytest.approx(expected)
    assert GuideRecord.stats([record])["guide_foreground_share"].item() == pytest.approx(0.125 + 0.5 + 0.125)
    assert GuideRecord.loss([record, record]).item() == pytest.approx(2.0 * expected)
    # a layer where no clip has foreground adds nothing to the mean (a 0 there would halve the loss)
    empty = guide_record(rows, TokenState(ids=state.ids, guide=torch.zeros_like(state.guide)), num_prefix=1,
                         weight=2.0)
    assert empty.clips.item() == 0
    assert GuideRecord.loss([record, empty]).item() == pytest.approx(2.0 * expected)
    # a token AS-ViT's training mask has dropped (log-mask key bias) keeps its grid id but is no target: the
    # loss is then over tokens 0 and 3 alone
    dropped = TokenState(ids=state.ids, guide=state.guide,
                         key_bias=torch.log(torch.tensor([[1.0, 1e-6, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])))
    expected_alive = -(math.log(0.125) + math.log(0.125)) / 2
    assert guide_record(rows, dropped, num_prefix=1, weight=1.0).loss_sum.item() == pytest.approx(expected_alive)
    # the fused token's mass is no foreground mass: a row that puts all of it there scores as far from the
    # object as one that puts it on the background
    on_fused = torch.tensor([[[0.0, 0.0, 0.0, 1.0, 0.0]]])
    one = TokenState(ids=torch.tensor([[3, 0, -1, 2]]), guide=torch.tensor([[True, False, True, True]]))
    assert guide_record(on_fused, one, num_prefix=1, weight=1.0).share_sum.item() == 0.0


def _tiny(method="full", **options):
    torch.manual_seed(0)
    return create_model("vit_tiny_test", method=method, num_classes=4, **options)


def test_the_guide_alone_draws_the_cls_row_onto_the_object():
    model = _tiny()
    model.set_attention_guide(1.0)
    clips = torch.randn(4, 3, 4, 32, 32)
    tokens = torch.zeros(4, 2, 4, 4, dtype=torch.bool)  # 8 of the 32 tokens of every clip
    tokens[:, :, 1:3, :2] = True
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    shares = []
    for _ in range(40):
        _, terms = model(clips, return_terms=True, guide=tokens)
        shares.append(terms.stats["guide_foreground_share"].item())
        optimizer.zero_grad()
        terms.losses["attention_guide"].backward()
        optimizer.step()
    assert shares[0] < 0.35 and shares[-1] > 0.95  # from about 8 / 32 to nearly all of the mass
    assert terms.losses["attention_guide"].item() == pytest.approx(math.log(8), abs=0.05)  # uniform over the 8


def test_guided_layers_only_and_off_without_weight_or_tokens():
    model = _tiny()
    clips = torch.randn(2, 3, 4, 32, 32)
    tokens = torch.zeros(2, 32, dtype=torch.bool)
    tokens[:, :5] = True
    _, terms = model(clips, return_terms=True, guide=tokens)
    assert "attention_guide" not in terms.losses  # weight 0: off
    model.set_attention_guide(1.0, [2])
    _, terms = model(clips, return_terms=True)
    assert "attention_guide" not in terms.losses  # no tokens given: nothing to guide to
    _, terms = model(clips, return_terms=True, guide=tokens)
    terms.losses["attention_guide"].backward()
    # layer 2's [CLS] row depends on layers 1 and 2 only: the later layers get no gradient from it
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.blocks[2:].parameters())
    with pytest.raises(ValueError, match=r"attention guide layers \[5\]: the model has layers 1 to 4"):
        model.set_attention_guide(1.0, [5])
    with pytest.raises(ValueError, match=r"guide: \(2, 7\) for 2 clips of 32 tokens"):
        model(clips, return_terms=True, guide=torch.zeros(2, 7, dtype=torch.bool))


def test_a_guided_reducer_layer_guides_the_row_its_top_k_ranks_by(monkeypatch):
    # Sparse-Tuning scored by the mean query: at its layer 2 the guide must train that row, not [CLS]'s
    model = _tiny("sparse_tuning", score="mean")
    model.set_attention_guide(1.0, [2])
    guided, asked = [], []
    real = guide_module.guide_record
    monkeypatch.setattr(vit, "guide_record", lambda rows, state, **kw: guided.append(rows) or real(rows, state, **kw))
    attention = model.blocks[1].attn
    hook = attention.register_forward_hook(lambda module, args, kwargs, out: asked.append((kwargs["rows"], out[1].rows)),
                                           with_kwargs=True)
    model(torch.randn(2, 3, 4, 32, 32), return_terms=True, guide=torch.ones(2, 32, dtype=torch.bool))
    hook.remove()
    ((kind, rows),) = asked
    assert kind == "mean" and len(guided) == 1 and torch.equal(guided[0], rows)


def test_training_with_the_guide_feeds_it_each_clips_object_tokens(hard_overrides, tmp_path, monkeypatch):
    # with data.object_first too, the guide's tokens must be the very tokens kept first, which
    # test_hard_oracle checks against each training video's own masks
    pairs = []
    real = guide_module.guide_record

    def spy(rows, state, **kw):
        pairs.append((state.guide, state.prefer))
        return real(rows, state, **kw)

    monkeypatch.setattr(vit, "guide_record", spy)
    cfg = load_config(TINY, [*hard_overrides, "model.method=sparse_tuning", "optim.attention_guide=0.5",
                             "optim.attention_guide_layers=[1,2]", "data.object_first=true", "data.scale=[1.0,1.0]",
                             "data.hflip=none", "optim.epochs=1", "data.batch_size=2", "engine.kind=ddp",
                             f"output_dir={tmp_path}", "log.progress=false", "log.tensorboard=false",
                             "log.every_steps=1"])
    assert train(cfg) == 0
    assert len(pairs) == 2 * 2  # 2 training batches x the 2 guided layers
    assert all(g is not None and torch.equal(g, p) and g.any() for g, p in pairs)
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r for r in logged if r["kind"] == "train"]
    assert steps and all(r["loss_attention_guide"] > 0 and 0 < r["guide_foreground_share"] <= 1 for r in steps)


@pytest.mark.parametrize("user, extra, message", [
    ("data.object_first=true", ["model.method=dense_adapter"], "model.method='dense_adapter' has no top-k step"),
    ("data.object_first=true", ["data.rand_augment=[2,9]"], r"data.object_first=true needs data.rand_augment=null"),
    ("data.object_first=true", ["optim.mixup_alpha=0.8"], r"data.object_first=true needs optim.mixup_alpha=0"),
    ("optim.attention_guide=1", ["data.rand_augment=[2,9]"], r"optim.attention_guide=1.0 needs data.rand_augment=null"),
    ("optim.attention_guide=1", ["optim.cutmix_alpha=1.0"], r"optim.attention_guide=1.0 needs optim.cutmix_alpha=0"),
    ("optim.attention_guide=1", ["optim.attention_guide_layers=[0,9]"],
     r"optim.attention_guide_layers=\[0, 9\]: attention guide layers \[0, 9\]: the model has layers 1 to 4"),
])
def test_what_reads_the_masks_refuses_what_it_cannot_honour(hard_overrides, tmp_path, user, extra, message):
    with pytest.raises(ConfigError, match=message):
        train(load_config(TINY, [*hard_overrides, user, "engine.kind=ddp", f"output_dir={tmp_path / 'run'}", *extra]))
    assert not (tmp_path / "run").exists()  # refused before any output


@pytest.mark.parametrize("user, named", [("data.object_first=true", "data.object_first=true"),
                                         ("optim.attention_guide=1", "optim.attention_guide=1.0")])
def test_what_reads_the_masks_without_them_names_the_file_it_looked_for(tiny_k400, tmp_path, user, named):
    cfg = load_config(TINY, tiny_overrides(tiny_k400, tmp_path / "run", user, "engine.kind=ddp"))
    with pytest.raises(ConfigError, match=f"{named}: .*train_masks.npz: no such masks file"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_a_negative_guide_or_layers_without_a_weight_is_one_line():
    with pytest.raises(ConfigError, match=r"optim.attention_guide must be >= 0 \(0: off\), got -1"):
        load_config(TINY, ["optim.attention_guide=-1"])
    with pytest.raises(ConfigError, match=r"optim.attention_guide_layers=\[2\] does nothing with optim.attention_guide=0"):
        load_config(TINY, ["optim.attention_guide_layers=[2]"])
