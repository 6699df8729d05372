"""fgram_moe.py: the model's invariants, its MoE against a per-token reference loop, F-gram mining and lookup
against plain references, the F-gram encoder and gate, F-grams off (= moe_gpt.py), and train.py end to end."""

import collections
import dataclasses
import math
import os
import subprocess
import sys

import numpy as np
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

import fgram_moe as fm
import moe_gpt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 8  # few characters, so random sequences are full of mined n-grams
FULL = 1200  # every bigram and trigram of corpus(), and the most frequent 4-grams


def corpus(length=20000, seed=0):
    """Random ids with structure: most tokens follow their predecessor's favourite successor."""
    rng = np.random.default_rng(seed)
    ids = [0]
    for _ in range(length - 1):
        ids.append((3 * ids[-1] + 1) % VOCAB if rng.random() < 0.6 else int(rng.integers(VOCAB)))
    return np.array(ids, dtype=np.uint16)


def tiny(prepared=True, **kw):
    torch.manual_seed(0)
    config = {
        "block_size": 16,
        "vocab_size": VOCAB,
        "n_layer": 2,
        "n_head": 2,
        "n_kv_head": 2,
        "n_embd": 32,
        "multiple_of": 16,
        "dropout": 0.0,
        "fgram_max_n": 3,
        "fgram_vocab_size": 128,
    }
    model = fm.FgramMoE(fm.FgramMoEConfig(**{**config, **kw}))
    if prepared:
        model.prepare_data(corpus())
    return model


def brute_force_lookup(idx, table):
    """The reference: a Python loop over batch, time and order with a dict of the table's rows."""
    row_of = {tuple(t for t in row if t >= 0): i for i, row in enumerate(table.tolist()) if row[0] >= 0}
    B, T = idx.shape
    out = torch.full((B, T, table.size(1) - 1), -1, dtype=torch.long)
    for b in range(B):
        for t in range(T):
            for n in range(2, table.size(1) + 1):
                if t - n + 1 >= 0:
                    out[b, t, n - 2] = row_of.get(tuple(idx[b, t - n + 1 : t + 1].tolist()), -1)
    return out


# ----------------------------------------------------------------------------- the generic checks


@pytest.mark.parametrize("max_n", [2, 3, 4])
def test_every_parameter_gets_gradient(max_n):
    check_every_parameter_gets_gradient(tiny(fgram_max_n=max_n, fgram_vocab_size=FULL), VOCAB)


@pytest.mark.parametrize("max_n", [0, 2, 3, 4])  # every order: n-gram schemes leak the future here
def test_causality(max_n):
    check_causality(tiny(fgram_max_n=max_n, fgram_vocab_size=FULL), VOCAB)


@pytest.mark.parametrize("max_n", [0, 3, 4])
def test_kv_cache_greedy_equals_recompute_past_the_context(max_n):
    model = tiny(fgram_max_n=max_n, fgram_vocab_size=FULL)
    check_kv_cache_matches_recompute(model, VOCAB, prompt_len=5, new_tokens=25)  # 30 > block_size 16
    check_kv_cache_matches_recompute(model, VOCAB, prompt_len=1, new_tokens=6)  # n-grams begin in the cache


def test_compiled_generate_equals_eager_past_the_context():
    # one prompt token: the n-grams begin in the cache, padded so its shapes never change; the expert dispatch
    # (bincount, counts.tolist()) is data-dependent: graph breaks there, so not one graph
    model = tiny(fgram_max_n=4, fgram_vocab_size=FULL)
    check_compiled_generate_matches(model, VOCAB, prompt_len=1, new_tokens=25, one_graph=False)


def test_cached_logits_equal_full_forward():
    check_cached_logits_match(tiny(fgram_max_n=4, fgram_vocab_size=FULL), VOCAB)


def test_prefill_in_pieces_equals_full_forward():
    # pieces of 1 and 2 tokens: the n-grams at their first positions begin in earlier pieces
    model = tiny(fgram_max_n=4, fgram_vocab_size=FULL).eval()
    idx = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache(2)
        pieces = [model(idx[:, a:b], cache=cache)[0] for a, b in [(0, 1), (1, 3), (3, 4), (4, 12)]]
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)


def test_overfits_one_batch():
    check_overfits_one_batch(tiny(), VOCAB)


# ----------------------------------------------------------------------------- mining and lookup


def test_mining_keeps_the_most_frequent_ngrams_deterministically():
    ids = corpus()
    table = fm.mine_fgrams(ids, VOCAB, 3, 50)
    assert table.shape == (50, 3) and (table[:, 0] >= 0).all() and (table[:, 1] >= 0).all()
    assert np.array_equal(table, fm.mine_fgrams(ids.copy(), VOCAB, 3, 50))  # same ids, same table
    counts = collections.Counter()
    for n in (2, 3):
        counts.update(tuple(ids[i : i + n].tolist()) for i in range(len(ids) - n + 1))
    kept = [tuple(t for t in row if t >= 0) for row in table.tolist()]
    assert len(set(kept)) == 50
    kept_counts = [counts[g] for g in kept]
    assert kept_counts == sorted(kept_counts, reverse=True)  # most frequent first
    assert min(kept_counts) >= max(c for g, c in counts.items() if g not in kept)  # nothing better left out
    assert any(len(g) == 3 for g in kept) and any(len(g) == 2 for g in kept)  # both orders compete


def test_mining_respects_the_table_size_and_pads_a_small_corpus():
    table = fm.mine_fgrams(np.array([1, 2, 1, 2, 3], dtype=np.uint16), VOCAB, 3, 10)
    assert table.shape == (10, 3)
    # (1, 2) twice, then the n-grams seen once in the order of their keys
    assert table[:6].tolist() == [[1, 2, -1], [2, 1, -1], [2, 3, -1], [1, 2, 1], [2, 1, 2], [1, 2, 3]]
    assert (table[6:] == -1).all()  # 6 distinct n-grams: the other rows are unused


def test_mining_is_stored_in_the_state_dict():
    model = tiny()
    assert torch.equal(model.state_dict()["fgram_table"], torch.from_numpy(fm.mine_fgrams(corpus(), VOCAB, 3, 128)))
    fresh = tiny(prepared=False)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.fgram_table, model.fgram_table)


@pytest.mark.parametrize("max_n", [2, 3, 4])
def test_vectorised_lookup_equals_brute_force(max_n):
    table = torch.from_numpy(fm.mine_fgrams(corpus(), VOCAB, max_n, FULL))
    idx = torch.randint(0, VOCAB, (3, 20), generator=torch.Generator().manual_seed(1))
    rows = fm.lookup_fgrams(idx, table, VOCAB)
    assert torch.equal(rows, brute_force_lookup(idx, table))
    assert (rows >= 0).any(dim=(0, 1)).all() and (rows < 0).any()  # hits and misses at every order


@pytest.mark.parametrize("n", [2, 3, 4])
def test_lookup_at_t_reads_only_tokens_t_minus_n_plus_1_to_t(n):
    table = torch.from_numpy(fm.mine_fgrams(corpus(), VOCAB, 4, 300))
    idx = torch.randint(0, VOCAB, (4, 12), generator=torch.Generator().manual_seed(2))
    rows = fm.lookup_fgrams(idx, table, VOCAB)[..., n - 2]
    assert (rows[:, : n - 1] == -1).all()  # the n-gram would begin before the sequence
    for t in range(12):
        changed = idx.clone()
        changed[:, t + 1 :] = (changed[:, t + 1 :] + 1) % VOCAB  # every later token changes
        changed[:, : max(0, t - n + 1)] = (changed[:, : max(0, t - n + 1)] + 1) % VOCAB  # and every earlier one
        assert torch.equal(fm.lookup_fgrams(changed, table, VOCAB)[:, t, n - 2], rows[:, t])


# ----------------------------------------------------------------------------- encoder, gate, F-grams off


def test_encoder_vector_is_the_block_output_at_the_last_character_of_the_ngram_alone():
    # each n-gram through the whole block alone, unpadded: the batched vector is its last output
    model = tiny(fgram_max_n=4, fgram_vocab_size=FULL, dropout=0.1).eval()
    with torch.no_grad():
        vectors = model.fgram_vectors()
        for row in (0, 600, FULL - 1):
            gram = model.fgram_table[row][model.fgram_table[row] >= 0]
            alone = model.fgram_encoder(model.wte(gram)[None])  # (1, n, C)
            assert torch.allclose(alone[0, -1], vectors[row], atol=1e-6)
    assert {len(model.fgram_table[r][model.fgram_table[r] >= 0]) for r in range(FULL)} == {2, 3, 4}
    assert model.fgram_encoder.attn.dropout == 0.0 and model.h[0].attn.dropout == 0.1


def test_gate_merges_found_ngrams_only():
    model = tiny()
    x, vectors = torch.randn(2, 5, 32), torch.randn(128, 32)
    rows = torch.tensor([[[-1, -1], [3, -1], [7, 90], [-1, 5], [0, 0]]] * 2)
    expected = x.clone()
    for b in range(2):
        for t in range(5):
            for n, gate in enumerate(model.fgram_gate.gates):
                if rows[b, t, n] >= 0:
                    f = vectors[rows[b, t, n]]
                    expected[b, t] += torch.sigmoid(gate.weight @ torch.cat([x[b, t], f])) * f
    assert torch.allclose(model.fgram_gate(x, vectors, rows), expected, atol=1e-6)


def moe_gpt_twin(model):
    """moe_gpt.py's MoEGPT set up as fgram_moe's plain MoE (one granularity, no shared experts, softmax gate,
    renormalised top_k, no z-loss), with the weights of `model` (F-grams off): the router's matrix, and each
    expert's SwiGLU stacked into moe_gpt's Experts."""
    c = model.config
    shared = {f.name for f in dataclasses.fields(moe_gpt.MoEGPTConfig)} & {f.name for f in dataclasses.fields(c)}
    hidden = model.h[0].mlp.experts[0].gate.out_features
    plain = moe_gpt.MoEGPT(
        moe_gpt.MoEGPTConfig(
            **{name: getattr(c, name) for name in shared if name != "moe_hidden"},
            n_routed_experts=c.n_experts,
            moe_hidden=hidden,
            n_shared_experts=0,
            granularity=1,
            z_loss_weight=0.0,
            gate="softmax",
            renormalize=True,
            first_dense_layers=0,
            tie_embeddings=True,
            seq_aux_loss_weight=0.0,
            bias_update_rate=0.0,
        )
    )
    state = {name: t for name, t in model.state_dict().items() if ".mlp.experts." not in name}
    for i, block in enumerate(model.h):
        for part in ("gate", "up", "down"):
            state[f"h.{i}.mlp.experts.{part}"] = torch.stack([getattr(e, part).weight for e in block.mlp.experts])
        state[f"h.{i}.mlp.router.bias"] = torch.zeros(c.n_experts)
    plain.load_state_dict(state)  # strict: every weight of one model has its place in the other
    return plain


@pytest.mark.parametrize("top_k", [1, 2])
def test_fgrams_off_equals_moe_gpt_set_up_as_the_plain_moe(top_k, monkeypatch):
    monkeypatch.setattr(moe_gpt, "grouped_mm_dtype", lambda *args: None)  # both loop over the experts
    model = tiny(fgram_max_n=0, top_k=top_k, aux_loss_weight=0.1)
    plain = moe_gpt_twin(model)
    assert plain.h[0].mlp.n_experts == 4 and plain.h[0].mlp.top_k == top_k and plain.h[0].mlp.shared is None
    idx, targets = torch.randint(0, VOCAB, (2, 16)), torch.randint(0, VOCAB, (2, 16))
    for training in (True, False):
        model.train(training), plain.train(training)
        (logits, loss), (plain_logits, plain_loss) = model(idx, targets), plain(idx, targets)
        assert torch.equal(logits, plain_logits) and torch.equal(loss, plain_loss)  # the same operations, in order
        for ours, theirs in zip(model.moe_layers(), plain.moe_layers()):
            assert torch.equal(ours.stats["load"], theirs.stats["load"])
            torch.testing.assert_close(ours.aux_loss, theirs.aux_loss)
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    assert torch.allclose(loss, ce)  # eval: the LM loss only ...
    model.train()
    assert model(idx, targets)[1] > ce + 0.1 * 0.9 * len(model.h)  # ... training adds the Switch loss (>= 1 each)
    assert model.param_counts() == plain.param_counts()
    model.prepare_data(corpus())  # a no-op without F-grams


def reference_moe(moe, x):
    """NanoMoE's MoE token by token: softmax over the experts, the top_k, their probabilities renormalised to sum
    1; Switch's loss E sum_i f_i P_i (f_i: share of the N*k assignments, P_i: mean probability)."""
    E, k = moe.n_experts, moe.top_k
    out, counts, mean_probs = torch.zeros_like(x), torch.zeros(E), torch.zeros(E)
    for t in range(x.size(0)):
        probs = (moe.router.weight @ x[t]).softmax(-1)
        best = torch.topk(probs, k)
        for e, w in zip(best.indices.tolist(), (best.values / best.values.sum()).tolist()):
            mlp = moe.experts[e]
            out[t] += w * (mlp.down.weight @ (F.silu(mlp.gate.weight @ x[t]) * (mlp.up.weight @ x[t])))
            counts[e] += 1
        mean_probs += probs / x.size(0)
    load = counts / counts.sum()
    return out, load, E * (load * mean_probs).sum()


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_moe_layer_equals_per_token_reference(top_k):
    torch.manual_seed(0)
    config = fm.FgramMoEConfig(
        n_embd=32, n_head=2, n_kv_head=2, multiple_of=16, dropout=0.0, top_k=top_k, moe_hidden=24, aux_loss_weight=0.5
    )
    moe = fm.MoE(config)
    with torch.no_grad():
        moe.router.weight.normal_(0.0, 0.3)  # probabilities far from uniform: choices differ between tokens
    x = torch.randn(2, 20, 32)
    out = moe(x)
    expected, load, aux_loss = reference_moe(moe, x.view(40, 32))
    assert torch.allclose(out, expected.view(2, 20, 32), atol=1e-5)
    assert torch.allclose(moe.stats["load"], load) and (load > 0).sum() > 1
    assert torch.allclose(moe.aux_loss, aux_loss) and torch.allclose(moe.stats["aux_loss"], aux_loss)
    assert torch.allclose(moe.weighted_loss, 0.5 * aux_loss) and set(moe.stats) == {"load", "aux_loss"}
    moe.weighted_loss.backward()
    assert moe.router.weight.grad.abs().sum() > 0  # the balancing loss trains the router


def test_switch_loss_is_one_when_uniform_and_larger_when_skewed():
    moe = fm.MoE(fm.FgramMoEConfig(n_embd=32, n_experts=4, top_k=1, dropout=0.0))
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(4, 32) * 20)
    moe(torch.eye(4, 32).repeat(8, 1).view(2, 16, 32))  # token t points at expert t % 4
    assert moe.stats["load"].tolist() == [0.25] * 4 and math.isclose(moe.aux_loss.item(), 1.0, rel_tol=1e-5)
    moe(torch.eye(4, 32)[0].repeat(32, 1).view(2, 16, 32))  # every token points at expert 0
    assert moe.aux_loss.item() > 3.9


def test_blocks_are_moe_by_default_and_the_head_is_tied():
    config = fm.FgramMoEConfig(n_embd=32, n_head=2, n_kv_head=2, multiple_of=16)
    assert isinstance(fm.Block(config).mlp, fm.MoE) and isinstance(fm.Block(config, moe=False).mlp, fm.SwiGLU)
    moe = fm.Block(config).mlp
    assert moe.n_experts == 4 and moe.top_k == 2 and moe.experts[0].gate.out_features == 96 // 2
    assert moe.router.weight.shape == (4, 32) and moe.router.bias is None
    model = tiny()
    assert model.lm_head.weight is model.wte.weight and len(model.moe_layers()) == 2
    with pytest.raises(ValueError, match="top_k 5 must be between 1 and n_experts 4"):
        tiny(top_k=5)


def test_unmined_table_adds_nothing():
    # before prepare_data no n-gram matches: the logits are those of the model without the F-gram parts
    with_parts, without = tiny(prepared=False), tiny(fgram_max_n=0)
    without.load_state_dict({k: v for k, v in with_parts.state_dict().items() if not k.startswith("fgram")})
    idx = torch.randint(0, VOCAB, (2, 16))
    assert torch.equal(with_parts(idx)[0], without(idx)[0])


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"fgram_max_n": 1}, "fgram_max_n"),
        ({"fgram_max_n": 17}, "block_size"),
        ({"fgram_vocab_size": 0}, "fgram_vocab_size"),
        ({"vocab_size": 50257, "fgram_max_n": 5}, "int64"),
    ],
)
def test_bad_config_is_a_clear_error(kw, message):
    with pytest.raises(ValueError, match=message):
        tiny(prepared=False, **kw)


def test_ids_outside_the_vocabulary_are_a_clear_error():
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tiny(prepared=False).prepare_data(np.array([1, 2, VOCAB], dtype=np.uint16))


# ----------------------------------------------------------------------------- train.py


def test_train_py_end_to_end_mines_checkpoints_and_samples(tmp_path):
    out = str(tmp_path / "run")
    args = [
        sys.executable,
        "train.py",
        "--model_type",
        "fgram",
        "--max_steps",
        "2",
        "--eval_interval",
        "2",
        "--eval_iters",
        "1",
        "--B",
        "2",
        "--T",
        "16",
        "--n_layer",
        "1",
        "--n_embd",
        "32",
        "--n_head",
        "2",
        "--n_kv_head",
        "2",
        "--fgram_vocab_size",
        "64",
        "--sample_tokens",
        "4",
        "--device",
        "cpu",
        "--out_dir",
        out,
    ]
    result = subprocess.run(args, capture_output=True, check=False, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("tokenizer: char, 65 tokens")  # character-level: the cpu preset's default
    model, tokenizer, _ = fm.load_checkpoint(os.path.join(out, "ckpt.pt"))
    train_ids, _, _ = fm.load_dataset(os.path.join(ROOT, "input.txt"))
    mined = fm.mine_fgrams(train_ids, tokenizer.vocab_size, 3, 64)
    assert torch.equal(model.fgram_table, torch.from_numpy(mined))
    assert tokenizer.decode(mined[0][mined[0] >= 0].tolist()) == "e "  # the most frequent n-gram of Shakespeare
    sample = subprocess.run(
        [
            sys.executable,
            "fgram_moe.py",
            "--ckpt",
            os.path.join(out, "ckpt.pt"),
            "--prompt",
            "ROMEO:",
            "--max_new_tokens",
            "8",
        ],
        capture_output=True,
        check=False,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert sample.returncode == 0 and "ROMEO:" in sample.stdout, sample.stderr


def test_size_and_norm_fields_reach_the_layers_they_name():
    model = tiny(mlp_hidden=40, moe_hidden=24, fgram_hidden=48, rope_theta=500.0, norm_eps=1e-3, head_dim=8)
    block = model.h[0]
    assert block.mlp.experts[0].gate.weight.shape == (24, 32)  # moe_hidden: each expert's hidden size
    assert model.fgram_encoder.mlp.gate.weight.shape == (48, 32)  # fgram_hidden: the n-gram encoder's SwiGLU
    assert tiny(mlp_hidden=40).h[0].mlp.experts[0].gate.weight.shape == (48 // 2, 32)  # 40 -> 48, / top_k 2
    assert block.attn.c_attn.weight.shape == ((2 + 2 * 2) * 8, 32) and block.attn.rotary.cos.shape == (16, 4)
    assert torch.allclose(block.attn.rotary.cos[1], torch.cos(500.0 ** (-torch.arange(0, 8, 2) / 8)))
    assert block.norm_1.eps == 1e-3 and model.norm_f.eps == 1e-3
