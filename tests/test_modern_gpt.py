"""modern_gpt.py: the model's invariants, its building blocks against plain references (Llama written out,
transformers' Llama 3 RoPE scaling), head_dim apart from n_embd / n_head, train.py."""

import math
import os

import pytest
import torch
from cli_checks import run_script
from model_checks import (
    check_cached_logits_match,
    check_causality,
    check_compiled_generate_matches,
    check_every_parameter_gets_gradient,
    check_kv_cache_matches_recompute,
    check_overfits_one_batch,
)

import gpt
import modern_gpt as mg

VOCAB = 50


def tiny(**kw):
    torch.manual_seed(0)
    config = {
        "block_size": 16,
        "vocab_size": VOCAB,
        "n_layer": 2,
        "n_head": 4,
        "n_kv_head": 2,
        "n_embd": 32,
        "multiple_of": 16,
    }
    return mg.ModernGPT(mg.ModernGPTConfig(**{**config, **kw}))


HEAD_DIM = {"head_dim": 12}  # 4 heads of 12 on a stream of 32 (Qwen3 sets head_dim apart from n_embd / n_head)
LLAMA3 = {"rope_scaling_factor": 8.0, "rope_original_len": 64}  # wavelengths 6 (kept), 63 (blended), 628, 6283 (slowed)


@pytest.mark.parametrize("kw", [{}, {"qk_norm": True, "tie_embeddings": False}, {**HEAD_DIM, "qk_norm": True}])
def test_every_parameter_gets_gradient(kw):
    check_every_parameter_gets_gradient(tiny(**kw), VOCAB)


@pytest.mark.parametrize(
    "kw",
    [
        {"n_kv_head": 1},
        {"n_kv_head": 2},
        {"n_kv_head": 4},  # multi-query, grouped, MHA
        {"n_kv_head": 2, **HEAD_DIM},
        {"n_kv_head": 1, "head_dim": 4, **LLAMA3},
    ],
)
def test_causality(kw):
    check_causality(tiny(**kw), VOCAB)


@pytest.mark.parametrize(
    "kw",
    [
        {"n_kv_head": 1},
        {"n_kv_head": 2, "qk_norm": True},
        {"n_kv_head": 4},
        {"n_kv_head": 2, **HEAD_DIM, **LLAMA3},
        {"n_kv_head": 4, "head_dim": 4},
    ],
)
def test_kv_cache_greedy_equals_recompute_past_the_context(kw):
    check_kv_cache_matches_recompute(tiny(**kw), VOCAB, prompt_len=5, new_tokens=25)  # 30 > block_size 16


def test_compiled_generate_equals_eager_in_one_graph_past_the_context():
    check_compiled_generate_matches(tiny(qk_norm=True, **LLAMA3), VOCAB, prompt_len=5, new_tokens=25)  # GQA 4 / 2


@pytest.mark.parametrize("kw", [{"n_kv_head": 1}, {"n_kv_head": 2}, {"n_kv_head": 2, **HEAD_DIM}])
def test_cached_logits_equal_full_forward(kw):
    check_cached_logits_match(tiny(**kw), VOCAB)


def test_prefill_after_cached_tokens_equals_full_forward():
    # t > 1 new tokens after cached ones: the explicit-mask path of causal_attention
    model = tiny().eval()
    idx = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache(2)
        first, _ = model(idx[:, :5], cache=cache)
        second, _ = model(idx[:, 5:], cache=cache)
    assert torch.allclose(torch.cat([first, second], dim=1), full, atol=1e-5)


def test_overfits_one_batch():
    check_overfits_one_batch(tiny(), VOCAB)


def test_kv_cache_stores_only_the_kv_heads():
    cache = tiny(n_kv_head=1).new_cache(3)
    assert len(cache) == 2 and cache[0].k.shape == (3, 1, 16, 8)  # (B, n_kv_head, block_size, head_dim)
    assert tiny(n_kv_head=2, **HEAD_DIM).new_cache(3)[1].v.shape == (3, 2, 16, 12)


def test_head_dim_sets_the_projection_sizes():
    attn = tiny(n_kv_head=2, **HEAD_DIM).h[0].attn
    assert attn.head_dim == 12 and attn.c_attn.weight.shape == ((4 + 2 * 2) * 12, 32)
    assert attn.c_proj.weight.shape == (32, 4 * 12) and attn.rotary.cos.shape == (16, 6)
    assert tiny().h[0].attn.head_dim == 8  # 0: n_embd / n_head
    model = tiny(n_kv_head=2, **HEAD_DIM)
    assert model.flops_per_token(16) == 6 * model.param_counts()["active"] + 12 * 2 * 4 * 12 * 16


def test_rmsnorm_matches_its_formula():
    norm = mg.RMSNorm(6, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 7.0))
    x = torch.randn(4, 6)
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5) * torch.arange(1.0, 7.0)
    assert torch.allclose(norm(x), expected, atol=1e-6)


def test_rope_frequencies_are_theta_to_the_minus_2i_over_d():
    inv_freq = mg.rope_frequencies(mg.ModernGPTConfig(rope_theta=100.0), 8)
    assert torch.allclose(inv_freq, torch.tensor([100.0 ** (-2 * i / 8) for i in range(4)]), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="must be even"):
        mg.rope_frequencies(mg.ModernGPTConfig(), 7)


def test_rotary_rotates_each_pair_by_position_times_frequency():
    hd, theta = 8, 100.0
    rope = mg.RotaryEmbedding(mg.rope_frequencies(mg.ModernGPTConfig(rope_theta=theta), hd), max_len=10)
    x = torch.randn(1, 1, 4, hd)
    out = rope(x, start=3)
    for t in range(4):
        for i in range(hd // 2):  # pair (i, i + hd/2) turns by angle p * theta^(-2i/hd)
            angle = torch.tensor((3 + t) * theta ** (-2 * i / hd))
            a, b = x[0, 0, t, i], x[0, 0, t, i + hd // 2]
            assert torch.allclose(out[0, 0, t, i], a * angle.cos() - b * angle.sin(), atol=1e-5)
            assert torch.allclose(out[0, 0, t, i + hd // 2], a * angle.sin() + b * angle.cos(), atol=1e-5)


def test_rotary_scores_depend_only_on_relative_position():
    rope = mg.RotaryEmbedding(mg.rope_frequencies(mg.ModernGPTConfig(), 16), max_len=32)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    scores = [(rope(q, m) * rope(k, m - 3)).sum() for m in (3, 10, 25)]  # query at m, key at m - 3
    assert torch.allclose(torch.stack(scores), scores[0].expand(3), atol=1e-4)


def test_grouped_query_attention_equals_repeated_heads():
    # reference: every query head h attends with key/value head h // (n_head / n_kv_head)
    attn = tiny(n_kv_head=2).h[0].attn
    x = torch.randn(2, 7, 32)
    qkv = attn.c_attn(x)
    q, k, v = qkv.split([32, 16, 16], dim=2)
    q = attn.rotary(q.view(2, 7, 4, 8).transpose(1, 2))
    k = attn.rotary(k.view(2, 7, 2, 8).transpose(1, 2)).repeat_interleave(2, dim=1)
    v = v.view(2, 7, 2, 8).transpose(1, 2).repeat_interleave(2, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    scores = scores.masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 7, 32)
    assert torch.allclose(attn(x), attn.c_proj(y), atol=1e-5)


def reference_llama_logits(state, idx, n_head, n_kv_head, eps=1e-5, qk_norm=False, head_dim=None, inv_freq=None):
    """A Llama-style forward written out as Hugging Face's LlamaModel computes it: RMSNorm, RoPE with
    rotate_half on cos/sin tables of duplicated frequencies, key/value heads repeated for GQA, explicit
    masked softmax, SwiGLU; no modern_gpt.py code. inv_freq: the rotary frequencies (default theta 10000's)."""

    def rms_norm(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    def rotate_half(x):
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    B, T = idx.shape
    x = state["wte.weight"][idx]
    hd = head_dim or x.size(-1) // n_head
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, hd, 2).float() / hd) if inv_freq is None else inv_freq
    freqs = torch.outer(torch.arange(T).float(), inv_freq)
    cos, sin = torch.cat((freqs, freqs), -1).cos(), torch.cat((freqs, freqs), -1).sin()  # (T, hd)
    n_layer = 1 + max(int(name.split(".")[1]) for name in state if name.startswith("h."))
    for i in range(n_layer):
        h = f"h.{i}."
        q, k, v = (rms_norm(x, state[h + "norm_1.weight"]) @ state[h + "attn.c_attn.weight"].T).split(
            [n_head * hd, n_kv_head * hd, n_kv_head * hd], dim=-1
        )
        q = q.view(B, T, n_head, hd).transpose(1, 2)
        k = k.view(B, T, n_kv_head, hd).transpose(1, 2)
        v = v.view(B, T, n_kv_head, hd).transpose(1, 2)
        if qk_norm:
            q, k = rms_norm(q, state[h + "attn.q_norm.weight"]), rms_norm(k, state[h + "attn.k_norm.weight"])
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(n_head // n_kv_head, dim=1), v.repeat_interleave(n_head // n_kv_head, dim=1)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(hd)).masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1)
        x = x + y @ state[h + "attn.c_proj.weight"].T
        a = rms_norm(x, state[h + "norm_2.weight"])
        gated = torch.nn.functional.silu(a @ state[h + "mlp.gate.weight"].T) * (a @ state[h + "mlp.up.weight"].T)
        x = x + gated @ state[h + "mlp.down.weight"].T
    return rms_norm(x, state["norm_f.weight"]) @ state["lm_head.weight"].T


def transformers_llama3_frequencies(head_dim, theta, factor, low, high, original_len):
    """transformers' own Llama 3 RoPE frequencies (modeling_rope_utils), from a LlamaConfig."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(
        head_dim=head_dim,
        num_attention_heads=4,
        hidden_size=4 * head_dim,
        rope_theta=theta,
        max_position_embeddings=int(factor * original_len),
        rope_scaling={
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low,
            "high_freq_factor": high,
            "original_max_position_embeddings": original_len,
        },
    )
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS["llama3"](config)
    assert attention_factor == 1.0  # Llama 3 scales the frequencies only
    return inv_freq


def test_llama3_rope_scaling_equals_transformers():
    # Llama 3.1's numbers: theta 500000, factor 8 (Llama 3.2: 32), low 1, high 4, pretrained at 8192
    for factor in (8.0, 32.0):
        config = mg.ModernGPTConfig(
            rope_theta=500000.0,
            rope_scaling_factor=factor,
            rope_low_freq_factor=1.0,
            rope_high_freq_factor=4.0,
            rope_original_len=8192,
        )
        ours = mg.rope_frequencies(config, 64)
        expected = transformers_llama3_frequencies(64, 500000.0, factor, 1.0, 4.0, 8192)
        torch.testing.assert_close(ours, expected, rtol=1e-6, atol=0)
        ratio = ours / mg.rope_frequencies(mg.ModernGPTConfig(rope_theta=500000.0), 64)
        # not vacuous: high frequencies kept, low ones slowed by the factor, some blended in between
        assert ratio[0] == 1 and torch.allclose(ratio[-1], torch.tensor(1 / factor))
        assert ((ratio > 1 / factor + 1e-3) & (ratio < 1 - 1e-3)).any()


@pytest.mark.parametrize(
    "kw",
    [
        {"n_kv_head": 2},
        {"n_kv_head": 1, "qk_norm": True, "tie_embeddings": False},
        {"n_kv_head": 2, **HEAD_DIM, "qk_norm": True},
        {"n_kv_head": 4, **LLAMA3},
    ],
)
def test_logits_match_llama_written_out(kw):
    model = tiny(**kw).eval()
    with torch.no_grad():  # activations of order 1 and gains away from 1, so every term counts
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.2 * torch.randn_like(p) if "norm" in name else p * 10.0)
    idx = torch.randint(0, VOCAB, (2, 16))
    inv_freq = transformers_llama3_frequencies(8, 10000.0, 8.0, 1.0, 4.0, 64) if "rope_scaling_factor" in kw else None
    expected = reference_llama_logits(
        model.state_dict(),
        idx,
        n_head=4,
        qk_norm=kw.get("qk_norm", False),
        n_kv_head=kw["n_kv_head"],
        head_dim=kw.get("head_dim"),
        inv_freq=inv_freq,
    )
    logits, _ = model(idx)
    assert expected.std() > 1.0
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_qk_norm_normalizes_queries_and_keys():
    attn = tiny(qk_norm=True).h[0].attn
    q = torch.randn(2, 4, 5, 8) * 30
    assert torch.allclose(attn.q_norm(q).pow(2).mean(-1), torch.ones(2, 4, 5), atol=1e-3)


def test_swiglu_matches_its_formula_and_hidden_size_rounds_up():
    assert mg.swiglu_hidden(768, 0, 64) == 2048  # 8/3 * 768 exactly
    assert mg.swiglu_hidden(128, 0, 64) == 384  # 341 rounded up
    assert mg.swiglu_hidden(128, 300, 64) == 320
    mlp = mg.SwiGLU(8, 12)
    x = torch.randn(3, 8)
    a, b = x @ mlp.gate.weight.T, x @ mlp.up.weight.T
    assert torch.allclose(mlp(x), (a * torch.sigmoid(a) * b) @ mlp.down.weight.T, atol=1e-6)


def test_no_biases_and_tied_or_untied_head():
    model = tiny()
    assert not any(name.endswith(".bias") for name, _ in model.named_parameters())
    assert model.lm_head.weight is model.wte.weight
    untied = tiny(tie_embeddings=False)
    assert untied.lm_head.weight is not untied.wte.weight
    extra = untied.param_counts()["total"] - model.param_counts()["total"]
    assert extra == VOCAB * 32


def test_presets_sizes():
    gpt2_like = mg.ModernGPT(mg.ModernGPTConfig(**mg.PRESETS["gpt2"]))
    assert abs(gpt2_like.param_counts()["total"] - 124_439_808) / 124_439_808 < 0.01  # within 1% of GPT-2 small
    cpu = mg.PRESETS["cpu"]
    assert (cpu["n_layer"], cpu["n_head"], cpu["n_embd"], cpu["block_size"]) == (4, 4, 128, 64)
    # the "cpu" blocks hold exactly as many parameters as gpt.py's: only the position table is gone
    modern = mg.ModernGPT(mg.ModernGPTConfig(**cpu, vocab_size=65)).param_counts()["total"]
    dense = gpt.GPT(gpt.GPTConfig(**gpt.PRESETS["cpu"], vocab_size=65)).param_counts()["total"]
    assert dense - modern == 64 * 128


def test_flops_per_token_follows_palm_formula():
    model = tiny()
    n = sum(p.numel() for p in model.parameters())
    assert model.flops_per_token(16) == 6 * n + 12 * 2 * 32 * 16
    untied = tiny(tie_embeddings=False)
    n = sum(p.numel() for p in untied.parameters()) - VOCAB * 32  # the embedding lookup is no matmul
    assert untied.flops_per_token(16) == 6 * n + 12 * 2 * 32 * 16


def test_bad_config_gets_a_clear_error():
    with pytest.raises(ValueError, match="multiple of n_kv_head"):
        tiny(n_kv_head=3)
    with pytest.raises(ValueError, match="longer than block_size"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))


def test_train_py_end_to_end_and_checkpoint_samples(tmp_path):
    out = str(tmp_path / "run")
    args = [
        "--model_type",
        "moderngpt",
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
        "3",
        "--eval_interval",
        "3",
        "--eval_iters",
        "2",
        "--sample_tokens",
        "8",
        "--device",
        "cpu",
        "--out_dir",
        out,
    ]
    result = run_script("train.py", *args)
    assert result.returncode == 0, result.stderr
    assert "step     3/3 | loss" in result.stdout and "val loss" in result.stdout
    model, tokenizer, _ = mg.load_checkpoint(os.path.join(out, "ckpt.pt"))
    assert model.config.n_kv_head == 1 and tokenizer.kind == "char"
    sample = run_script(
        "modern_gpt.py",
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
    assert "ROMEO:" in sample.stdout
    other = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    other["model_type"] = "gpt"
    torch.save(other, tmp_path / "gpt.pt")
    with pytest.raises(ValueError, match="not 'moderngpt'"):
        mg.load_checkpoint(str(tmp_path / "gpt.pt"))


def test_size_and_norm_fields_reach_the_layers_they_name():
    # as a loaded checkpoint sets them: an exact intermediate size (multiple_of 1), its own theta and epsilon
    model = tiny(mlp_hidden=40, multiple_of=1, rope_theta=500.0, norm_eps=1e-3)
    block = model.h[0]
    assert block.mlp.gate.weight.shape == (40, 32)
    assert torch.allclose(block.attn.rotary.cos[1], torch.cos(500.0 ** (-torch.arange(0, 8, 2) / 8)))
    assert block.norm_1.eps == block.norm_2.eps == model.norm_f.eps == 1e-3
