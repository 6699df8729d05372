"""moe_gpt.py: the generic model checks, the MoE layer against a per-token reference loop,
granularity, balancing, gradients, statistics, and train.py end to end."""

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from cli_checks import run_script
from model_checks import (
    check_cached_logits_match,
    check_causality,
    check_compiled_generate_matches,
    check_every_parameter_gets_gradient,
    check_kv_cache_matches_recompute,
    check_overfits_one_batch,
)

import modern_gpt
import moe_gpt as mm

VOCAB = 50


TINY = {
    "block_size": 16,
    "vocab_size": VOCAB,
    "n_layer": 2,
    "n_head": 4,
    "n_kv_head": 2,
    "n_embd": 32,
    "multiple_of": 16,
    "n_routed_experts": 4,
    "top_k": 1,
    "n_shared_experts": 1,
    "granularity": 2,
    "first_dense_layers": 0,
}


def config(**kw):
    return mm.MoEGPTConfig(**{**TINY, **kw})


def tiny(**kw):
    torch.manual_seed(0)
    return mm.MoEGPT(config(**kw))


def moe_layer(**kw):
    torch.manual_seed(0)
    return mm.MoE(config(**kw))


@pytest.fixture(params=["auto", "loop"])
def dispatch(request, monkeypatch):
    """Run a test with the dispatch the layer picks here (torch's grouped matmul where this PyTorch
    has F.grouped_mm) and with the loop over experts."""
    if request.param == "loop":
        monkeypatch.setattr(mm, "grouped_mm_dtype", lambda *args: None)
    return request.param


def test_grouped_mm_is_used_on_cpu_where_torch_has_it():
    x, w = torch.randn(8, 32), torch.randn(4, 24, 32)
    assert mm.grouped_mm_dtype(x, w) == (torch.float32 if hasattr(F, "grouped_mm") else None)
    assert mm.grouped_mm_dtype(x, torch.randn(4, 6, 32)) is None  # rows of 24 bytes: not a multiple of 16


def test_under_torch_compile_the_layer_breaks_only_at_the_experts_and_equals_eager():
    # the counts keep a static shape (no bincount) and the experts run eagerly: one graph before them, one after
    moe = moe_layer(top_k=2)
    x = torch.randn(2, 8, 32)
    explained = torch._dynamo.explain(moe)(x)
    assert explained.graph_break_count == 1 and "disable" in str(explained.break_reasons[0].reason)
    torch._dynamo.reset()
    assert torch.allclose(torch.compile(moe)(x), moe(x), atol=1e-5)  # inductor's fused kernels round differently


# ----------------------------------------------------------------------------- generic model checks

HEAD_DIM = {"head_dim": 12}  # 4 heads of 12 on a stream of 32


@pytest.mark.parametrize("kw", [{}, {"gate": "sigmoid", "first_dense_layers": 1, "qk_norm": True}, HEAD_DIM])
def test_every_parameter_gets_gradient(kw):
    check_every_parameter_gets_gradient(tiny(**kw), VOCAB)


@pytest.mark.parametrize("kw", [{}, {**HEAD_DIM, "n_kv_head": 1}])
def test_causality(kw):
    check_causality(tiny(**kw), VOCAB)


@pytest.mark.parametrize("kw", [{}, {"capacity_factor": 1.0, "n_kv_head": 1}, HEAD_DIM])  # eval is dropless
def test_kv_cache_greedy_equals_recompute_past_the_context(kw):
    check_kv_cache_matches_recompute(tiny(**kw), VOCAB, prompt_len=5, new_tokens=25)  # 30 > block_size 16


def test_compiled_generate_equals_eager_past_the_context():
    # the expert dispatch (bincount, counts.tolist()) is data-dependent: graph breaks there, so not one graph
    check_compiled_generate_matches(tiny(), VOCAB, prompt_len=5, new_tokens=25, one_graph=False)


@pytest.mark.parametrize("kw", [{}, HEAD_DIM])
def test_cached_logits_equal_full_forward(kw):
    check_cached_logits_match(tiny(**kw), VOCAB)


def test_head_dim_sets_the_attention_and_cache_sizes():
    model = tiny(**HEAD_DIM)
    attn = model.h[0].attn
    assert attn.c_attn.weight.shape == ((4 + 2 * 2) * 12, 32) and attn.c_proj.weight.shape == (32, 4 * 12)
    assert model.new_cache(3)[0].k.shape == (3, 2, 16, 12)
    assert model.flops_per_token(16) == 6 * model.param_counts()["active"] + 12 * 2 * 4 * 12 * 16


def test_overfits_one_batch():
    check_overfits_one_batch(tiny(), VOCAB)


# ----------------------------------------------------------------------------- the MoE layer against a reference


def reference_moe(moe, x, capacity_factor=0.0):
    """The MoE layer written token by token, from the papers' equations: score every expert,
    choose top-k by score + bias, weight by the score (renormalised if asked, also for top-1, then
    times the route scaling), drop an assignment once its expert has `capacity` tokens (tokens in
    order, each token's choices in order), and add the shared experts with weight 1."""
    router, experts, config = moe.router, moe.experts, moe.config
    E, k = moe.n_experts, moe.top_k
    capacity = math.ceil(capacity_factor * x.size(0) * k / E) if capacity_factor else None
    taken = [0] * E
    out = torch.zeros_like(x)
    for t in range(x.size(0)):
        logits = router.weight @ x[t]
        scores = logits.softmax(-1) if config.gate == "softmax" else logits.sigmoid()
        chosen = torch.topk(scores + router.bias, k).indices.tolist()
        weights = [scores[e] for e in chosen]
        if config.renormalize:
            weights = [w / sum(weights) for w in weights]
        weights = [config.routed_scaling_factor * w for w in weights]
        for e, w in zip(chosen, weights):
            if capacity is not None and taken[e] >= capacity:
                continue  # dropped: the token keeps only its residual (and the shared experts)
            taken[e] += 1
            hidden = F.silu(experts.gate[e] @ x[t]) * (experts.up[e] @ x[t])
            out[t] += w * (experts.down[e] @ hidden)
        if moe.shared is not None:
            out[t] += moe.shared(x[t])
    return out


@pytest.mark.parametrize(
    "kw",
    [
        {"gate": "softmax", "top_k": 1, "n_shared_experts": 1},
        {"gate": "softmax", "top_k": 2, "n_shared_experts": 0, "renormalize": False},
        {"gate": "sigmoid", "top_k": 1, "n_shared_experts": 2},
        {"gate": "sigmoid", "top_k": 2, "n_shared_experts": 1},
        {"gate": "softmax", "top_k": 1, "n_shared_experts": 1, "capacity_factor": 0.75},
        {"gate": "sigmoid", "top_k": 2, "n_shared_experts": 1, "capacity_factor": 0.5},
        {"gate": "sigmoid", "top_k": 2, "n_shared_experts": 1, "routed_scaling_factor": 2.5},
        {
            "gate": "softmax",
            "top_k": 1,
            "granularity": 1,
            "n_shared_experts": 1,
        },  # renormalised top-1: weight 1 (Qwen3-MoE)
        {
            "gate": "softmax",
            "top_k": 1,
            "granularity": 1,
            "n_shared_experts": 0,
            "renormalize": False,
        },  # weight = score
        {
            "gate": "sigmoid",
            "top_k": 2,
            "granularity": 1,
            "n_shared_experts": 0,
            "renormalize": False,
            "routed_scaling_factor": 2.0,
        },
    ],
)
def test_moe_layer_equals_per_token_reference(kw, dispatch):
    moe = moe_layer(**kw).train()
    bias = torch.tensor([0.0, 0.3, -0.2, 0.1, 0.0, 0.05, -0.1, 0.2])[: moe.n_experts]
    with torch.no_grad():
        moe.router.bias.copy_(bias)  # used for choosing only
    x = torch.randn(2, 12, 32)
    out = moe(x)
    expected = reference_moe(moe, x.view(24, 32), kw.get("capacity_factor", 0.0)).view(2, 12, 32)
    assert torch.allclose(out, expected, atol=1e-5)
    dropped = moe.stats["dropped"]
    assert (dropped > 0) if "capacity_factor" in kw else (dropped == 0)


def test_capacity_drops_overflow_in_training_only():
    moe = moe_layer(capacity_factor=0.5).train()
    x = torch.randn(4, 16, 32)
    moe(x)
    assert moe.stats["dropped"] >= 0.5  # half the slots there are assignments: at least half are dropped
    moe.eval()
    assert torch.allclose(moe(x), reference_moe(moe, x.view(64, 32)).view(4, 16, 32), atol=1e-5)
    assert moe.stats["dropped"] == 0


def test_each_assignment_runs_its_expert_once():
    # no expert computed for tokens that did not choose it: the experts see N*k rows in all
    moe = moe_layer(top_k=2)
    rows = []
    moe.experts.register_forward_hook(lambda module, args, out: rows.append((args[0].shape[0], out.shape[0])))
    moe(torch.randn(3, 10, 32))
    assert rows == [(30 * 4, 30 * 4)]  # 30 tokens x (top_k 2 x granularity 2)


# ----------------------------------------------------------------------------- granularity, gradients, router


@pytest.mark.parametrize("m", [1, 2, 4])
def test_granularity_keeps_total_and_active_expert_parameters(m):
    base = mm.MoEGPT(config(granularity=1, n_routed_experts=4, top_k=2))
    fine = mm.MoEGPT(config(granularity=m, n_routed_experts=4, top_k=2))
    moe = fine.h[0].mlp
    base_hidden = base.h[0].mlp.experts.down.size(-1)
    assert (moe.n_experts, moe.top_k, moe.experts.down.size(-1)) == (4 * m, 2 * m, base_hidden // m)
    router_growth = 2 * 32 * 4 * (m - 1)  # the only difference: 2 layers' routers gain 4(m - 1) rows of 32
    for kind in ("total", "active"):
        assert fine.param_counts()[kind] - router_growth == base.param_counts()[kind]


def test_active_parameters_match_the_dense_model():
    # moe_hidden 0: the shared expert and the chosen experts hold as many hidden units as the dense SwiGLU
    moe = mm.MoEGPT(mm.MoEGPTConfig(**mm.PRESETS["cpu"], vocab_size=65)).param_counts()
    dense = modern_gpt.ModernGPT(modern_gpt.ModernGPTConfig(**modern_gpt.PRESETS["cpu"], vocab_size=65)).param_counts()
    routers = 4 * 16 * 128
    assert moe["active"] - routers == dense["active"]
    assert moe["total"] > 3 * dense["total"]


@pytest.mark.parametrize(
    "kw",
    [
        # top-1 left unrenormalised: its weight is the softmax over all experts, not a constant 1
        {"gate": "softmax", "top_k": 1, "granularity": 1, "renormalize": False},
        {"gate": "softmax", "top_k": 2, "granularity": 1},
        {"gate": "softmax", "top_k": 1, "granularity": 2},
        {"gate": "sigmoid", "top_k": 1, "granularity": 1, "renormalize": False},
        {"gate": "sigmoid", "top_k": 2, "granularity": 2, "n_shared_experts": 0},
    ],
)
def test_router_and_every_chosen_expert_get_gradient_from_the_lm_loss(kw):
    model = tiny(aux_loss_weight=0.0, z_loss_weight=0.0, **kw).train()  # no auxiliary terms: LM loss only
    idx = torch.randint(0, VOCAB, (2, 16))
    _, loss = model(idx, torch.randint(0, VOCAB, (2, 16)))
    loss.backward()
    for moe in model.moe_layers():
        assert moe.router.weight.grad.abs().sum() > 0
        load = moe.stats["load"]
        for e in range(moe.n_experts):
            grads = [w.grad[e].abs().sum() for w in (moe.experts.gate, moe.experts.up, moe.experts.down)]
            assert all(g > 0 for g in grads) == (load[e] > 0), f"expert {e}: load {load[e]}, gradients {grads}"


def test_renormalised_top_1_weighs_every_token_1_so_the_lm_loss_does_not_train_the_router():
    # Qwen3-MoE's norm_topk_prob with one expert per token: the router learns from the balancing losses only
    model = tiny(aux_loss_weight=0.0, z_loss_weight=0.0, top_k=1, granularity=1, renormalize=True).train()
    _, loss = model(torch.randint(0, VOCAB, (2, 16)), torch.randint(0, VOCAB, (2, 16)))
    loss.backward()
    for moe in model.moe_layers():
        assert moe.router.weight.grad.abs().max() < 1e-6


def test_router_runs_in_float32_under_autocast():
    router = moe_layer().router
    x = torch.randn(10, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, weights, logits, _ = router(x)
    assert logits.dtype == weights.dtype == torch.float32
    assert torch.allclose(logits, x @ router.weight.T, atol=1e-5)


def test_router_noise_only_in_training():
    moe = moe_layer(router_noise=0.5)
    x = torch.randn(64, 32)
    moe.train()
    assert not torch.equal(moe.router(x)[2], moe.router(x)[2])
    moe.eval()
    assert torch.allclose(moe.router(x)[2], x @ moe.router.weight.T, atol=1e-6)


def test_bias_changes_the_choice_not_the_weight():
    for renormalize in (False, True):
        moe = moe_layer(top_k=1, granularity=1, renormalize=renormalize)
        x = torch.randn(20, 32)
        with torch.no_grad():
            moe.router.bias.copy_(torch.tensor([10.0, 0.0, 0.0, 0.0]))
        experts, weights, _, scores = moe.router(x)
        assert (experts == 0).all()
        # the weight is the unbiased score; renormalised over one chosen expert it is 1 (Qwen3-MoE's norm_topk_prob)
        assert torch.equal(weights[:, 0], torch.ones(20) if renormalize else scores[:, 0])
        assert scores[:, 0].max() < 0.9  # so neither weight is the biased score, nor 1 by accident


# ----------------------------------------------------------------------------- balancing


@pytest.mark.parametrize("gate", ["softmax", "sigmoid"])
def test_balancing_loss_is_minimal_for_uniform_routing(gate):
    moe = moe_layer(gate=gate, granularity=1, top_k=1, n_routed_experts=4)
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(4, 32) * 20)
    uniform = torch.eye(4, 32).repeat(8, 1).view(2, 16, 32)  # token t points at expert t % 4
    moe(uniform)
    assert moe.stats["load"].tolist() == [0.25] * 4
    assert math.isclose(moe.aux_loss.item(), 1.0, rel_tol=1e-5)  # N * sum_i (1/N)(1/N)
    skewed = torch.eye(4, 32)[0].repeat(32, 1).view(2, 16, 32)  # every token points at expert 0
    moe(skewed)
    assert moe.aux_loss.item() > 1.5  # 4 P_0: ~4 for softmax, 1.6 for these sigmoid scores (1 vs 0.5 each)


def test_z_loss_is_mean_squared_logsumexp():
    moe = moe_layer()
    x = torch.randn(1, 8, 32)
    moe(x)
    logits = x[0] @ moe.router.weight.T
    assert torch.allclose(moe.z_loss, torch.logsumexp(logits, -1).pow(2).mean())


def reference_seq_aux_loss(moe, x):
    """DeepSeek-V3 eqs. 17-20 one sequence at a time, token by token, averaged over sequences."""
    E, k, T = moe.n_experts, moe.top_k, x.size(1)
    total = 0.0
    for seq in x:
        f, p = torch.zeros(E), torch.zeros(E)
        for logits in seq @ moe.router.weight.T:
            s = logits.softmax(-1) if moe.config.gate == "softmax" else logits.sigmoid()  # eq. 15
            for i in torch.topk(s + moe.router.bias, k).indices:
                f[i] += E / (k * T)  # eq. 18
            p += s / s.sum() / T  # eqs. 19, 20
        total += (f * p).sum().item()  # eq. 17
    return total / len(x)


@pytest.mark.parametrize("gate", ["softmax", "sigmoid"])
def test_sequence_wise_balance_loss_equals_per_sequence_reference(gate):
    moe = moe_layer(gate=gate, top_k=2, seq_aux_loss_weight=1e-4)
    with torch.no_grad():
        moe.router.bias.copy_(torch.linspace(-0.2, 0.2, 8))
    x = torch.randn(3, 10, 32)
    moe(x)
    assert math.isclose(moe.seq_aux_loss.item(), reference_seq_aux_loss(moe, x), rel_tol=1e-5)
    assert moe.stats["seq_aux_loss"] == moe.seq_aux_loss.detach()
    moe.seq_aux_loss.backward()
    assert moe.router.weight.grad.abs().sum() > 0  # it trains the router through P_i


def test_sequence_wise_loss_is_weighted_into_training_loss_and_off_by_default():
    idx, targets = torch.randint(0, VOCAB, (2, 16)), torch.randint(0, VOCAB, (2, 16))
    model = tiny(seq_aux_loss_weight=0.5).train()
    logits, loss = model(idx, targets)
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    c = model.config
    expected = ce + sum(
        c.aux_loss_weight * m.aux_loss + c.z_loss_weight * m.z_loss + 0.5 * m.seq_aux_loss for m in model.moe_layers()
    )
    assert torch.allclose(loss, expected)
    assert all(m.stats["seq_aux_loss"] == m.seq_aux_loss for m in model.moe_layers())
    model = tiny().train()
    model(idx, targets)
    assert not any("seq_aux_loss" in m.stats or hasattr(m, "seq_aux_loss") for m in model.moe_layers())


def test_route_scaling_multiplies_the_routed_experts_only():
    x = torch.randn(2, 8, 32)
    plain, scaled = moe_layer(n_shared_experts=0), moe_layer(n_shared_experts=0, routed_scaling_factor=2.5)
    assert torch.allclose(scaled(x), 2.5 * plain(x), atol=1e-6)
    assert torch.equal(scaled.stats["load"], plain.stats["load"])  # the same choices


def test_bias_update_reduces_imbalance_of_a_skewed_router():
    model = tiny(bias_update_rate=0.01, granularity=1, top_k=1, n_routed_experts=4, aux_loss_weight=0.0)
    moe = model.h[0].mlp
    torch.manual_seed(1)
    direction = F.normalize(torch.randn(32), dim=0)
    with torch.no_grad():
        moe.router.weight[0] += 0.5 * direction  # expert 0 attracts most tokens
    x = torch.randn(4, 16, 32) + 2 * direction
    imbalance = []  # the busiest expert's load over the mean load: 1 = uniform, 4 = one expert takes all
    for _ in range(100):
        with torch.no_grad():
            moe(x)  # a training-mode pass counts assignments
        imbalance.append(max(moe.stats["load"].tolist()) * moe.n_experts)
        for layer in model.moe_layers():  # one fixed-size step per "optimizer step", as train.py does
            layer.update_bias()
    assert moe.counts is None
    assert imbalance[0] > 3.5
    assert sum(imbalance[-20:]) / 20 < 1.6  # a sign step oscillates around balance, close to it
    assert moe.router.bias[0] < 0 < moe.router.bias[1:].min()  # the overloaded expert's bias went down


def test_balance_bias_ignores_eval_passes_and_is_off_at_rate_zero():
    model = tiny(bias_update_rate=0.1).eval()
    model(torch.randint(0, VOCAB, (2, 8)))
    for moe in model.moe_layers():
        moe.update_bias()
    assert all(moe.router.bias.abs().sum() == 0 for moe in model.moe_layers())
    model = tiny(bias_update_rate=0.0).train()
    model(torch.randint(0, VOCAB, (2, 8)))
    for moe in model.moe_layers():
        moe.update_bias()
    assert all(moe.router.bias.abs().sum() == 0 for moe in model.moe_layers())
    model = tiny(bias_update_rate=0.1).train()  # the control: a training pass does move it
    model(torch.randint(0, VOCAB, (2, 8)))
    for moe in model.moe_layers():
        moe.update_bias()
    assert all(moe.router.bias.abs().sum() > 0 and moe.counts is None for moe in model.moe_layers())


def test_training_loss_adds_weighted_auxiliary_terms_eval_loss_does_not():
    model = tiny(aux_loss_weight=0.1, z_loss_weight=0.01, first_dense_layers=1)
    idx, targets = torch.randint(0, VOCAB, (2, 16)), torch.randint(0, VOCAB, (2, 16))
    model.train()
    logits, loss = model(idx, targets)
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    moe = model.h[1].mlp
    assert model.moe_layers() == [moe]
    assert torch.allclose(moe.weighted_loss, 0.1 * moe.aux_loss + 0.01 * moe.z_loss)
    assert torch.allclose(loss, ce + moe.weighted_loss) and moe.weighted_loss > 0.1 * 0.9
    model.eval()
    logits, loss = model(idx, targets)
    assert torch.allclose(loss, F.cross_entropy(logits.flatten(0, 1), targets.flatten()))


def test_moe_stats_for_train_py():
    # train.py aggregates each layer's stats (model.moe_layers()) into its log line and JSONL record
    model = tiny(capacity_factor=0.5).train()
    model(torch.randint(0, VOCAB, (2, 16)))
    assert len(model.moe_layers()) == 2
    for moe in model.moe_layers():
        stats = moe.stats
        assert set(stats) == {"load", "dropped", "aux_loss", "z_loss"}
        assert stats["load"].shape == (8,) and math.isclose(stats["load"].sum().item(), 1.0, rel_tol=1e-6)
        assert isinstance(stats["dropped"], float) and 0 < stats["dropped"] < 1
        assert not stats["aux_loss"].requires_grad and stats["aux_loss"] == moe.aux_loss
        assert not stats["z_loss"].requires_grad and stats["z_loss"] == moe.z_loss
        json.dumps({name: value.tolist() if torch.is_tensor(value) else value for name, value in stats.items()})


def test_flops_per_token_counts_active_parameters():
    model = tiny()
    n = model.param_counts()["active"]
    assert n < model.param_counts()["total"]
    assert model.flops_per_token(16) == 6 * n + 12 * 2 * 32 * 16


def test_bad_config_gets_a_clear_error():
    with pytest.raises(ValueError, match="granularity 5 must divide the expert size 48"):
        tiny(granularity=5)
    with pytest.raises(ValueError, match="top_k be 1 to n_routed_experts"):
        tiny(top_k=5)
    with pytest.raises(ValueError, match="unknown gate"):
        tiny(gate="relu")


# ----------------------------------------------------------------------------- train.py


def test_train_py_end_to_end_logs_expert_load_and_updates_the_bias(tmp_path):
    out = str(tmp_path / "run")
    args = [
        "--model_type",
        "moegpt",
        "--tokenizer",
        "char",
        "--B",
        "4",
        "--T",
        "16",
        "--n_layer",
        "2",
        "--n_head",
        "2",
        "--n_kv_head",
        "1",
        "--n_embd",
        "32",
        "--max_steps",
        "4",
        "--eval_interval",
        "4",
        "--eval_iters",
        "2",
        "--sample_tokens",
        "8",
        "--device",
        "cpu",
        "--out_dir",
        out,
        "--bias_update_rate",
        "0.01",
        "--capacity_factor",
        "1.0",
        "--first_dense_layers",
        "1",
        "--log_interval",
        "1",
    ]
    result = run_script("train.py", *args)
    assert result.returncode == 0, result.stderr
    assert "moe: aux_loss" not in result.stdout  # the MoE line comes every 10 printed steps
    assert "val loss" in result.stdout
    with open(os.path.join(out, "log.jsonl")) as f:
        steps = [r for r in map(json.loads, f) if "loss" in r]
    assert len(steps) == 4 and len(steps[-1]["expert_load"]) == 1 and len(steps[-1]["expert_load"][0]) == 16
    assert os.path.getsize(os.path.join(out, "expert_load.png")) > 1000
    model, _tokenizer, _ = mm.load_checkpoint(os.path.join(out, "ckpt.pt"))
    assert steps[-1]["dropped"] > 0 and steps[-1]["aux_loss"] > 0
    assert model.h[1].mlp.router.bias.abs().sum() > 0  # the balancing bias is saved with the weights
    sample = run_script(
        "moe_gpt.py",
        "--ckpt",
        os.path.join(out, "ckpt.pt"),
        "--prompt",
        "ROMEO:",
        "--max_new_tokens",
        "10",
        "--device",
        "cpu",
    )
    assert sample.returncode == 0, sample.stderr
    assert "ROMEO:" in sample.stdout and "parameters" in sample.stdout


def test_size_and_norm_fields_reach_the_layers_they_name():
    # as a loaded checkpoint sets them: an exact intermediate size (multiple_of 1), its own theta and epsilon
    model = tiny(mlp_hidden=40, multiple_of=1, rope_theta=500.0, norm_eps=1e-3, first_dense_layers=2)
    block = model.h[0]
    assert block.mlp.gate.weight.shape == (40, 32)
    assert torch.allclose(block.attn.rotary.cos[1], torch.cos(500.0 ** (-torch.arange(0, 8, 2) / 8)))
    assert block.norm_1.eps == block.norm_2.eps == model.norm_f.eps == 1e-3
