"""mla_moe.py: the generic model checks, Multi-head Latent Attention against references written here, the
latent cache, YaRN against transformers, DeepSeek's MoE against a per-token reference loop (group-limited
routing included), multi-token prediction and the V3 defaults."""

import math

import pytest
import torch
import torch.nn.functional as F
from model_checks import (
    check_cached_logits_match,
    check_causality,
    check_compiled_generate_matches,
    check_every_parameter_gets_gradient,
    check_kv_cache_matches_recompute,
    check_overfits_one_batch,
)

import mla_moe

VOCAB = 50
# layer 0 dense (SwiGLU 48), layer 1 MoE: 2 of 4 routed experts of 16 hidden units, 2 shared ones (one SwiGLU 32)
TINY = {
    "block_size": 16,
    "vocab_size": VOCAB,
    "n_layer": 2,
    "n_head": 2,
    "n_embd": 32,
    "kv_lora_rank": 12,
    "qk_nope_head_dim": 8,
    "qk_rope_head_dim": 4,
    "v_head_dim": 6,
    "mlp_hidden": 48,
    "moe_hidden": 16,
    "n_routed_experts": 4,
}
YARN = {"rope_scaling_factor": 4.0, "rope_original_len": 8, "rope_mscale": 1.0}  # 4x the 8 positions "pretrained"
GROUPS = {
    "n_routed_experts": 8,
    "n_group": 4,
    "topk_group": 2,
    "top_k": 3,
}  # 3 experts from the 2 best of 4 groups of 2


def config(**kw):
    return mla_moe.MLAMoEConfig(**{**TINY, **kw})


def tiny(**kw):
    torch.manual_seed(0)
    return mla_moe.MLAMoE(config(**kw))


# ----------------------------------------------------------------------------- generic model checks


@pytest.mark.parametrize("kw", [{"q_lora_rank": 10, "mtp_weight": 0.3}, dict(gate="softmax", **GROUPS, **YARN)])
def test_every_parameter_gets_gradient(kw):
    check_every_parameter_gets_gradient(tiny(**kw), VOCAB)


@pytest.mark.parametrize("kw", [{}, {"q_lora_rank": 10}, YARN])
def test_causality(kw):
    check_causality(tiny(**kw), VOCAB)


@pytest.mark.parametrize("kw", [{}, dict(q_lora_rank=10, **YARN, **GROUPS)])
def test_kv_cache_greedy_equals_recompute_past_the_context(kw):
    check_kv_cache_matches_recompute(tiny(**kw), VOCAB, prompt_len=5, new_tokens=25)  # 30 > block_size 16


def test_compiled_generate_equals_eager_past_the_context():
    # the experts run eagerly (torch.compiler.disable): the graph breaks there, so not one graph
    check_compiled_generate_matches(tiny(q_lora_rank=10), VOCAB, prompt_len=5, new_tokens=25, one_graph=False)


@pytest.mark.parametrize("kw", [{"q_lora_rank": 10}, YARN])
def test_cached_logits_equal_full_forward(kw):
    check_cached_logits_match(tiny(**kw), VOCAB)


def test_overfits_one_batch():
    check_overfits_one_batch(tiny(n_layer=1, first_dense_layers=0), VOCAB)  # one MLA + MoE block


# ----------------------------------------------------------------------------- Multi-head Latent Attention


def reference_mla(attn, h, inv_freq=None, scale=None):
    """DeepSeek-V2 eqs. (9)-(19) head by head, position by position, with plain tensor ops. inv_freq: the rotary
    frequencies (default theta 10000's), scale: the softmax scale (default 1 / sqrt(dn + dr))."""
    B, T, _C = h.shape
    nh, dn, dr, dv = attn.n_head, attn.nope_dim, attn.rope_dim, attn.v_dim
    c_q = attn.q_norm(h @ attn.q_down.weight.T) if attn.q_down is not None else h
    c_kv = attn.kv_norm(h @ attn.kv_down.weight.T)  # (9)
    k_rope = h @ attn.k_rope.weight.T  # W^KR h, before RoPE
    q_rope = (c_q @ attn.q_rope.weight.T).view(B, T, nh, dr)
    q_nope = (c_q @ attn.q_up.weight.T).view(B, T, nh, dn)  # (13)
    k_nope = (c_kv @ attn.k_up.weight.T).view(B, T, nh, dn)  # (10)
    v = (c_kv @ attn.v_up.weight.T).view(B, T, nh, dv)  # (11)
    inv_freq = [10000.0 ** (-2 * i / dr) for i in range(dr // 2)] if inv_freq is None else inv_freq.tolist()
    scale = 1 / math.sqrt(dn + dr) if scale is None else scale

    def rope(x, pos):  # rotate the channel pairs (i, i + d/2) by pos * inv_freq[i], as written out in RoFormer
        d = x.size(-1)
        out = x.clone()
        for i in range(d // 2):
            angle = torch.tensor(pos * inv_freq[i])
            out[i] = x[i] * angle.cos() - x[i + d // 2] * angle.sin()
            out[i + d // 2] = x[i] * angle.sin() + x[i + d // 2] * angle.cos()
        return out

    out = torch.zeros(B, T, nh * dv)
    for b in range(B):
        for head in range(nh):
            for t in range(T):
                q = torch.cat([q_nope[b, t, head], rope(q_rope[b, t, head], t)])  # (14), (16)
                scores = (
                    torch.stack(
                        [
                            q @ torch.cat([k_nope[b, s, head], rope(k_rope[b, s], s)])  # (15), (17)
                            for s in range(t + 1)
                        ]
                    )
                    * scale
                )
                out[b, t, head * dv : (head + 1) * dv] = F.softmax(scores, dim=0) @ v[b, : t + 1, head]  # (18)
    return out @ attn.c_proj.weight.T  # (19)


@pytest.mark.parametrize("kw", [{"q_lora_rank": 0}, {"q_lora_rank": 10}, dict(q_lora_rank=10, **YARN)])
def test_expanded_and_absorbed_attention_equal_the_equations_on_random_weights(kw):
    torch.manual_seed(1)
    attn = tiny(**kw).h[0].attn
    assert (attn.q_down is None) == (attn.q_norm is None) == (kw["q_lora_rank"] == 0)
    for p in attn.parameters():  # random weights, not the init's: norms and all projections matter
        p.data.normal_(0.0, 0.5)
    h = torch.randn(2, 9, 32)
    inv_freq, scale = None, None
    if "rope_scaling_factor" in kw:  # YaRN: its frequencies (checked against transformers below), scale by formula
        inv_freq = mla_moe.rope_frequencies(config(**kw), 4)
        scale = (0.1 * math.log(4.0) + 1.0) ** 2 / math.sqrt(8 + 4)
    expected = reference_mla(attn, h, inv_freq, scale)
    with torch.no_grad():
        expanded = attn(h)  # training path: per-head keys and values, then SDPA
        cache = mla_moe.LatentKVCache(2, 16, 12 + 4, h.device, h.dtype)
        absorbed = torch.cat([attn(h[:, :4], cache), attn(h[:, 4:5], cache), attn(h[:, 5:], cache)], dim=1)
    assert torch.allclose(expanded, expected, atol=1e-4), (expanded - expected).abs().max()
    assert torch.allclose(absorbed, expected, atol=1e-4), (absorbed - expected).abs().max()


def test_absorbed_model_logits_equal_naive_expanded_logits():
    model = tiny(q_lora_rank=10)
    torch.manual_seed(2)
    for p in model.parameters():
        p.data.normal_(0.0, 0.2)
    idx = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        expanded, _ = model(idx)
        absorbed, _ = model(idx, cache=model.new_cache(2))
    assert torch.allclose(absorbed, expanded, atol=1e-4)


def test_cache_holds_latent_plus_shared_rope_key_per_token_per_layer():
    model = tiny()
    cache = model.new_cache(3)
    assert len(cache) == 2  # one per layer
    for layer in cache:
        tensors = [v for v in vars(layer).values() if torch.is_tensor(v)]
        per_token = sum(t.numel() for t in tensors) // (3 * 16)
        assert per_token == 12 + 4  # kv_lora_rank + qk_rope_head_dim, whatever n_head
    with torch.no_grad():
        model(torch.randint(0, VOCAB, (3, 5)), cache=cache)
    assert cache[1].pos == 5 and cache[1].latent[:, :5].abs().sum() > 0 and cache[1].latent[:, 5:].abs().sum() == 0


def test_latent_norms_use_their_own_eps():
    attn = tiny(q_lora_rank=10, latent_norm_eps=1e-6, norm_eps=1e-3).h[0].attn
    assert attn.q_norm.eps == attn.kv_norm.eps == 1e-6
    assert tiny(norm_eps=1e-3).h[0].norm_1.eps == 1e-3


# ----------------------------------------------------------------------------- YaRN

YARN_V3 = {
    "factor": 40,
    "original_max_position_embeddings": 4096,
    "beta_fast": 32,
    "beta_slow": 1,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
}  # DeepSeek-V3's rope_scaling


def transformers_deepseek_v3_config(rope_scaling, **kw):
    from transformers import DeepseekV3Config

    return DeepseekV3Config(
        rope_scaling={"type": "yarn", "rope_type": "yarn", **rope_scaling},
        rope_theta=10000.0,
        max_position_embeddings=rope_scaling["factor"] * 4096,
        **kw,
    )


@pytest.mark.parametrize("rope_scaling", [YARN_V3, {**YARN_V3, "factor": 4, "original_max_position_embeddings": 512}])
def test_yarn_frequencies_equal_transformers(rope_scaling):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_config = transformers_deepseek_v3_config(rope_scaling, qk_rope_head_dim=64)
    expected, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](hf_config)
    assert attention_factor == 1.0  # mscale == mscale_all_dim: cos and sin unscaled, the softmax scale carries it
    ours = mla_moe.rope_frequencies(
        config(
            rope_scaling_factor=rope_scaling["factor"],
            rope_mscale=1.0,
            rope_original_len=rope_scaling["original_max_position_embeddings"],
        ),
        64,
    )
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=0)
    ratio = ours / mla_moe.rope_frequencies(config(), 64)  # not vacuous: kept, slowed by the factor, and a ramp
    factor = rope_scaling["factor"]
    assert ratio[0] == 1 and torch.allclose(ratio[-1], torch.tensor(1 / factor))
    assert ((ratio > 1 / factor + 1e-3) & (ratio < 1 - 1e-3)).any()


def test_yarn_softmax_scale_equals_transformers():
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import yarn_apply_mscale

    hf_config = transformers_deepseek_v3_config(YARN_V3, qk_rope_head_dim=64, qk_nope_head_dim=128)
    expected = yarn_apply_mscale(hf_config.rope_parameters, (128 + 64) ** -0.5)
    attn = mla_moe.MultiHeadLatentAttention(
        config(
            qk_rope_head_dim=64, qk_nope_head_dim=128, rope_mscale=1.0, rope_scaling_factor=40, rope_original_len=4096
        )
    )
    assert math.isclose(attn.scale, expected, rel_tol=1e-12)
    assert math.isclose(expected * math.sqrt(192), (0.1 * math.log(40) + 1) ** 2, rel_tol=1e-12)  # 1.874
    plain = 1 / math.sqrt(128 + 64)
    for kw in ({"rope_scaling_factor": 40}, {"rope_mscale": 1.0}):  # mscale 0, or no scaling: the usual scale
        attn = mla_moe.MultiHeadLatentAttention(config(qk_rope_head_dim=64, qk_nope_head_dim=128, **kw))
        assert math.isclose(attn.scale, plain, rel_tol=1e-12)


# ----------------------------------------------------------------------------- DeepSeek's MoE


def moe_layer(**kw):
    torch.manual_seed(0)
    moe = mla_moe.MoE(config(**kw))
    with torch.no_grad():  # scores spread over (0, 1), so choices and weights differ from token to token
        moe.router.weight.normal_(0.0, 0.3)
        moe.router.bias.copy_(torch.linspace(-0.15, 0.15, moe.n_experts)[torch.randperm(moe.n_experts)])
    return moe


@pytest.fixture(params=["grouped", "loop"])
def dispatch(request, monkeypatch):
    """Run a test with each expert dispatch: one F.grouped_mm over the stacked weights (on the CPU, where this
    PyTorch has it; torch < 2.8 has not) and the loop over the expert modules (GPUs, odd sizes)."""
    if request.param == "loop":
        monkeypatch.delattr(F, "grouped_mm", raising=False)
    return request.param


def spy_on_grouped_mm(monkeypatch):
    """From here on, the offs of every F.grouped_mm call (where this PyTorch has it), in a list."""
    calls, grouped_mm = [], getattr(F, "grouped_mm", None)

    def spy(a, b, offs):
        calls.append(offs.tolist())
        return grouped_mm(a, b, offs=offs)

    if grouped_mm is not None:
        monkeypatch.setattr(F, "grouped_mm", spy)
    return calls


def swiglu(mlp, x):
    return mlp.down.weight @ (F.silu(mlp.gate.weight @ x) * (mlp.up.weight @ x))


def reference_moe(moe, x):
    """DeepSeek's MoE token by token (V2 §2.2, V3 §2.1.2): scores s by softmax or sigmoid; with n_group > 1
    only the experts of the topk_group groups whose best s + bias (softmax) or two best s + bias (sigmoid) are
    highest; the top_k of those by s + bias; weights s (not biased), renormalised or not, times the route
    scaling; plus the shared experts with weight 1. Returns the output, each token's experts, and how many
    tokens the groups and the bias changed the choice of."""
    c = moe.config
    E, k = c.n_routed_experts, c.top_k
    out, chosen_experts, by_groups, by_bias = torch.zeros_like(x), [], 0, 0
    for t in range(x.size(0)):
        logits = moe.router.weight @ x[t]
        s = (logits.softmax(-1) if c.gate == "softmax" else logits.sigmoid()).tolist()
        biased = [s[e] + moe.router.bias[e].item() for e in range(E)]
        allowed = list(range(E))
        if c.n_group > 1:
            size = E // c.n_group
            group_scores = []
            for g in range(c.n_group):
                best = sorted(biased[g * size : (g + 1) * size], reverse=True)
                group_scores.append(best[0] if c.gate == "softmax" else best[0] + best[1])
            groups = sorted(range(c.n_group), key=lambda g: -group_scores[g])[: c.topk_group]
            allowed = [e for e in range(E) if e // size in groups]
        chosen = sorted(allowed, key=lambda e: -biased[e])[:k]
        by_groups += set(chosen) != set(sorted(range(E), key=lambda e: -biased[e])[:k])
        by_bias += set(chosen) != set(sorted(allowed, key=lambda e: -s[e])[:k])
        weights = [s[e] for e in chosen]
        if c.renormalize:
            weights = [w / sum(weights) for w in weights]
        for e, w in zip(chosen, weights):
            out[t] += c.routed_scaling_factor * w * swiglu(moe.experts[e], x[t])
        if c.n_shared_experts:
            out[t] += swiglu(moe.shared, x[t])
        chosen_experts.append(sorted(chosen))
    return out, chosen_experts, by_groups, by_bias


@pytest.mark.parametrize(
    "kw",
    [
        {"gate": "softmax", "renormalize": False, "routed_scaling_factor": 1.0},  # DeepSeek-V2-Lite
        {"gate": "softmax", "top_k": 1, "renormalize": True, "n_shared_experts": 1},  # renormalised top-1: weight 1
        {"gate": "sigmoid", "renormalize": True, "routed_scaling_factor": 2.5},  # DeepSeek-V3
        {"gate": "sigmoid", "renormalize": False, "n_shared_experts": 0, "top_k": 3},
        dict(gate="softmax", renormalize=False, routed_scaling_factor=16.0, **GROUPS),  # V2: group by the best score
        dict(gate="sigmoid", renormalize=True, routed_scaling_factor=2.5, n_shared_experts=1, **GROUPS),  # V3: best two
    ],
)
def test_moe_layer_equals_per_token_reference(kw, dispatch):
    moe = moe_layer(**kw)
    x = torch.randn(2, 20, 32)
    with torch.no_grad():
        out = moe(x)
        experts, weights, _scores = moe.router(x.view(40, 32))
        expected, chosen, by_groups, by_bias = reference_moe(moe, x.view(40, 32))
    assert torch.allclose(out, expected.view(2, 20, 32), atol=1e-5), (out - expected.view(2, 20, 32)).abs().max()
    assert experts.sort(dim=1).values.tolist() == chosen
    assert by_bias > 0  # the bias changed some choices (and the weights stayed the unbiased scores)
    assert (by_groups > 0) == ("n_group" in kw)  # the groups changed some choices
    if kw.get("top_k") == 1:  # renormalised over one expert: weight 1, times the route scaling
        assert torch.equal(weights, torch.full((40, 1), moe.config.routed_scaling_factor))


def test_each_expert_runs_on_its_tokens_only(dispatch, monkeypatch):
    moe = moe_layer(**GROUPS)
    rows, ends = [], spy_on_grouped_mm(monkeypatch)  # the grouped matmuls: each expert's rows end at offs
    for expert in moe.experts:
        expert.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    moe(torch.randn(2, 10, 32))
    if dispatch == "grouped" and hasattr(F, "grouped_mm"):
        assert rows == [] and len(ends) == 3 and ends[0] == ends[1] == ends[2]
        rows = torch.tensor(ends[0]).diff(prepend=torch.zeros(1, dtype=torch.int64)).tolist()
    assert sum(rows) == 20 * 3 and rows == moe.stats["load"].mul(60).round().int().tolist()


def test_both_dispatches_give_the_same_outputs_and_gradients(monkeypatch):
    x = torch.randn(2, 10, 32)
    results = []
    for loop in (False, True):
        if loop:
            monkeypatch.delattr(F, "grouped_mm", raising=False)
        moe = moe_layer(**GROUPS)
        moe(x).square().sum().backward()
        results.append([moe(x).detach()] + [p.grad for p in moe.parameters()])
    assert all(g is not None for g in results[0]) and all(g is not None for g in results[1])
    for grouped, looped in zip(*results):  # the same sums in another order: float rounding
        assert torch.allclose(grouped, looped, atol=1e-5, rtol=1e-4)
    assert results[0][0].abs().max() > 0.1 and any(g.abs().max() > 0 for g in results[0][1:])


def test_odd_sizes_loop_over_the_experts_and_compiled_layers_keep_the_grouped_matmul(monkeypatch):
    calls = spy_on_grouped_mm(monkeypatch)
    moe_layer(moe_hidden=6)(torch.randn(1, 4, 32))  # rows of 24 bytes: F.grouped_mm refuses them
    assert calls == []
    moe_layer()(torch.randn(1, 4, 32))  # the CPU in float32 at aligned sizes: the grouped matmul, three times
    assert len(calls) == (3 if hasattr(F, "grouped_mm") else 0)
    # under torch.compile the counts keep a static shape and the experts run eagerly: one graph before, one after
    moe, x = moe_layer(), torch.randn(2, 8, 32)
    explained = torch._dynamo.explain(moe)(x)
    assert explained.graph_break_count == 1 and "disable" in str(explained.break_reasons[0].reason)
    torch._dynamo.reset()
    calls.clear()
    assert torch.allclose(torch.compile(moe)(x), moe(x), atol=1e-5)  # inductor's fused kernels round differently
    assert len(calls) == (6 if hasattr(F, "grouped_mm") else 0)  # compiled and eager: three each


def reference_seq_aux_loss(moe, x):
    """DeepSeek-V3 eqs. 17-20 one sequence at a time, token by token, averaged over sequences."""
    c = moe.config
    E, k, T = c.n_routed_experts, c.top_k, x.size(1)
    total = 0.0
    for seq in x:
        f, p = torch.zeros(E), torch.zeros(E)
        for logits in seq @ moe.router.weight.T:
            s = logits.softmax(-1) if c.gate == "softmax" else logits.sigmoid()  # eq. 15
            for i in torch.topk(s + moe.router.bias, k).indices:
                f[i] += E / (k * T)  # eq. 18
            p += s / s.sum() / T  # eqs. 19, 20
        total += (f * p).sum().item()  # eq. 17
    return total / len(x)


@pytest.mark.parametrize("gate", ["softmax", "sigmoid"])
def test_sequence_wise_balance_loss_equals_per_sequence_reference(gate):
    moe = moe_layer(gate=gate, seq_aux_loss_weight=0.01)
    x = torch.randn(3, 10, 32)
    moe(x)
    assert math.isclose(moe.seq_aux_loss.item(), reference_seq_aux_loss(moe, x), rel_tol=1e-5)
    assert moe.stats["seq_aux_loss"] == moe.seq_aux_loss.detach()
    assert torch.allclose(moe.weighted_loss, 0.01 * moe.seq_aux_loss)
    moe.seq_aux_loss.backward()
    assert moe.router.weight.grad.abs().sum() > 0  # it trains the router through P_i
    off = moe_layer(gate=gate, seq_aux_loss_weight=0.0)
    off(x)
    assert off.weighted_loss == 0 and set(off.stats) == {"load"}


def test_bias_update_steps_against_the_load_in_training_only():
    moe = moe_layer(bias_update_rate=0.01)
    start = moe.router.bias.clone()
    moe.eval()
    moe(torch.randn(2, 8, 32))
    moe.update_bias()
    assert torch.equal(moe.router.bias, start) and moe.counts is None
    moe.train()
    x = torch.randn(2, 8, 32)
    moe(x)
    moe(x)
    counts = moe.counts.clone()
    assert counts.sum() == 2 * 16 * 2  # two passes of 16 tokens, 2 experts each
    moe.update_bias()  # overloaded experts go down by the rate, underloaded ones up
    assert torch.equal(moe.router.bias, start + 0.01 * torch.sign(counts.mean() - counts)) and moe.counts is None


def test_v3_defaults_first_layer_dense_scaled_routing_sequence_loss_and_bias_balancing():
    model = tiny(n_layer=3)
    assert isinstance(model.h[0].mlp, mla_moe.SwiGLU) and model.h[0].mlp.gate.out_features == 48
    assert model.moe_layers() == [model.h[1].mlp, model.h[2].mlp]
    assert all(isinstance(moe, mla_moe.MoE) for moe in model.moe_layers())
    c = model.h[1].mlp.config
    assert (c.gate, c.renormalize, c.routed_scaling_factor, c.top_k, c.n_shared_experts) == ("sigmoid", True, 2.5, 2, 2)
    assert model.h[1].mlp.shared.gate.out_features == 2 * 16
    model.train()
    idx, targets = torch.randint(0, VOCAB, (4, 16)), torch.randint(0, VOCAB, (4, 16))
    logits, loss = model(idx, targets)
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    assert torch.allclose(loss, ce + sum(1e-4 * moe.seq_aux_loss for moe in model.moe_layers()))  # V3 eq. 17
    for moe in model.moe_layers():
        assert moe.stats["load"].shape == (4,) and math.isclose(moe.stats["load"].sum().item(), 1.0, rel_tol=1e-6)
        assert moe.stats["seq_aux_loss"] > 0
    assert model.mtp is None and model.mtp_loss is None
    counts = model.h[1].mlp.counts.clone()
    model.h[1].mlp.update_bias()
    assert torch.equal(model.h[1].mlp.router.bias, 1e-3 * torch.sign(counts.mean() - counts))
    model.eval()
    logits, loss = model(idx, targets)
    assert torch.allclose(loss, F.cross_entropy(logits.flatten(0, 1), targets.flatten()))  # eval: the LM loss only


def test_experts_are_swiglu_modules_and_the_head_is_never_tied():
    model = tiny()
    names = set(model.state_dict())
    for e in range(4):
        for part in ("gate", "up", "down"):
            assert f"h.1.mlp.experts.{e}.{part}.weight" in names
    assert {"h.1.mlp.router.weight", "h.1.mlp.router.bias", "h.1.mlp.shared.gate.weight"} <= names
    assert model.lm_head.weight is not model.wte.weight
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))  # no dropout anywhere


def test_param_counts_and_flops():
    model = tiny(n_layer=3)
    counts = model.param_counts()
    expert = 3 * 32 * 16  # gate, up and down of one routed expert
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["active"] == counts["total"] - 2 * (4 - 2) * expert  # 2 MoE layers, 2 of 4 experts idle
    n_matmul = counts["active"] - VOCAB * 32
    assert model.flops_per_token(16) == 6 * n_matmul + 6 * 3 * 16 * 2 * (8 + 4 + 6)
    with_mtp = tiny(n_layer=3, mtp_weight=0.3)
    n_matmul = with_mtp.param_counts()["active"] - VOCAB * 32
    assert with_mtp.flops_per_token(16) == 6 * n_matmul + 6 * 4 * 16 * 2 * (8 + 4 + 6)


# ----------------------------------------------------------------------------- multi-token prediction


def test_mtp_term_appears_only_when_enabled():
    idx, targets = torch.randint(0, VOCAB, (2, 16)), torch.randint(0, VOCAB, (2, 16))
    plain = tiny()
    _, loss = plain(idx, targets)
    assert plain.mtp is None and plain.mtp_loss is None
    assert not any(name.startswith("mtp.") for name in plain.state_dict())
    model = tiny(mtp_weight=0.5)
    model.load_state_dict(plain.state_dict(), strict=False)  # the same main model, plus the MTP module
    logits, loss_mtp = model(idx, targets)
    assert model.mtp_loss > 0 and not model.mtp_loss.requires_grad
    assert math.isclose(loss_mtp.item(), loss.item() + 0.5 * model.mtp_loss.item(), rel_tol=1e-5)
    # the MTP term is the cross-entropy of token i+2 given h_i and token i+1, written out here
    with torch.no_grad():
        h = model.wte(idx)
        for block in model.h:
            h = block(h)
        mtp = model.mtp
        x = mtp.proj(torch.cat([mtp.hidden_norm(h[:, :-1]), mtp.embed_norm(model.wte(targets[:, :-1]))], dim=-1))
        logits = model.lm_head(mtp.norm(mtp.block(x)))  # predicts tokens i+2 = targets[:, 1:]
        expected = F.cross_entropy(logits.flatten(0, 1), targets[:, 1:].flatten())
    assert math.isclose(model.mtp_loss.item(), expected.item(), rel_tol=1e-5)
    model.eval()
    _, eval_loss = model(idx, targets)
    assert math.isclose(
        eval_loss.item(), F.cross_entropy(model(idx)[0].flatten(0, 1), targets.flatten()).item(), rel_tol=1e-6
    )  # eval: no MTP term
    assert torch.equal(model.generate(idx[:, :3], 5, temperature=0), plain.generate(idx[:, :3], 5, temperature=0))


def test_mtp_ignores_positions_whose_next_or_next_but_one_token_is_ignored():
    model = tiny(mtp_weight=0.5)
    h, targets = torch.randn(2, 8, 32), torch.randint(0, VOCAB, (2, 8))
    targets[0, 3] = targets[1, 7] = -100  # target i masked: no guess of i+1 from h_{i-1}, none of i+2 from h_i
    mtp = model.mtp
    loss = mtp(h, targets, model.wte, model.lm_head)
    with torch.no_grad():  # the guesses of tokens i+2 at every position (a masked token i+1 embedded as id 0)
        x = mtp.proj(
            torch.cat([mtp.hidden_norm(h[:, :-1]), mtp.embed_norm(model.wte(targets[:, :-1].clamp(min=0)))], dim=-1)
        )
        logits = model.lm_head(mtp.norm(mtp.block(x)))  # (2, 7, VOCAB)
    losses = [
        F.cross_entropy(logits[b, i], targets[b, i + 1])
        for b in range(2)
        for i in range(7)
        if targets[b, i] != -100 and targets[b, i + 1] != -100
    ]
    assert len(losses) == 14 - 3 and torch.allclose(loss, sum(losses) / len(losses), atol=1e-6)


# ----------------------------------------------------------------------------- the rest


def test_bf16_autocast_trains_and_generates():
    model = tiny(q_lora_rank=10, mtp_weight=0.3)
    idx = torch.randint(0, VOCAB, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(idx, idx)
        loss.backward()
        model.eval()
        out = model.generate(idx[:, :4], 6, temperature=0)
    assert torch.isfinite(loss) and out.shape == (2, 10)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"top_k": 5}, "top_k must be 1 to n_routed_experts"),
        ({"n_group": 3}, "n_group divide them"),
        ({"n_group": 2, "topk_group": 3}, "topk_group be 1 to n_group"),
        ({"gate": "relu"}, "unknown gate"),
        ({"qk_rope_head_dim": 5}, "must be even"),
    ],
)
def test_bad_config_is_a_clear_error(kw, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kw)


def test_too_long_input_is_a_clear_error():
    with pytest.raises(ValueError, match="longer than block_size"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))
