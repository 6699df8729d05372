"""Checks every model file must pass, written once and called from each model's tests.

Each takes a freshly built model (small config, dropout 0) and asserts a property that a
bug in attention masking, caching or wiring would break.
"""

import dataclasses
import sys
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
import torch._dynamo
from cli_checks import one_line_error
from torch._dynamo.utils import counters


def check_every_parameter_gets_gradient(model, vocab_size, B=2, T=16):
    """One forward/backward: every trainable parameter receives a finite, non-zero gradient."""
    model.train()
    idx = torch.randint(0, vocab_size, (B, T))
    _, loss = model(idx, torch.randint(0, vocab_size, (B, T)))
    loss.backward()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        assert p.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"
    model.zero_grad(set_to_none=True)


def check_causality(model, vocab_size, T=16, B=2):
    """Changing the tokens after position t leaves the logits at positions <= t unchanged."""
    model.eval()
    torch.manual_seed(0)
    idx = torch.randint(0, vocab_size, (B, T))
    with torch.no_grad():
        reference, _ = model(idx)
        for t in range(T - 1):
            changed = idx.clone()
            changed[:, t + 1 :] = torch.randint(0, vocab_size, (B, T - t - 1))
            logits, _ = model(changed)
            assert torch.allclose(logits[:, : t + 1], reference[:, : t + 1], atol=1e-5), (
                f"logits at positions <= {t} changed when only later tokens changed"
            )
            assert not torch.allclose(logits[:, t + 1 :], reference[:, t + 1 :]), (
                "changing tokens did not change any later logit: the check would be vacuous"
            )


def check_kv_cache_matches_recompute(model, vocab_size, prompt_len=5, new_tokens=20, B=2):
    """Decoding with the KV cache sees, at every step, the logits of nanoGPT's cache-less generate (the last
    block_size tokens through the model again), also past the end of the context (new_tokens > block_size -
    prompt_len slides the window), and so gives its greedy tokens. The logits, not only the tokens: a random
    model's argmax seldom changes when the window loses a token, its logits always do."""
    model.eval()
    torch.manual_seed(0)
    prompt = torch.randint(0, vocab_size, (B, prompt_len))
    seen = []

    def greedy(logits, *args):
        seen.append(logits)
        return logits.argmax(dim=-1, keepdim=True)

    with mock.patch.object(sys.modules[type(model).__module__], "sample_next_token", greedy):
        with_cache = model.generate(prompt, new_tokens, temperature=0)
    without = prompt
    with torch.no_grad():
        for step in range(new_tokens):
            logits, _ = model(without[:, -model.config.block_size :])
            # float32 rounding: the cached steps attend in another order than one full pass
            assert torch.allclose(seen[step], logits[:, -1], atol=1e-4), f"step {step}: cached logits differ"
            without = torch.cat((without, logits[:, -1].argmax(dim=-1, keepdim=True)), dim=1)
    assert with_cache.shape == (B, prompt_len + new_tokens)
    assert torch.equal(with_cache, without), "cached and cache-less greedy decoding disagree"


def check_compiled_generate_matches(model, vocab_size, prompt_len=5, new_tokens=25, B=2, backend="aot_eager",
                                    one_graph=True):
    """generate(compile=True) gives the tokens generate gives without it, greedy and sampled (same seed), also
    past the end of the context (new_tokens > block_size - prompt_len: the window slides, a new static cache).
    one_graph: torch.compile captures the one-token step once, without a graph break, and never recompiles as
    the position grows (error_on_recompile). backend "aot_eager" traces and functionalizes as inductor does, in
    seconds; "inductor" also builds and runs its C++ kernels (generate's own compile)."""
    model.eval()
    torch.manual_seed(0)
    prompt = torch.randint(0, vocab_size, (B, prompt_len))
    sampling = {"temperature": 0.8, "top_k": 5, "top_p": 0.9}
    expected = [model.generate(prompt, new_tokens, temperature=0)]
    expected.append(model.generate(prompt, new_tokens, **sampling))  # the generator state after the greedy run
    real_compile = torch.compile

    def compile_with_backend(module, **kwargs):  # generate's options are inductor's: other backends take none
        if backend == "inductor":
            return real_compile(module, **kwargs)
        return real_compile(module, dynamic=kwargs.get("dynamic"), backend=backend)

    torch._dynamo.reset()
    counters.clear()
    with mock.patch.object(torch, "compile", compile_with_backend), \
            torch._dynamo.config.patch(error_on_recompile=one_graph):
        torch.manual_seed(0)
        torch.randint(0, vocab_size, (B, prompt_len))  # the same generator state as above
        compiled = [model.generate(prompt, new_tokens, temperature=0, compile=True)]
        compiled.append(model.generate(prompt, new_tokens, compile=True, **sampling))
    assert torch.equal(compiled[0], expected[0]), "compiled and eager greedy decoding disagree"
    assert torch.equal(compiled[1], expected[1]), "compiled and eager sampling (same seed) disagree"
    assert counters["stats"]["unique_graphs"] >= 1, "nothing was compiled: the check would be vacuous"
    if one_graph:
        assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"], dict(counters["graph_break"])


def check_cached_logits_match(model, vocab_size, T=12, B=2, split=7):
    """Logits from a prefill of `split` tokens plus one-token steps equal one full forward pass."""
    model.eval()
    torch.manual_seed(0)
    idx = torch.randint(0, vocab_size, (B, T))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache(B)
        pieces = [model(idx[:, :split], cache=cache)[0]]
        for t in range(split, T):
            pieces.append(model(idx[:, t : t + 1], cache=cache)[0])
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-4)


def check_overfits_one_batch(model, vocab_size, steps=150, lr=3e-3, B=4, T=16, target=0.5):
    """A small model memorizes a single batch: the loss falls below `target` nats."""
    model.train()
    torch.manual_seed(0)
    x = torch.randint(0, vocab_size, (B, T))
    y = torch.randint(0, vocab_size, (B, T))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    first = None
    for _ in range(steps):
        _, loss = model(x, y)
        first = first if first is not None else loss.item()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    assert loss.item() < target < first, f"loss went from {first:.3f} to {loss.item():.3f}, not below {target}"


def save_checkpoint(module, model, tokenizer, path):
    """A checkpoint as train.py writes one: the model type, the config as a plain dict, the weights and the
    tokenizer's state, in one torch.save."""
    torch.save(
        {
            "model_type": module.MODEL_TYPE,
            "config": dataclasses.asdict(model.config),
            "model": model.state_dict(),
            "tokenizer": tokenizer.state(),
        },
        path,
    )


def main_error(main, argv, capsys):
    """The one `error:` line main(argv) of a model file or fine-tune prints for bad input, run in this process
    (argparse exits before anything is built): exit status 2, nothing on stdout."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    assert out == "", out
    return one_line_error(SimpleNamespace(returncode=exit_info.value.code, stdout=out, stderr=err))
