"""mla_moe.py: the generic model checks, Multi-head Latent Attention against references written
here, the latent cache, gradient checkpointing, multi-token prediction and the V3 MoE defaults."""
import math

import torch
import torch.nn.functional as F

import mla_moe
from model_checks import (check_cached_logits_match, check_causality, check_every_parameter_gets_gradient,
                          check_kv_cache_matches_recompute, check_overfits_one_batch)

VOCAB = 50
# layer 0 dense, layer 1 MoE: 8 routed experts of 16 hidden units (4 split in 2), 2 chosen, one shared of 32
TINY = dict(block_size=16, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32, kv_lora_rank=12, qk_nope_head_dim=8,
            qk_rope_head_dim=4, v_head_dim=6, mlp_hidden=48, multiple_of=16, n_routed_experts=4)


def tiny(**kw):
    torch.manual_seed(0)
    return mla_moe.MLAMoE(mla_moe.MLAMoEConfig(**{**TINY, **kw}))


def test_every_parameter_gets_gradient():
    check_every_parameter_gets_gradient(tiny(q_lora_rank=10, mtp=True), VOCAB)


def test_causality():
    check_causality(tiny(), VOCAB)
    check_causality(tiny(q_lora_rank=10), VOCAB)


def test_kv_cache_greedy_equals_recompute_past_the_context():
    check_kv_cache_matches_recompute(tiny(), VOCAB, prompt_len=5, new_tokens=25)  # 30 > block_size 16


def test_cached_logits_equal_full_forward():
    check_cached_logits_match(tiny(q_lora_rank=10), VOCAB)


def test_overfits_one_batch():
    check_overfits_one_batch(tiny(n_layer=1, first_dense_layers=0), VOCAB)  # one MLA + MoE block


def reference_mla(attn, h):
    """DeepSeek-V2 eqs. (9)-(19) head by head, position by position, with plain tensor ops."""
    B, T, C = h.shape
    nh, dn, dr, dv = attn.n_head, attn.nope_dim, attn.rope_dim, attn.v_dim
    c_q = attn.q_norm(h @ attn.q_down.weight.T) if hasattr(attn, "q_down") else h
    c_kv = attn.kv_norm(h @ attn.kv_down.weight.T)  # (9)
    k_rope = h @ attn.k_rope.weight.T  # W^KR h, before RoPE
    q_rope = (c_q @ attn.q_rope.weight.T).view(B, T, nh, dr)
    q_nope = (c_q @ attn.q_up.weight.T).view(B, T, nh, dn)  # (13)
    k_nope = (c_kv @ attn.k_up.weight.T).view(B, T, nh, dn)  # (10)
    v = (c_kv @ attn.v_up.weight.T).view(B, T, nh, dv)  # (11)

    def rope(x, pos):  # rotate the channel pairs (i, i + d/2) by pos * 10000^(-2i/d), as written out in RoFormer
        d = x.size(-1)
        out = x.clone()
        for i in range(d // 2):
            angle = torch.tensor(pos * 10000.0 ** (-2 * i / d))
            out[i] = x[i] * angle.cos() - x[i + d // 2] * angle.sin()
            out[i + d // 2] = x[i] * angle.sin() + x[i + d // 2] * angle.cos()
        return out

    out = torch.zeros(B, T, nh * dv)
    for b in range(B):
        for head in range(nh):
            for t in range(T):
                q = torch.cat([q_nope[b, t, head], rope(q_rope[b, t, head], t)])  # (14), (16)
                scores = torch.stack([q @ torch.cat([k_nope[b, s, head], rope(k_rope[b, s], s)])  # (15), (17)
                                      for s in range(t + 1)]) / math.sqrt(dn + dr)
                out[b, t, head * dv:(head + 1) * dv] = F.softmax(scores, dim=0) @ v[b, :t + 1, head]  # (18)
    return out @ attn.c_proj.weight.T  # (19)


def test_expanded_and_absorbed_attention_equal_the_equations_on_random_weights():
    for q_lora_rank in (0, 10):
        torch.manual_seed(1)
        attn = tiny(q_lora_rank=q_lora_rank).h[0].attn
        for p in attn.parameters():  # random weights, not the init's: norms and all projections matter
            p.data.normal_(0.0, 0.5)
        h = torch.randn(2, 9, 32)
        expected = reference_mla(attn, h)
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


def test_cache_table_default_config_is_at_most_a_quarter_of_mha():
    table = mla_moe.cache_size_table(mla_moe.MLAMoEConfig())
    mha = next(line for line in table.splitlines() if line.startswith("MHA")).split()
    mla = next(line for line in table.splitlines() if line.startswith("MLA")).split()
    assert int(mha[1]) == 2 * 768 and int(mla[-4]) == 256 + 32
    assert float(mla[-1]) <= 0.25


def test_checkpointed_blocks_give_identical_gradients_stats_and_bias_steps():
    grads, stats, biases = [], [], []
    for flag in (False, True):
        model = tiny(grad_checkpointing=flag, mtp=True)
        model.train()
        torch.manual_seed(3)
        idx, targets = torch.randint(0, VOCAB, (2, 16)), torch.randint(0, VOCAB, (2, 16))
        _, loss = model(idx, targets)
        loss.backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
        stats.append(model.moe_stats())
        model.update_balance_bias()
        biases.append(model.h[1].mlp.router.bias.clone())
    assert stats[0] == stats[1] and torch.equal(biases[0], biases[1]) and biases[0].abs().sum() > 0
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.equal(grads[0][name], grads[1][name]), name


def test_mtp_term_appears_only_when_enabled():
    idx, targets = torch.randint(0, VOCAB, (2, 16)), torch.randint(0, VOCAB, (2, 16))
    plain = tiny()
    _, loss = plain(idx, targets)
    assert "mtp_loss" not in plain.moe_stats() and plain.mtp is None
    assert not any(name.startswith("mtp.") for name in plain.state_dict())
    model = tiny(mtp=True, mtp_weight=0.5)
    model.load_state_dict(plain.state_dict(), strict=False)  # the same main model, plus the MTP module
    logits, loss_mtp = model(idx, targets)
    stats = model.moe_stats()
    assert stats["mtp_loss"] > 0
    assert math.isclose(loss_mtp.item(), loss.item() + 0.5 * stats["mtp_loss"], rel_tol=1e-5)
    # the MTP term is the cross-entropy of token i+2 given h_i and token i+1, written out here
    with torch.no_grad():
        h = model.wte(idx)
        for block in model.h:
            h = block(h)
        mtp = model.mtp
        x = mtp.proj(torch.cat([mtp.hidden_norm(h[:, :-1]), mtp.embed_norm(model.wte(targets[:, :-1]))], dim=-1))
        logits = model.lm_head(mtp.norm(mtp.block(x)))  # predicts tokens i+2 = targets[:, 1:]
        expected = F.cross_entropy(logits.flatten(0, 1), targets[:, 1:].flatten())
    assert math.isclose(stats["mtp_loss"], expected.item(), rel_tol=1e-5)
    assert torch.equal(model.generate(idx[:, :3], 5, temperature=0), plain.generate(idx[:, :3], 5, temperature=0))


def test_shared_blocks_are_verbatim_copies():
    import inspect

    import modern_gpt
    import moe_gpt
    for name in ("RMSNorm", "RotaryEmbedding", "swiglu_hidden", "SwiGLU"):
        assert inspect.getsource(getattr(mla_moe, name)) == inspect.getsource(getattr(modern_gpt, name)), name
    for name in ("Router", "grouped_mm_dtype", "Experts", "MoE", "sample_next_token", "gpt2_encoding", "Tokenizer",
                 "load_dataset", "cached_bpe_ids", "get_batch"):
        assert inspect.getsource(getattr(mla_moe, name)) == inspect.getsource(getattr(moe_gpt, name)), name


def test_v3_defaults_first_layer_dense_scaled_routing_sequence_loss_and_bias_balancing():
    # route scaling and the sequence-wise loss themselves are tested in test_moe_gpt.py (the same MoE)
    model = tiny(n_layer=3)
    assert isinstance(model.h[0].mlp, mla_moe.SwiGLU)
    assert all(isinstance(b.mlp, mla_moe.MoE) for b in model.h[1:])
    assert model.h[1].mlp.router.gate == "sigmoid" and model.h[1].mlp.shared is not None
    assert model.h[1].mlp.router.scaling == 2.5
    model.train()
    idx, targets = torch.randint(0, VOCAB, (4, 16)), torch.randint(0, VOCAB, (4, 16))
    logits, loss = model(idx, targets)
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    assert torch.allclose(loss, ce + sum(1e-4 * moe.seq_aux_loss for moe in model.moe_layers()))  # V3 eq. 17
    stats = model.moe_stats()
    assert len(stats["expert_load"]) == 2 and len(stats["expert_load"][0]) == 8
    assert math.isclose(sum(stats["expert_load"][0]), 1.0, rel_tol=1e-5)
    assert stats["seq_aux_loss"] > 0 and "mtp_loss" not in stats
    counts = model.h[1].mlp.counts.clone()
    model.update_balance_bias()  # overloaded experts go down by the rate, underloaded ones up
    expected = 1e-3 * torch.sign(counts.mean() - counts)
    assert torch.equal(model.h[1].mlp.router.bias, expected) and model.h[1].mlp.counts is None


def test_bf16_autocast_trains_and_generates():
    model = tiny(q_lora_rank=10, mtp=True)
    idx = torch.randint(0, VOCAB, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(idx, idx)
        loss.backward()
        model.eval()
        out = model.generate(idx[:, :4], 6, temperature=0)
    assert torch.isfinite(loss) and out.shape == (2, 10)


def test_too_long_input_is_a_clear_error():
    import pytest
    with pytest.raises(ValueError, match="longer than block_size"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))
