"""AS-ViT against literal re-implementations of the published formulas (Cydia2018/AS-ViT, vit.py and losses.py; the
non-distillation path), in the style of the Dense Adapter's literal test (tests/test_model.py).

Each ``literal_*`` function follows one piece of the published code (named in its docstring) and builds the N x N
attention map where the published code does; video_st computes the same from fused SDPA, the [CLS] row and the
per-head output norms. On hand-built attention maps and tokens: the score, the straight-through mask and its
gradient, the FLOPs budget loss, per-sample inference; then the whole training forward of the tiny model against a
literal N x N re-implementation of the published one."""

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from video_st import create_model
from video_st.models.calibrate import calibrate
from video_st.models.layers import Attention, AttnInfo
from video_st.models.pruning import MASK_FLOOR, FlopsBudget, StageTokens, ThresholdPruner
from video_st.models.sparsify import TokenState

from .conftest import tiny_clip

TAU = 1e-4  # the published tau of the training mask


# -- the published formulas, literally ------------------------------------------------------------------------
def literal_softmax_with_policy(attn, policy, eps=1e-6, self_term=True):
    """``Attention.softmax_with_policy``: (B, H, N, N) logits, (B, N) policy ([CLS] first). ``self_term=False``
    drops the ``eye`` (every query's own key then carries its own mask value): what the key-bias form computes."""
    B, N = policy.shape
    attn_policy = policy.reshape(B, 1, 1, N)
    if self_term:
        eye = torch.eye(N, dtype=attn_policy.dtype).view(1, 1, N, N)
        attn_policy = attn_policy + (1.0 - attn_policy) * eye
    max_att = torch.max(attn, dim=-1, keepdim=True)[0]
    attn = (attn - max_att).exp() * attn_policy
    return (attn + eps / N) / (attn.sum(dim=-1, keepdim=True) + eps)


def literal_score(attn, attn_out):
    """``Attention.forward``'s token score from the (B, H, N, N) map and the (B, H, N, D) per-head outputs."""
    cls_attn = attn[:, :, 0, 1:]
    head_importance = attn_out[..., 1:, :].norm(dim=-1)
    head_importance = head_importance / (head_importance.sum(dim=1, keepdim=True) + 1e-8)
    return (cls_attn * head_importance).sum(dim=1)


def literal_keep(score, threshold, tau=TAU):
    """``AdaptiveSparsityModule.forward`` in training: the straight-through hard decision."""
    y_soft = torch.sigmoid((score - threshold) / tau)
    y_hard = (y_soft > 0.5).float()
    return y_hard - y_soft.detach() + y_soft


def literal_block_terms(dim, mlp_dim, n):
    """``Block.flops(num_tokens)``, term by term (multiply-adds; the published sum is divided by 1e9)."""
    return {"kqv": 3 * dim * dim * n, "attn": dim * n * n, "attnv": dim * n * n, "attnout": dim * dim * n,
            "fc1": dim * mlp_dim * n, "fc2": dim * n * mlp_dim}


def literal_block_flops(dim, mlp_dim, n):
    return sum(literal_block_terms(dim, mlp_dim, n).values()) / 1e9


def literal_patch_flops(num_patches, embed_dim, patch_size, in_chans=3, tubelet=1):
    """``PatchEmbed.flops``: ``num_patches * embed_dim * 3 * p * p`` (x tubelet for a tube embedding)."""
    return num_patches * embed_dim * in_chans * tubelet * patch_size * patch_size / 1e9


def literal_budget_loss(flops, flops_t, keep_ratio=0.7, ratio_weight=2.0):
    """``DistillDiffPruningFLOPsLoss``: ``pred_loss = (flops.mean() - flopsT * keep_ratio).norm(1)``, weighted."""
    return ratio_weight * (flops.mean() - flops_t * keep_ratio).norm(1)


def literal_inference_batch1(score, threshold):
    """``AdaptiveSparsityModule.forward`` in eval at batch 1 (what every sample does here): the tokens above it."""
    return torch.nonzero((score > threshold).squeeze(0)).flatten()  # (1, n) -> the kept positions


def literal_inference_batched(score, threshold):
    """The published batch > 1 rule (not copied): every sample keeps the batch-mean count of its top tokens."""
    k = int((score > threshold).sum()) // score.shape[0]
    return torch.argsort(score, dim=1, descending=True)[:, :k]


# -- helpers ----------------------------------------------------------------------------------------------------
def _pruner(n, *, threshold=0.01, keep_rate=0.7):
    budget = FlopsBudget(dim=8, hidden=32, depth=2, layers=(1,), tokens=n + 1, prefix=1, patch=0.0)
    return ThresholdPruner(budget=budget, keep_rate=keep_rate, num_tokens=n, threshold=threshold, temperature=TAU)


def _state(batch, n):
    return TokenState(ids=torch.arange(n).expand(batch, -1))


def _qkv(attn, x):
    qkv = attn.qkv(x)
    return rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=attn.num_heads)


def _literal_attention(attn, x, policy, self_term=True):
    """The published attention on the module's weights: (output, map, per-head outputs)."""
    q, k, v = _qkv(attn, x)
    a = literal_softmax_with_policy((q @ k.transpose(-2, -1)) * attn.scale, policy, self_term=self_term)
    o = a @ v
    return attn.proj(rearrange(o, "b h n d -> b n (h d)")), a, o


# -- the score --------------------------------------------------------------------------------------------------
def test_score_is_the_published_token_level_head_importance_on_a_hand_built_map():
    torch.manual_seed(0)
    batch, heads, n, dim = 2, 3, 6, 4
    a = torch.randn(batch, heads, 1 + n, 1 + n).mul(2).softmax(dim=-1)  # a hand-built attention map
    v = torch.randn(batch, heads, 1 + n, dim)
    o = a @ v
    info = AttnInfo(rows=a[:, :, 0], keys=None, head_norms=o.norm(dim=-1))
    torch.testing.assert_close(_pruner(n).scores(info), literal_score(a, o), rtol=1e-6, atol=1e-8)
    # One weight per head (video_st's earlier variant) is not it: the weight varies over tokens.
    w = o[..., 1:, :].norm(dim=-1)
    assert not torch.allclose(w / w.sum(1, keepdim=True), (w / w.sum(1, keepdim=True)).mean(-1, keepdim=True))


def test_the_attention_gives_the_maps_row_and_head_norms_without_the_map():
    torch.manual_seed(0)
    attn = Attention(dim=12, num_heads=3).eval()
    x = torch.randn(2, 7, 12)
    policy = torch.tensor([[1.0, 1, 0, 1, 1, 0, 1], [1.0, 0, 1, 1, 0, 1, 1]])
    with torch.no_grad():
        out, info = attn(x, key_bias=torch.log(policy + MASK_FLOOR), rows="cls", head_norms=True)
        ref, a, o = _literal_attention(attn, x, policy)
    torch.testing.assert_close(info.rows, a[:, :, 0], rtol=1e-5, atol=1e-6)
    alive = policy.bool()  # the [CLS] and kept queries: the published outputs (dropped ones reach nothing)
    torch.testing.assert_close(info.head_norms.transpose(1, 2)[alive], o.norm(dim=-1).transpose(1, 2)[alive],
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[alive], ref[alive], rtol=1e-5, atol=1e-6)
    ours, literal = _pruner(6).scores(info), literal_score(a, o)
    kept = policy[:, 1:].bool()
    torch.testing.assert_close(ours[kept], literal[kept], rtol=1e-5, atol=1e-7)
    # Dropped tokens: ~0 class attention in both (their head weights differ: a dropped query attends to itself in
    # the published code, not here), so both stay far below any threshold.
    assert ours[~kept].max() < 1e-5 and literal[~kept].max() < 1e-5


# -- the training mask and its gradient ---------------------------------------------------------------------------
def test_training_mask_is_the_published_straight_through_decision():
    batch, heads, n = 2, 3, 6
    theta = 0.01
    offsets = torch.tensor([[-3e-4, -1e-4, -2e-5, 3e-5, 1.5e-4, 4e-4], [2e-5, -4e-5, 9e-5, -2e-4, 1e-3, -1e-3]])
    rows = torch.zeros(batch, heads, 1 + n)
    rows[:, :, 0] = 0.5
    rows[:, :, 1:] = theta + offsets[:, None]  # every head alike: the score is the offset row (up to 1e-8)
    rows.requires_grad_(True)
    norms = torch.rand(batch, heads, 1 + n) + 0.5
    pruner = _pruner(n, threshold=theta).train()
    info = AttnInfo(rows=rows, keys=None, head_norms=norms)
    _, state = pruner(torch.zeros(batch, 1 + n, 8), _state(batch, n), info)
    ours = state.key_bias.exp() - MASK_FLOOR
    score = literal_score(rows[:, :, None].expand(-1, -1, 1 + n, -1), norms[..., None])
    literal = literal_keep(score, pruner.threshold)
    torch.testing.assert_close(ours, literal, rtol=0, atol=1e-6)
    assert ours.detach().round().tolist() == [[0, 0, 0, 1, 1, 1], [1, 0, 1, 0, 1, 0]]
    torch.testing.assert_close(state.aux[0].value, 1 + literal.sum(dim=1), rtol=1e-6, atol=1e-5)  # [CLS] + kept
    weights = torch.randn(batch, n)
    grads_ours = torch.autograd.grad((ours * weights).sum(), (pruner.threshold, rows))
    grads_literal = torch.autograd.grad((literal * weights).sum(), (pruner.threshold, rows))
    for g_ours, g_literal in zip(grads_ours, grads_literal, strict=True):
        assert g_literal.abs().sum() > 0
        torch.testing.assert_close(g_ours, g_literal, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_key_bias_mask_has_the_published_forward_and_gradient(dtype):
    """The multiplicative mask of softmax_with_policy as a key bias log(m + floor), against the N x N literal:
    equal outputs for the [CLS] and kept queries; d/dm_j equal for every dropped key; for kept keys equal to the
    literal without its self term (the one difference: a kept query's own key, constant 1 in the published)."""
    torch.manual_seed(0)
    attn = Attention(dim=8, num_heads=2).to(torch.float64).eval()
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    hard = torch.tensor([[1.0, 0, 1, 1, 0, 1], [0.0, 1, 1, 0, 1, 1]], dtype=torch.float64)
    alive = F.pad(hard, (1, 0), value=1.0).bool()
    g = torch.randn(2, 7, 8, dtype=torch.float64) * alive[..., None]  # the loss sees the [CLS] and kept queries

    def grad_of(run):
        m = hard.clone().requires_grad_(True)
        out = run(m)
        (dm,) = torch.autograd.grad((out.to(torch.float64) * g).sum(), m)
        return out.detach().to(torch.float64), dm

    def ours(m):
        module = attn.to(dtype)
        bias = F.pad(torch.log(m + MASK_FLOOR), (1, 0))
        return module(x.to(dtype), key_bias=bias)[0]

    attn_ref = Attention(dim=8, num_heads=2).to(torch.float64)
    attn_ref.load_state_dict({k: v.to(torch.float64) for k, v in attn.state_dict().items()})

    def literal(m, self_term=True):
        return _literal_attention(attn_ref, x, torch.cat([torch.ones(2, 1, dtype=m.dtype), m], 1), self_term)[0]

    out, dm = grad_of(ours)
    out_lit, dm_lit = grad_of(literal)
    _, dm_no_self = grad_of(lambda m: literal(m, self_term=False))
    tol = {torch.float64: 1e-5, torch.float32: 1e-4, torch.bfloat16: 5e-2}[dtype]
    assert torch.isfinite(dm).all()
    torch.testing.assert_close(out[alive], out_lit[alive], rtol=tol, atol=tol)
    dropped, kept = hard == 0, hard == 1
    assert dm_lit[dropped].abs().min() > 0  # the published mask has a gradient for dropped keys too
    scale = dm_lit.abs().max()
    torch.testing.assert_close(dm[dropped] / scale, dm_lit[dropped] / scale, rtol=tol, atol=tol)
    torch.testing.assert_close(dm[kept] / scale, dm_no_self[kept] / scale, rtol=tol, atol=tol)
    torch.testing.assert_close(dm_no_self[dropped], dm_lit[dropped], rtol=1e-6, atol=1e-9)


# -- the budget ---------------------------------------------------------------------------------------------------
def _vit_b_budget():
    with torch.device("meta"):
        model = create_model("vit_base_patch16", method="asvit", num_classes=400)
    return model.reducing_blocks[0].reducer.budget


def test_budget_loss_is_the_published_flops_loss():
    budget = _vit_b_budget()
    dim, mlp_dim, depth, layers = 768, 768 * 4.0, 12, (4, 7, 10)
    assert (budget.dim, budget.hidden, budget.depth, budget.layers, budget.tokens) == (768, 3072, 12, layers, 785)
    patch = literal_patch_flops(784, dim, 16, tubelet=2)
    assert budget.patch == pytest.approx(patch, rel=1e-12)
    # The dense reference: the published teacher count (cal_flops) over all tokens; with [CLS] here (the published
    # leaves it out: 0.14% less on 8 frames).
    dense = patch + depth * literal_block_flops(dim, mlp_dim, 785)
    assert budget.dense == pytest.approx(dense, rel=1e-12) and dense == pytest.approx(78.9568, rel=1e-5)
    cal_flops = patch + depth * literal_block_flops(dim, mlp_dim, 784)
    assert 1 - cal_flops / dense == pytest.approx(0.0014, abs=1e-4)

    counts = torch.tensor([[700.0, 500.0, 300.0], [785.0, 785.0, 785.0], [401.0, 200.5, 99.0]], requires_grad=True)
    records = [StageTokens(value=counts[:, s], kept=counts[:, s] / 784, budget=budget, keep_rate=0.7, weight=2.0)
               for s in range(3)]
    ours = StageTokens.loss(records)

    def flops_per_sample(c, published_placement=False):
        n_in = [785.0] * depth  # tokens of each block's attention, of its MLP (this project's placement)
        n_out = [785.0] * depth
        n = 785.0
        for layer in range(1, depth + 1):
            n_in[layer - 1] = n
            if layer in layers:
                n = c[layers.index(layer)]
            n_out[layer - 1] = n_in[layer - 1] if published_placement and layer in layers else n
        total = patch
        for a, b in zip(n_in, n_out, strict=True):
            attn_terms = literal_block_terms(dim, mlp_dim, a)
            mlp_terms = literal_block_terms(dim, mlp_dim, b)
            total = total + (sum(attn_terms[t] for t in ("kqv", "attn", "attnv", "attnout"))
                             + mlp_terms["fc1"] + mlp_terms["fc2"]) / 1e9
        return total

    flops = torch.stack([flops_per_sample(counts[i]) for i in range(3)])
    literal = literal_budget_loss(flops, dense)
    torch.testing.assert_close(ours, literal, rtol=1e-6, atol=1e-6)
    (g_ours,) = torch.autograd.grad(ours, counts)
    (g_literal,) = torch.autograd.grad(literal, counts)
    torch.testing.assert_close(g_ours, g_literal, rtol=1e-5, atol=1e-8)
    # The published placement counts a pruning layer's MLP at the tokens before the decision: the only difference.
    published = torch.stack([flops_per_sample(counts[i], published_placement=True) for i in range(3)])
    before = torch.cat([torch.full((3, 1), 785.0), counts[:, :-1]], dim=1)  # tokens before each stage
    gap = sum(2 * dim * mlp_dim * (before[:, s] - counts[:, s]) / 1e9 for s in range(3))
    torch.testing.assert_close(published - flops, gap, rtol=1e-6, atol=1e-6)


def test_calibration_meets_the_flops_budget():
    budget = _vit_b_budget()
    rate = budget.stage_rate(0.7)
    counts = [1 + 784 * rate ** s for s in (1, 2, 3)]
    assert budget.total(counts) == pytest.approx(0.7 * budget.dense, rel=1e-9)
    assert 0.7 < rate < 0.8  # the later layers cost less: each stage keeps more than 0.7


# -- inference ----------------------------------------------------------------------------------------------------
def test_inference_keeps_each_samples_own_tokens_on_hand_built_scores():
    batch, heads, n, theta = 2, 2, 6, 0.1
    scores = torch.tensor([[0.3, 0.05, 0.2, 0.15, 0.12, 0.4], [0.01, 0.5, 0.02, 0.03, 0.04, 0.05]])
    rows = F.pad(scores, (1, 0), value=0.5)[:, None].expand(-1, heads, -1)
    info = AttnInfo(rows=rows, keys=None, head_norms=torch.ones(batch, heads, 1 + n))
    pruner = _pruner(n, threshold=theta).eval()
    x = torch.arange(batch * (1 + n), dtype=torch.float32).reshape(batch, 1 + n, 1).expand(-1, -1, 8)
    out, state = pruner(x, _state(batch, n), info)
    counts = []
    for b in range(batch):
        alone = literal_inference_batch1(pruner.scores(info)[b : b + 1], pruner.threshold.detach())
        ids = state.ids[b]
        assert ids[ids >= 0].tolist() == alone.tolist()  # the published batch-1 rule, sample by sample
        torch.testing.assert_close(out[b, 1 : 1 + len(alone)], x[b, 1 + alone])
        counts.append(len(alone))
    assert counts == [5, 1]
    assert torch.isinf(state.key_bias[1, 1:]).all() and (state.key_bias[0] == 0).all()  # padding masked
    # The published batch rule would give both samples (5 + 1) // 2 = 3 tokens: sample 1 would keep two tokens
    # below its threshold because sample 0 is in its batch.
    assert literal_inference_batched(scores, theta).shape[1] == 3


def test_a_clips_prediction_does_not_depend_on_its_batch():
    torch.manual_seed(0)
    model = create_model("vit_tiny_test", method="asvit").eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(3.0)  # peaked attention, as a pre-trained backbone has
    clips = tiny_clip(batch=3)
    calibrate(model, clips)
    with torch.no_grad():
        batched = model(clips)
        alone = torch.cat([model(clip[None]) for clip in clips])
        _, kept = model.forward_features(clips, return_token_ids=True)
    counts = [(k >= 0).sum(dim=1).tolist() for k in kept]
    assert len(set(counts[-1])) > 1  # the clips keep different numbers of tokens
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)


# -- the whole training forward -----------------------------------------------------------------------------------
def literal_asvit_forward(model, x):
    """The published VisionTransformerDiffPruning.forward in training (non-distillation path) on video_st's
    weights: the N x N map with softmax_with_policy in every block, the decision before the block after each
    pruning layer from that layer's score, over all tokens (not cumulative), the policy kept until the next one;
    every token runs every MLP. Returns the logits and the policy sums (tokens per stage, [CLS] included)."""
    layers = model.spec.options["sparse_layers"]
    thresholds = [b.reducer.threshold for b in model.reducing_blocks]
    h = model._pos_embed(model.patch_embed(x))
    batch, tokens = h.shape[:2]
    policy, score, counts = torch.ones(batch, tokens), None, []
    for layer, block in enumerate(model.blocks, start=1):
        if layer - 1 in layers:
            keep = literal_keep(score, thresholds[len(counts)])
            policy = torch.cat([torch.ones(batch, 1), keep], dim=1)
            counts.append(policy.sum(dim=1))
        attn_out, a, o = _literal_attention(block.attn, block.norm1(h), policy)
        h = h + attn_out
        score = literal_score(a, o)
        h = h + block.mlp(block.norm2(h)) + block.adapter.delta(h)
    return model.forward_head(model.norm(h)), counts


def test_training_forward_equals_the_literal_published_model():
    torch.manual_seed(0)
    model = create_model("vit_tiny_test", method="asvit", sparse_layers=(1, 2, 3))
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(3.0)
            block.adapter.up.weight.normal_(std=0.2)
    clip = tiny_clip()
    calibrate(model, clip)
    model.train()
    logits, terms = model(clip, return_terms=True)
    literal, counts = literal_asvit_forward(model, clip)
    torch.testing.assert_close(logits, literal, rtol=1e-4, atol=1e-5)
    assert all(0 < float(c.detach().min()) and float(c.detach().max()) < 33 for c in counts)  # every stage prunes
    budget = model.reducing_blocks[0].reducer.budget
    expected = 2.0 * (budget.total(counts).mean() - 0.7 * budget.dense).abs()
    torch.testing.assert_close(terms.losses["budget"], expected, rtol=1e-5, atol=1e-8)
    # and the thresholds learn from it: the straight-through gradient of the budget reaches every stage
    terms.losses["budget"].backward()
    assert all(float(b.reducer.threshold.grad.abs()) > 0 for b in model.reducing_blocks)
