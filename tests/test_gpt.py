"""gpt.py: the model's invariants, sampling, and the tail every model file shares (test_twins.py holds the
copies identical): tokenizers, data, checkpoints and the sampling CLI."""

import io
import math
import os
import random
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from model_checks import (
    check_cached_logits_match,
    check_causality,
    check_compiled_generate_matches,
    check_every_parameter_gets_gradient,
    check_kv_cache_matches_recompute,
    check_overfits_one_batch,
    save_checkpoint,
)

import bpe
import data
import gpt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 50


def tiny(**kw):
    torch.manual_seed(0)
    return gpt.GPT(
        gpt.GPTConfig(**{"block_size": 16, "vocab_size": VOCAB, "n_layer": 2, "n_head": 2, "n_embd": 32, **kw})
    )


def test_every_parameter_gets_gradient():
    check_every_parameter_gets_gradient(tiny(), VOCAB)


def test_causality():
    check_causality(tiny(), VOCAB)


def test_kv_cache_greedy_equals_recompute_past_the_context():
    check_kv_cache_matches_recompute(tiny(), VOCAB, prompt_len=5, new_tokens=25)  # 30 > block_size 16


def test_compiled_generate_equals_eager_in_one_graph_past_the_context():
    check_compiled_generate_matches(tiny(), VOCAB, prompt_len=5, new_tokens=25)  # 30 > block_size 16


def test_compiled_generate_equals_eager_with_inductor():
    # batch 1: the one-token matmuls run as inductor's sum(x * W) kernels, the path bench/generate_speed.py times
    check_compiled_generate_matches(tiny(n_layer=1), VOCAB, prompt_len=5, new_tokens=25, B=1, backend="inductor")


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
        gelu = 0.5 * a * (1 + torch.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a**3)))
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
    for name in [
        "wte.weight",
        "wpe.weight",
        "h.0.ln_1.weight",
        "h.0.ln_1.bias",
        "h.0.attn.c_attn.weight",
        "h.0.attn.c_attn.bias",
        "h.0.attn.c_proj.weight",
        "h.0.ln_2.weight",
        "h.1.mlp.c_fc.weight",
        "h.1.mlp.c_proj.bias",
        "ln_f.weight",
        "ln_f.bias",
    ]:
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
    expected = mlp.c_proj(0.5 * h * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (h + 0.044715 * h**3))))
    assert torch.allclose(mlp(x), expected, atol=1e-6)


def test_exact_gelu_option():
    mlp = tiny(gelu_approximate="none").h[0].mlp
    x = torch.randn(3, 32)
    h = mlp.c_fc(x)
    assert torch.allclose(mlp(x), mlp.c_proj(0.5 * h * (1 + torch.erf(h / 2**0.5))), atol=1e-6)


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


@pytest.mark.parametrize("top_k", [None, 0, 5, 20])
def test_sampling_distribution_is_transformers_temperature_top_k_and_top_p(monkeypatch, top_k):
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    drawn_from = []
    multinomial = torch.multinomial
    monkeypatch.setattr(torch, "multinomial", lambda probs, **kw: drawn_from.append(probs) or multinomial(probs, **kw))
    torch.manual_seed(0)
    for top_p in (0.05, 0.3, 0.7, 0.9, 0.99, 1.0):
        logits = torch.randn(3, 50) * 3
        gpt.sample_next_token(logits, 0.8, top_k, top_p)
        reference = logits / 0.8  # transformers' order: temperature, top-k, top-p
        if top_k:
            reference = TopKLogitsWarper(top_k)(None, reference)
        reference = TopPLogitsWarper(top_p)(None, reference)
        # the same tokens kept; their probabilities equal to float32 rounding (one softmax each)
        assert torch.equal(drawn_from[-1] > 0, reference > float("-inf")), (top_k, top_p)
        assert torch.allclose(drawn_from[-1], reference.softmax(dim=-1), atol=1e-6), (top_k, top_p)


# ----------------------------------------------------------------------------- tokenizers


def test_gpt2_tokenizer_is_offline_and_exact():
    tok = gpt.Tokenizer("gpt2")
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.vocab_size == 50257 and tok.kind == "gpt2"
    assert tok.bpe.encode("<|endoftext|>", allowed_special="all") == [50256]
    text = "First Citizen:\nBefore we proceed any further, hear me speak."
    assert tok.decode(tok.encode(text)) == text
    assert gpt.Tokenizer(**tok.state()).encode(text) == tok.encode(text)


def test_char_tokenizer_round_trip_and_unknown_character():
    tok = gpt.Tokenizer("char", "\n !abc")
    assert tok.encode("abc!") == [3, 4, 5, 2] and tok.vocab_size == 6
    assert tok.decode([3, 4, 5]) == "abc"
    with pytest.raises(ValueError, match="'xyz' are not in this char vocabulary"):
        tok.encode("xaybzc")
    assert gpt.Tokenizer(**tok.state()).chars == tok.chars
    with pytest.raises(ValueError, match="unknown tokenizer"):
        gpt.Tokenizer("wordpiece")


def test_bpe_merge_i_makes_token_256_plus_i():
    # "he" = 256, "hel" = 257, " w" = 258; <|endoftext|> is the last id
    tok = gpt.Tokenizer("bpe", merges=[(104, 101), (256, 108), (32, 119)])
    assert tok.vocab_size == 256 + 3 + 1 and tok.kind == "bpe"
    assert tok.encode("hello world") == [257, 108, 111, 258, 111, 114, 108, 100]
    assert tok.decode([257, 258]) == "hel w"
    assert tok.bpe.encode("<|endoftext|>", allowed_special="all") == [259]


UNICODE = (
    "naïve café, Ærø; Привет, мир! 🎉🎉 👍🏽 "
    "日本語のテキスト e\u0301 don't we'll\t\ttabs  and   spaces\n\n"
)


def random_unicode(n, seed=0):
    """n characters from anywhere in Unicode (no surrogates): scripts, emoji, controls, combining marks."""
    rng = random.Random(seed)
    return "".join(
        chr(rng.choice([rng.randint(0, 0x7F), rng.randint(0x80, 0xD7FF), rng.randint(0xE000, 0x10FFFF)]))
        for _ in range(n)
    )


def test_learned_bpe_round_trips_any_text_and_its_state():
    merges = bpe.learn_bpe(3 * UNICODE + "to be or not to be, that is the question", 256 + 1 + 120)
    tok = gpt.Tokenizer("bpe", merges=merges)
    assert tok.vocab_size == 256 + len(merges) + 1 and len(merges) > 50
    assert tok.encode(UNICODE) == bpe.encoding_from_merges(merges).encode_ordinary(UNICODE)  # as bpe.py encodes
    assert len(tok.encode(UNICODE)) < len(UNICODE.encode("utf-8")) / 2  # the merges are used
    texts = [UNICODE, random_unicode(2000), random_unicode(300, seed=1), "", " ", "\x00\r\n\ufeff", "x" * 500]
    for text in texts:
        assert tok.decode(tok.encode(text)) == text
    # the state is what a checkpoint keeps: it survives torch.save / torch.load(weights_only=True)
    state = tok.state()
    assert state == {"kind": "bpe", "chars": "", "merges": [tuple(m) for m in merges]}
    buffer = io.BytesIO()
    torch.save({"tokenizer": state}, buffer)
    buffer.seek(0)
    again = gpt.Tokenizer(**torch.load(buffer, weights_only=True)["tokenizer"])
    assert again.merges == tok.merges and again.encode(texts[1]) == tok.encode(texts[1])
    as_json = gpt.Tokenizer(kind="bpe", merges=[list(m) for m in merges])  # pairs as lists, e.g. from JSON
    assert as_json.state() == state


# ----------------------------------------------------------------------------- data

# plain English, then text of several tokens per character: a 90% cut by tokens would fall elsewhere
TEXT = "to be or not to be, that is the question.\n" * 30 + "Ünïcödé: 日本語 🎉 ½ ∑\n" * 30


def write_corpus(tmp_path, text=TEXT):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    return str(corpus)


def load_corpus(path, tokenizer):
    """train.py's corpus (data.py) of the text by this tokenizer (None: its characters), as a resumed run reads it."""
    return data.load_corpus(path, gpt, "cpu", None, tokenizer and tokenizer.state(), 0)


def npz_cache(path, tokenizer):
    return f"{path}.{tokenizer.kind}-{tokenizer.vocab_size}-{zlib.crc32(repr(tokenizer.merges).encode()):08x}.npz"


def test_default_tokenizer_is_the_characters_of_the_text_split_by_characters(tmp_path):
    corpus = write_corpus(tmp_path)
    train, val, tok = gpt.load_dataset(corpus)
    assert tok.kind == "char" and tok.chars == "".join(sorted(set(TEXT)))
    cut = int(0.9 * len(TEXT))  # characters, not tokens
    assert tok.decode(train.tolist()) == TEXT[:cut] and tok.decode(val.tolist()) == TEXT[cut:]
    assert train.dtype == val.dtype == np.uint16
    assert os.listdir(tmp_path) == ["corpus.txt"]  # no cache for characters


@pytest.mark.parametrize("kind", ["gpt2", "bpe"])
def test_bpe_ids_are_split_by_characters_and_cached_by_train_py(tmp_path, kind):
    corpus = write_corpus(tmp_path)
    tok = gpt.Tokenizer(kind, merges=bpe.learn_bpe(TEXT, 300) if kind == "bpe" else ())
    train, val, same = gpt.load_dataset(corpus, tok)
    assert same is tok and os.listdir(tmp_path) == ["corpus.txt"]  # the model file reads, it writes nothing
    cut = int(0.9 * len(TEXT))
    assert tok.decode(train.tolist()) == TEXT[:cut] and tok.decode(val.tolist()) == TEXT[cut:]
    loaded = load_corpus(corpus, tok)  # train.py's data.py caches them beside the text
    assert np.array_equal(loaded.train, train) and np.array_equal(loaded.val, val)
    assert sorted(os.listdir(tmp_path)) == sorted(["corpus.txt", os.path.basename(npz_cache(corpus, tok))])
    with np.load(npz_cache(corpus, tok)) as saved:
        assert np.array_equal(saved["train"], train) and np.array_equal(saved["val"], val)


def test_cache_is_reused_while_newer_than_the_text(tmp_path):
    corpus = write_corpus(tmp_path)
    tok = gpt.Tokenizer("gpt2")
    train, val = load_corpus(corpus, tok).train, load_corpus(corpus, tok).val
    cache = npz_cache(corpus, tok)
    np.savez(cache, train=np.array([1, 2, 3], dtype=np.uint16), val=np.array([4], dtype=np.uint16))
    os.utime(cache, (os.path.getmtime(corpus) + 10,) * 2)  # newer than the text: trusted as it is
    cached = load_corpus(corpus, tok)
    assert cached.train.tolist() == [1, 2, 3] and cached.val.tolist() == [4]
    os.utime(corpus, (os.path.getmtime(cache) + 10,) * 2)  # the text changed since: tokenized again
    again = load_corpus(corpus, tok)
    assert np.array_equal(again.train, train) and np.array_equal(again.val, val)
    with np.load(cache) as saved:
        assert np.array_equal(saved["train"], train)  # and the cache rewritten


def test_two_learned_bpes_of_one_size_get_their_own_caches(tmp_path):
    corpus = write_corpus(tmp_path)
    one = gpt.Tokenizer("bpe", merges=[(116, 111), (98, 101)])  # "to", "be"
    other = gpt.Tokenizer("bpe", merges=[(116, 104), (32, 116)])  # "th", " t"
    assert one.vocab_size == other.vocab_size
    ids_one, ids_other = load_corpus(corpus, one).train, load_corpus(corpus, other).train
    assert npz_cache(corpus, one) != npz_cache(corpus, other)
    assert os.path.exists(npz_cache(corpus, one)) and os.path.exists(npz_cache(corpus, other))
    assert one.decode(load_corpus(corpus, one).train.tolist()) == TEXT[: int(0.9 * len(TEXT))]
    assert other.decode(load_corpus(corpus, other).train.tolist()) == TEXT[: int(0.9 * len(TEXT))]
    assert ids_one.tolist() != ids_other.tolist()


def test_characters_are_never_cached(tmp_path):  # a table lookup: also a resumed char run's
    corpus = write_corpus(tmp_path)
    chars = load_corpus(corpus, None).tokenizer
    assert chars.kind == "char" and load_corpus(corpus, chars).train.tolist() == gpt.load_dataset(corpus)[0].tolist()
    assert os.listdir(tmp_path) == ["corpus.txt"]


def test_bin_folder_is_used_as_is(tmp_path):
    np.arange(1000, dtype=np.uint16).tofile(tmp_path / "train.bin")
    np.arange(100, dtype=np.uint16).tofile(tmp_path / "val.bin")
    train, val, tok = gpt.load_dataset(str(tmp_path))
    assert isinstance(train, np.memmap) and train.tolist() == list(range(1000)) and val.tolist() == list(range(100))
    assert tok.kind == "gpt2"


def test_batches_are_next_token_windows():
    data = np.arange(500, dtype=np.uint16)
    x, y = gpt.get_batch(data, 4, 8, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 8) and x.dtype == torch.long
    assert torch.equal(y, x + 1)  # consecutive ids: each target is the next token
    assert x.max() < 499


# ----------------------------------------------------------------------------- checkpoints and the CLI

CHARS = "\n !:ABCEMOR"


def tiny_checkpoint(path, model_type="gpt"):
    model = tiny(vocab_size=len(CHARS))
    save_checkpoint(gpt, model, gpt.Tokenizer("char", CHARS), path)
    if model_type != "gpt":
        ckpt = torch.load(path, weights_only=True)
        ckpt["model_type"] = model_type
        torch.save(ckpt, path)
    return model


def test_checkpoint_round_trip(tmp_path):
    model = tiny_checkpoint(tmp_path / "ckpt.pt").eval()
    loaded, tokenizer, ckpt = gpt.load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert not loaded.training and loaded.config == model.config
    assert tokenizer.chars == CHARS and ckpt["tokenizer"]["chars"] == CHARS
    idx = torch.randint(0, len(CHARS), (2, 16))
    assert torch.equal(loaded(idx)[0], model(idx)[0])


def unreadable(tmp_path, what):
    """A file that is not a checkpoint: nothing in it, a real one cut in half, or random bytes."""
    path = tmp_path / f"{what}.pt"
    if what == "empty":
        path.write_bytes(b"")
    elif what == "truncated":
        tiny_checkpoint(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    return str(path)


@pytest.mark.parametrize("what", ["empty", "truncated", "random"])
def test_unreadable_checkpoint_is_a_value_error_naming_the_file(tmp_path, what):
    path = unreadable(tmp_path, what)
    with pytest.raises(ValueError, match="no readable checkpoint") as error:
        gpt.load_checkpoint(path)
    assert path in str(error.value)


def test_missing_checkpoint_or_another_model_type_is_a_clear_error(tmp_path):
    missing = str(tmp_path / "nothing here" / "ckpt.pt")
    with pytest.raises(FileNotFoundError) as error:
        gpt.load_checkpoint(missing)
    assert missing in str(error.value)
    with pytest.raises(FileNotFoundError):
        gpt.load_checkpoint(str(tmp_path))  # a folder is no checkpoint either
    tiny_checkpoint(tmp_path / "modern.pt", model_type="moderngpt")
    with pytest.raises(ValueError, match="'moderngpt'") as error:
        gpt.load_checkpoint(str(tmp_path / "modern.pt"))
    assert str(tmp_path / "modern.pt") in str(error.value) and "'gpt'" in str(error.value)


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "gpt.py", *args, "--device", "cpu"],
        capture_output=True,
        check=False,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def assert_one_line_error(result, *phrases):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


def test_cli_samples_from_a_checkpoint(tmp_path):
    tiny_checkpoint(tmp_path / "ckpt.pt")
    result = run_cli("--ckpt", str(tmp_path / "ckpt.pt"), "--prompt", "ROMEO:", "--max_new_tokens", "10")
    assert result.returncode == 0, result.stderr
    header, sample = result.stdout.split("\n", 1)  # the parameter count, then the text and print's newline
    assert header.startswith("gpt: ") and sample.startswith("ROMEO:") and sample.endswith("\n")
    assert len(sample[:-1]) == 6 + 10 and set(sample) <= set(CHARS)


def test_cli_missing_checkpoint(tmp_path):
    assert_one_line_error(run_cli("--ckpt", str(tmp_path / "ckpt.pt")), str(tmp_path / "ckpt.pt"))


def test_cli_unreadable_checkpoint(tmp_path):
    path = unreadable(tmp_path, "truncated")
    assert_one_line_error(run_cli("--ckpt", path), path, "no readable checkpoint")


def test_cli_characters_outside_the_vocabulary(tmp_path):
    tiny_checkpoint(tmp_path / "ckpt.pt")
    result = run_cli("--ckpt", str(tmp_path / "ckpt.pt"), "--prompt", "JULIET:")
    assert_one_line_error(result, "'IJLTU' are not in this char vocabulary")
