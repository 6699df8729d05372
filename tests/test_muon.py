"""muon.py: its update is torch.optim.Muon's, matrix by matrix, also for stacks of expert matrices; every parameter of
every model file is in exactly one optimizer; train.py resumes a Muon run exactly."""

import importlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import muon

FILES = ["gpt", "modern_gpt", "moe_gpt", "mla_moe", "fgram_moe"]


def muon_steps(optimizer, params, grads):
    for grad in grads:
        for p, g in zip(params, grad, strict=True):
            p.grad = g.clone()
        optimizer.step()
    return [p.detach().clone() for p in params]


def test_the_update_of_a_matrix_is_torch_optim_muons():
    torch.manual_seed(0)
    shapes = [(32, 16), (16, 48), (24, 24)]
    start = [torch.randn(shape) for shape in shapes]
    grads = [[torch.randn(shape) for shape in shapes] for _ in range(4)]  # four steps: momentum matters
    ours = [torch.nn.Parameter(p.clone()) for p in start]
    reference = [torch.nn.Parameter(p.clone()) for p in start]
    after = muon_steps(muon.Muon(ours, lr=0.02, weight_decay=0.1), ours, grads)
    expected = muon_steps(torch.optim.Muon(reference, lr=0.02, weight_decay=0.1), reference, grads)
    for a, b in zip(after, expected, strict=True):
        assert torch.equal(a, b)  # the same operations in the same order


def test_a_stack_of_expert_matrices_is_orthogonalised_expert_by_expert():
    torch.manual_seed(0)
    experts = torch.randn(4, 24, 16)
    grads = [[torch.randn(4, 24, 16)] for _ in range(3)]
    stack = torch.nn.Parameter(experts.clone())
    after = muon_steps(muon.Muon([stack], lr=0.02), [stack], grads)[0]
    alone = [torch.nn.Parameter(e.clone()) for e in experts]  # each expert its own 2-D parameter
    expected = muon_steps(torch.optim.Muon(alone, lr=0.02), alone, [[g[0][e] for e in range(4)] for g in grads])
    assert torch.equal(after, torch.stack(expected))
    # orthogonalised per expert, not as one (96, 16) matrix: that would give another update
    joined = torch.nn.Parameter(experts.reshape(96, 16).clone())
    other = muon_steps(torch.optim.Muon([joined], lr=0.02), [joined], [[g[0].reshape(96, 16)] for g in grads])[0]
    assert not torch.allclose(after.reshape(96, 16), other, atol=1e-3)


@pytest.mark.parametrize("name", FILES)
def test_every_parameter_is_in_exactly_one_optimizer(name):
    module = importlib.import_module(name)
    model = module.Model(module.Config(**{**module.PRESETS["cpu"], "vocab_size": 65, "n_layer": 2}))
    if hasattr(model, "prepare_data"):
        model.prepare_data(np.random.default_rng(0).integers(0, 65, 5000).astype(np.uint16))
    args = SimpleNamespace(weight_decay=0.1, max_lr=1e-3, beta1=0.9, beta2=0.99, muon_lr=0.02, optimizer="muon")
    adamw, matrices = muon.optimizers(model, args, "cpu")
    ids = [id(p) for opt in (adamw, matrices) for group in opt.param_groups for p in group["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(ids) == len(set(ids))
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for group in matrices.param_groups for p in group["params"]}
    assert all(p.dim() >= 2 for group in matrices.param_groups for p in group["params"])
    assert not any(("router" in n or n.startswith(("wte", "wpe", "lm_head"))) for n in in_muon), in_muon
    assert any(".attn." in n for n in in_muon) and any(".mlp." in n for n in in_muon)
    if name == "moe_gpt":  # the stacked experts (E, out, in) go to Muon
        assert {"h.0.mlp.experts.gate", "h.0.mlp.experts.up", "h.0.mlp.experts.down"} <= in_muon
