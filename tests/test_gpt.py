"""gpt.py: the model's invariants, sampling, tokenizers and data."""
import math

import numpy as np
import pytest
import torch

import gpt
from model_checks import (check_cached_logits_match, check_causality, check_every_parameter_gets_gradient,
                          check_kv_cache_matches_recompute, check_overfits_one_batch)

VOCAB = 50


def tiny(**kw):
    torch.manual_seed(0)
    return gpt.GPT(gpt.GPTConfig(**{**dict(block_size=16, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32), **kw}))


def test_every_parameter_gets_gradient():
    check_every_parameter_gets_gradient(tiny(), VOCAB)


def test_causality():
    check_causality(tiny(), VOCAB)


def test_kv_cache_greedy_equals_recompute_past_the_context():
    check_kv_cache_matches_recompute(tiny(), VOCAB, prompt_len=5, new_tokens=25)  # 30 > block_size 16


def test_cached_logits_equal_full_forward():
    check_cached_logits_match(tiny(), VOCAB)


def test_overfits_one_batch():
    check_overfits_one_batch(tiny(), VOCAB)


def reference_gpt2_logits(state, idx, n_head, eps=1e-5):
    """GPT-2's forward written out from the paper and OpenAI's code (model.py of gpt-2), with explicit
    softmax attention and the tanh GELU formula: no SDPA, no nn.LayerNorm, no gpt.py code."""
    def layer_norm(x, prefix):
        mean = x.mean(-1, keepdim=True)
        var = (x - mean).pow(2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + eps) * state[prefix + ".weight"] + state[prefix + ".bias"]

    def linear(x, prefix):
        return x @ state[prefix + ".weight"].T + state[prefix + ".bias"]

    B, T = idx.shape
    x = state["wte.weight"][idx] + state["wpe.weight"][:T]
    n_layer = 1 + max(int(name.split(".")[1]) for name in state if name.startswith("h."))
    for i in range(n_layer):
        h = f"h.{i}."
        q, k, v = linear(layer_norm(x, h + "ln_1"), h + "attn.c_attn").chunk(3, dim=-1)
        q, k, v = (t.view(B, T, n_head, -1).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))
        scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1)
        x = x + linear(y, h + "attn.c_proj")
        a = linear(layer_norm(x, h + "ln_2"), h + "mlp.c_fc")
        gelu = 0.5 * a * (1 + torch.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a ** 3)))
        x = x + linear(gelu, h + "mlp.c_proj")
    return layer_norm(x, "ln_f") @ state["wte.weight"].T  # the head is the token embedding


def test_logits_match_gpt2_written_out():
    model = tiny(bias=True).eval()
    with torch.no_grad():  # activations of order 1 and non-zero biases, so every term of the reference counts
        for name, p in model.named_parameters():
            if "ln_" in name:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
            elif name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.1)
            else:
                p.mul_(10.0)
    idx = torch.randint(0, VOCAB, (2, 16))
    expected = reference_gpt2_logits(model.state_dict(), idx, n_head=2)
    logits, _ = model(idx)
    assert expected.std() > 1.0
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_parameter_names_follow_openai_gpt2():
    names = set(tiny(bias=True).state_dict())
    for name in ["wte.weight", "wpe.weight", "h.0.ln_1.weight", "h.0.ln_1.bias", "h.0.attn.c_attn.weight",
                 "h.0.attn.c_attn.bias", "h.0.attn.c_proj.weight", "h.0.ln_2.weight", "h.1.mlp.c_fc.weight",
                 "h.1.mlp.c_proj.bias", "ln_f.weight", "ln_f.bias"]:
        assert name in names, name


def test_gpt2_124m_size_and_tied_head():
    model = gpt.GPT(gpt.GPTConfig(**gpt.PRESETS["gpt2"]))
    assert model.param_counts()["total"] == 124_439_808  # the figure published for GPT-2 small
    assert model.lm_head.weight is model.wte.weight


def test_flops_per_token_follows_palm_formula():
    model = tiny()
    n = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()
    assert model.flops_per_token(16) == 6 * n + 12 * 2 * 32 * 16


def test_gelu_is_the_tanh_approximation():
    mlp = tiny().h[0].mlp
    x = torch.randn(3, 32)
    h = mlp.c_fc(x)
    expected = mlp.c_proj(0.5 * h * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (h + 0.044715 * h ** 3))))
    assert torch.allclose(mlp(x), expected, atol=1e-6)


def test_exact_gelu_option():
    mlp = tiny(gelu_approximate="none").h[0].mlp
    x = torch.randn(3, 32)
    h = mlp.c_fc(x)
    assert torch.allclose(mlp(x), mlp.c_proj(0.5 * h * (1 + torch.erf(h / 2 ** 0.5))), atol=1e-6)


def test_sampling_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert gpt.sample_next_token(logits, temperature=0).item() == 3
    torch.manual_seed(0)
    drawn = {gpt.sample_next_token(logits, temperature=1.0, top_k=2).item() for _ in range(200)}
    assert drawn == {2, 3}
    # probabilities are .03, .09, .24, .64: top_p 0.8 keeps the two best (0.64 < 0.8 <= 0.88)
    drawn = {gpt.sample_next_token(logits, temperature=1.0, top_p=0.8).item() for _ in range(200)}
    assert drawn == {2, 3}
    drawn = {gpt.sample_next_token(logits, temperature=1.0, top_p=0.5).item() for _ in range(50)}
    assert drawn == {3}


def test_gpt2_tokenizer_is_offline_and_exact():
    tok = gpt.Tokenizer("gpt2")
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.vocab_size == 50257
    assert tok.bpe.encode("<|endoftext|>", allowed_special="all") == [50256]
    text = "First Citizen:\nBefore we proceed any further, hear me speak."
    assert tok.decode(tok.encode(text)) == text


def test_char_tokenizer_round_trip_and_unknown_character():
    tok = gpt.Tokenizer("char", "\n !abc")
    assert tok.encode("abc!") == [3, 4, 5, 2]
    assert tok.decode([3, 4, 5]) == "abc"
    with pytest.raises(ValueError, match="not in this char vocabulary"):
        tok.encode("xyz")
    assert gpt.Tokenizer(**tok.state()).chars == tok.chars


def test_text_file_is_tokenized_once_and_split_90_10(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question. " * 50)
    train, val, tok = gpt.load_dataset(str(corpus), "gpt2")
    cache = tmp_path / "corpus.txt.gpt2.bin"
    assert cache.exists()
    assert len(train) == int(0.9 * (len(train) + len(val)))
    assert tok.decode(np.concatenate([train, val]).tolist()) == corpus.read_text()
    cache.write_bytes(np.array([1, 2, 3], dtype=np.uint16).tobytes())  # a newer cache is trusted as is
    train, val, _ = gpt.load_dataset(str(corpus), "gpt2")
    assert np.concatenate([train, val]).tolist() == [1, 2, 3]


def test_bin_folder_is_used_as_is(tmp_path):
    np.arange(1000, dtype=np.uint16).tofile(tmp_path / "train.bin")
    np.arange(100, dtype=np.uint16).tofile(tmp_path / "val.bin")
    train, val, tok = gpt.load_dataset(str(tmp_path), "gpt2")
    assert len(train) == 1000 and len(val) == 100 and tok.kind == "gpt2"
    with pytest.raises(ValueError, match="--tokenizer gpt2"):
        gpt.load_dataset(str(tmp_path), "char")


def test_batches_are_next_token_windows():
    data = np.arange(500, dtype=np.uint16)
    x, y = gpt.get_batch(data, 4, 8, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 8) and x.dtype == torch.long
    assert torch.equal(y, x + 1)  # consecutive ids: each target is the next token
    assert x.max() < 499
