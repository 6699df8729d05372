"""
hf_families.py - what each Hugging Face architecture is in this project's model files: for every family, one table
of its config.json keys and one table of its tensor names, read by load_hf.py and run backwards by its export;
FAMILIES lists them all. load_hf.py is the machinery, this file the knowledge.

A table has three kinds of rows. Key: a config.json key is a config field; absent it means its default (REQUIRED:
a file without it is refused), null means what `null` says. Fixed: a setting the model file computes one way
only; config.json may leave it out or state that value (export writes it), any other is refused by name. Ours: a
config field the architecture fixes, set on reading; export refuses a model with another value, saying why. What
relates several keys is a family's read / write hook. Tensors: to_hub(model) gives the checkpoint's names and
tensors (on a meta model: the names and shapes a checkpoint must have), from_hub(model, take, config.json) our
state dict, take(name) popping one checkpoint tensor; tensors that are cut or joined on the way say how.
"""
import dataclasses
import math
import re
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

import gpt
import mla_moe
import modern_gpt
import moe_gpt

REQUIRED = "a key config.json must have"  # a Key's default: absent, the file is refused
SAME = "as if absent"  # a Key's null: config.json's null means what its absence means


class Key(NamedTuple):
    """config.json's `hub` (dotted: inside rope_parameters) is config field `ours`: absent it means `default`, null
    means `null`; `values` maps config.json's words to the field's where they differ (others are refused)."""
    hub: str
    ours: str
    default: Any = REQUIRED
    null: Any = SAME
    values: dict | None = None


class Fixed(NamedTuple):
    """config.json's `hub` absent, null or `value` (what export writes): another value is refused because `why`."""
    hub: str
    value: Any
    why: str  # {file}: the model file


class Ours(NamedTuple):
    """A config field the architecture fixes at `value`: export refuses another because `why` (None: not checked,
    a training-only setting)."""
    field: str
    value: Any
    why: str | None = None


class Family(NamedTuple):
    """One architecture: its model file, its table, its tensor maps, and hooks for what relates several keys."""
    model_type: str  # config.json's model_type
    module: Any  # the model file
    keys: tuple  # Key, Fixed and Ours rows
    to_hub: Callable  # model -> {hub name: tensor}; on a meta model, the names and shapes a checkpoint must have
    from_hub: Callable  # (model, take, config.json) -> our state dict; take(name) pops a checkpoint's tensor
    rope: dict | None = None  # rope_type -> the rows it adds (None: no RoPE)
    ties: str = "field"  # the output head: "always" tied (gpt.py), "never" (mla_moe.py), or as tie_embeddings says
    read: Callable | None = None  # (view, fields, arch): what relates several keys
    write: Callable | None = None  # (model, config, hub, arch): the same on export, and its refusals beyond the table
    explicit: Callable | None = None  # (model, module) -> the config with its derived sizes written out, for export
    exports: Callable = lambda config: True  # export writes a model of this config as this architecture
    prepare: Callable | None = None  # (state, config): drop or trim the checkpoint tensors that are not weights


def refuse(arch, key, value, why):
    return ValueError(f"{arch} with {key}={value!r}: {why}")


def unexportable(model, arch, key, value, why):
    return ValueError(f"{type(model).__name__} with {key}={value!r} has no exact {arch} counterpart: {why}")


# ----------------------------------------------------------------------------- GPT-2: gpt.py

GPT2_KEYS = (
    Key("n_layer", "n_layer"), Key("n_head", "n_head"), Key("n_embd", "n_embd"), Key("n_positions", "block_size"),
    Key("vocab_size", "vocab_size"),
    Key("activation_function", "gelu_approximate", "gelu_new",  # gelu_new is GPT-2's tanh form
        values={"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}),
    Fixed("layer_norm_epsilon", 1e-5, "gpt.py's LayerNorms add 1e-5"),
    Fixed("tie_word_embeddings", True, "gpt.py always ties the output head to wte"),
    Fixed("add_cross_attention", False, "gpt.py has no cross-attention"),
    Fixed("scale_attn_weights", True, "gpt.py divides attention scores by sqrt(head size)"),
    Fixed("scale_attn_by_inverse_layer_idx", False, "gpt.py scales every layer's attention alike"),
    Ours("bias", True))  # GPT-2 files have every bias: a model without them exports zeros, which compute the same
# the four Linear layers of a block are Conv1D in GPT-2's files, their weights stored (in, out); every other name is
# gpt.py's own (it uses OpenAI's names), and the head is wte
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def gpt2_read(view, fields, arch):
    if view.get("n_inner") not in (None, 4 * fields["n_embd"]):
        raise refuse(arch, "n_inner", view["n_inner"], f"gpt.py's MLP is 4 * n_embd = {4 * fields['n_embd']} wide")


def gpt2_prepare(state, config):
    """Drop the causal-mask buffers older files carry; trim the learned positions to a shorter block_size."""
    for key in [k for k in state if k.endswith((".attn.bias", ".attn.masked_bias"))]:
        del state[key]
    if "wpe.weight" in state and state["wpe.weight"].size(0) < config.block_size:
        raise ValueError(f"block_size {config.block_size}: this GPT-2 learned {state['wpe.weight'].size(0)} "
                         f"positions, no more")
    if "wpe.weight" in state:
        state["wpe.weight"] = state["wpe.weight"][:config.block_size]


def gpt_to_hub(model):
    state = model.state_dict()
    if not model.config.bias:
        with torch.device("meta"):
            layout = gpt.GPT(dataclasses.replace(model.config, bias=True)).state_dict()  # every bias's name, shape
        state = {k: state[k] if k in state else torch.zeros(t.shape, dtype=model.wte.weight.dtype)
                 for k, t in layout.items()}
    return {k: t.t() if k.endswith(CONV1D_WEIGHTS) else t for k, t in state.items() if k != "lm_head.weight"}


def gpt_from_hub(model, take, hub_config=None):
    ours = {k: take(k).t().contiguous() if k.endswith(CONV1D_WEIGHTS) else take(k)  # in nn.Linear's own layout
            for k in model.state_dict() if k != "lm_head.weight"}
    return {**ours, "lm_head.weight": ours["wte.weight"]}


# ----------------------------------------------------------------------------- Llama and Qwen3: modern_gpt.py

ROPE = {"default": ()}  # rope_theta alone
ROPE_THETA = Key("rope_parameters.rope_theta", "rope_theta", 10000.0)
NO_BIASES = (Fixed("hidden_act", "silu", "{file}'s feed-forward is SwiGLU (silu)"),
             Fixed("attention_bias", False, "{file} has no biases"))
ATTENTION_KEYS = (  # Llama, Qwen3 and Qwen3-MoE alike
    Key("vocab_size", "vocab_size"), Key("hidden_size", "n_embd"), Key("num_hidden_layers", "n_layer"),
    Key("num_attention_heads", "n_head"), Key("num_key_value_heads", "n_kv_head", None),  # None: n_head
    Key("max_position_embeddings", "block_size", 2048), Key("rms_norm_eps", "norm_eps", 1e-6),
    Key("tie_word_embeddings", "tie_embeddings", False), ROPE_THETA, *NO_BIASES,
    Ours("multiple_of", 1))  # the SwiGLU is intermediate_size wide, exactly
LLAMA_KEYS = (*ATTENTION_KEYS, Key("head_dim", "head_dim", 0, null=0), Key("intermediate_size", "mlp_hidden"),
              Fixed("mlp_bias", False, "{file} has no biases"), Ours("qk_norm", False))  # head_dim 0: C / n_head
QWEN3_KEYS = (*ATTENTION_KEYS, Key("head_dim", "head_dim", 128, null=0), Key("intermediate_size", "mlp_hidden"),
              Fixed("use_sliding_window", False, "{file} attends to the whole context"), Ours("qk_norm", True))
LLAMA3 = {**ROPE, "llama3": (Key("rope_parameters.factor", "rope_scaling_factor"),
                             Key("rope_parameters.low_freq_factor", "rope_low_freq_factor"),
                             Key("rope_parameters.high_freq_factor", "rope_high_freq_factor"),
                             Key("rope_parameters.original_max_position_embeddings", "rope_original_len"))}
SWIGLU = (("gate.weight", "gate_proj.weight"), ("up.weight", "up_proj.weight"), ("down.weight", "down_proj.weight"))
LLAMA_NAMES = (("norm_1.weight", "input_layernorm.weight"), ("norm_2.weight", "post_attention_layernorm.weight"),
               ("attn.c_proj.weight", "self_attn.o_proj.weight"), ("attn.q_norm.weight", "self_attn.q_norm.weight"),
               ("attn.k_norm.weight", "self_attn.k_norm.weight"),
               *((f"mlp.{ours}", f"mlp.{hub}") for ours, hub in SWIGLU))  # and c_attn = q_proj, k_proj, v_proj


def attention_read(view, fields, arch):
    fields["n_kv_head"] = fields["n_kv_head"] or fields["n_head"]
    other = [t for t in view.get("layer_types") or [] if t != "full_attention"]
    if other:
        raise refuse(arch, "layer_types", other[0], "the model file attends to the whole context in every layer")
    if fields.get("rope_high_freq_factor", 4.0) <= fields.get("rope_low_freq_factor", 1.0):
        raise refuse(arch, "rope_parameters.high_freq_factor", fields["rope_high_freq_factor"],
                     "it must exceed low_freq_factor")


def explicit_sizes(model, module):
    """The config with the sizes it derives written out (the head size, the SwiGLU widths; Qwen3-MoE's too)."""
    c = model.config
    sizes = {"head_dim": model.h[0].attn.head_dim, "multiple_of": 1,
             "mlp_hidden": module.swiglu_hidden(c.n_embd, c.mlp_hidden, c.multiple_of)}
    if module is moe_gpt:
        experts = model.moe_layers()
        sizes["moe_hidden"] = experts[0].experts.gate.size(1) if experts else sizes["mlp_hidden"]
    return dataclasses.replace(c, **sizes)


def renames(model, names):
    """(our name, hub name) of the embedding, final norm and head, and of every block's parameter in `names`."""
    state = model.state_dict()
    yield from (("wte.weight", "model.embed_tokens.weight"), ("norm_f.weight", "model.norm.weight"))
    if model.lm_head.weight is not model.wte.weight:
        yield "lm_head.weight", "lm_head.weight"
    yield from ((f"h.{i}.{ours}", f"model.layers.{i}.{hub}") for i in range(len(model.h)) for ours, hub in names
                if f"h.{i}.{ours}" in state)


def llama_to_hub(model, names=LLAMA_NAMES):
    state = model.state_dict()
    hub = {h: state[o] for o, h in renames(model, names)}
    for i, block in enumerate(model.h):  # c_attn cut into q, k and v
        q, kv = block.attn.n_head * block.attn.head_dim, block.attn.n_kv_head * block.attn.head_dim
        for x, w in zip("qkv", state[f"h.{i}.attn.c_attn.weight"].split([q, kv, kv])):
            hub[f"model.layers.{i}.self_attn.{x}_proj.weight"] = w
    return hub


def llama_from_hub(model, take, hub_config=None, names=LLAMA_NAMES):
    ours = {o: take(h, router=o.endswith("router.weight")) for o, h in renames(model, names)}
    for i in range(len(model.h)):
        ours[f"h.{i}.attn.c_attn.weight"] = torch.cat([take(f"model.layers.{i}.self_attn.{x}_proj.weight")
                                                       for x in "qkv"])
    if model.lm_head.weight is model.wte.weight:
        ours["lm_head.weight"] = ours["wte.weight"]
    return ours


# ----------------------------------------------------------------------------- Qwen3-MoE: moe_gpt.py
# dense blocks first (mlp_only_layers 0 .. k-1), then softmax top-k over whole experts; no shared experts, no scaling

QWEN3_MOE_KEYS = (
    *ATTENTION_KEYS, Key("head_dim", "head_dim", 0, null=0), Key("intermediate_size", "mlp_hidden", 6144),
    Key("num_experts", "n_routed_experts", 128), Key("num_experts_per_tok", "top_k", 8),
    Key("moe_intermediate_size", "moe_hidden"), Key("norm_topk_prob", "renormalize", False),
    Key("router_aux_loss_coef", "aux_loss_weight", 0.001),
    Fixed("decoder_sparse_step", 1, "moe_gpt.py has MoE in every block after the dense ones"),
    Fixed("use_sliding_window", False, "{file} attends to the whole context"),
    Ours("qk_norm", True, "Qwen3-MoE always normalises q and k (train with --qk_norm true)"),
    Ours("n_shared_experts", 0, "Qwen3-MoE has no shared experts"),
    Ours("granularity", 1, "Qwen3-MoE's experts are whole"), Ours("gate", "softmax", "Qwen3-MoE's gates are a softmax"),
    Ours("routed_scaling_factor", 1.0, "Qwen3-MoE does not scale the routed experts"), Ours("z_loss_weight", 0.0))
QWEN3_MOE_NAMES = (*LLAMA_NAMES, ("mlp.router.weight", "mlp.gate.weight"))  # and each expert's SwiGLU, unstacked


def qwen3_moe_read(view, fields, arch):
    attention_read(view, fields, arch)
    if not fields["n_routed_experts"]:
        raise refuse(arch, "num_experts", fields["n_routed_experts"], "moe_gpt.py needs experts")
    dense = sorted(view.get("mlp_only_layers") or [])
    if dense != list(range(len(dense))):
        raise refuse(arch, "mlp_only_layers", dense, "moe_gpt.py's dense blocks are the first ones (0 .. k-1)")
    fields["first_dense_layers"] = len(dense)


def qwen3_moe_write(model, c, hub, arch):
    if any(bool(moe.router.bias.any()) for moe in model.moe_layers()):
        raise unexportable(model, arch, "router bias", "nonzero", "Qwen3-MoE routes without one (bias_update_rate 0)")
    hub["mlp_only_layers"] = list(range(min(c.first_dense_layers, c.n_layer)))


def qwen3_moe_to_hub(model):
    hub, state = llama_to_hub(model, QWEN3_MOE_NAMES), model.state_dict()
    for i in [i for i, block in enumerate(model.h) if isinstance(block.mlp, moe_gpt.MoE)]:
        for ours, name in SWIGLU:
            for e, w in enumerate(state[f"h.{i}.mlp.experts.{ours.removesuffix('.weight')}"]):
                hub[f"model.layers.{i}.mlp.experts.{e}.{name}"] = w
    return hub


def qwen3_moe_from_hub(model, take, hub_config):
    ours = llama_from_hub(model, take, hub_config, QWEN3_MOE_NAMES)
    for i, moe in [(i, block.mlp) for i, block in enumerate(model.h) if isinstance(block.mlp, moe_gpt.MoE)]:
        ours[f"h.{i}.mlp.router.bias"] = torch.zeros(moe.n_experts)  # Qwen3-MoE has no routing bias
        for name, hub in SWIGLU:
            ours[f"h.{i}.mlp.experts.{name.removesuffix('.weight')}"] = torch.stack(
                [take(f"model.layers.{i}.mlp.experts.{e}.{hub}") for e in range(moe.n_experts)])
    return ours


# ----------------------------------------------------------------------------- DeepSeek-V2 and V3: mla_moe.py
# V3: sigmoid gates plus e_score_correction_bias, groups scored by their two best experts, norm_topk_prob. V2:
# softmax, greedy or groups scored by their best, never renormalised. Absent keys mean transformers' defaults.

def deepseek_keys(v3):
    gate = "sigmoid" if v3 else "softmax"
    return (
        Key("vocab_size", "vocab_size"), Key("hidden_size", "n_embd"), Key("num_hidden_layers", "n_layer"),
        Key("num_attention_heads", "n_head"), Key("max_position_embeddings", "block_size", 2048),
        Key("q_lora_rank", "q_lora_rank", 1536, null=0),  # null: full-rank queries (V2-Lite, Moonlight)
        Key("kv_lora_rank", "kv_lora_rank"), Key("qk_nope_head_dim", "qk_nope_head_dim"),
        Key("qk_rope_head_dim", "qk_rope_head_dim"), Key("v_head_dim", "v_head_dim"),
        Key("rms_norm_eps", "norm_eps", 1e-6), ROPE_THETA, *NO_BIASES,
        Key("intermediate_size", "mlp_hidden", 18432 if v3 else 11008),
        Key("moe_intermediate_size", "moe_hidden", 2048 if v3 else 1407),
        Key("n_routed_experts", "n_routed_experts", 256 if v3 else 64),
        Key("num_experts_per_tok", "top_k", 8 if v3 else None),
        Key("n_shared_experts", "n_shared_experts", 1 if v3 else 2, null=0),
        Key("first_k_dense_replace", "first_dense_layers", 3 if v3 else 0),
        Key("routed_scaling_factor", "routed_scaling_factor", 2.5 if v3 else 1.0),
        Key("n_group", "n_group", 8 if v3 else 1), Key("topk_group", "topk_group", 4 if v3 else 1),
        Fixed("moe_layer_freq", 1, "mla_moe.py has MoE in every block after the dense ones"),
        Fixed("scoring_func", gate, f"transformers' {'V3' if v3 else 'V2'} always scores by {gate}"),
        Ours("gate", gate),
        *((Key("norm_topk_prob", "renormalize", True), Fixed("topk_method", "noaux_tc", "V3 routes by noaux_tc")) if v3
          else (Fixed("norm_topk_prob", False, "transformers' DeepSeek-V2 ignores it and never renormalises"),
                Ours("renormalize", False, "transformers' DeepSeek-V2 never renormalises"))),
        Ours("latent_norm_eps", 1e-6, "transformers fixes the latent RMSNorms' eps at 1e-6, whatever rms_norm_eps "
             "says (train with --latent_norm_eps 1e-6)"),
        Ours("seq_aux_loss_weight", 0.0), Ours("bias_update_rate", 0.0), Ours("mtp_weight", 0.0))


# YaRN as mla_moe.py computes it: frequencies ramped between beta_fast 32 and beta_slow 1, softmax scale times
# (0.1 mscale_all_dim ln(factor) + 1)^2, cos/sin unscaled (attention_factor 1: mscale equal to mscale_all_dim)
YARN = {**ROPE, "yarn": (Key("rope_parameters.factor", "rope_scaling_factor", None),  # None: max_pos / original
                         Key("rope_parameters.original_max_position_embeddings", "rope_original_len"),
                         Key("rope_parameters.mscale_all_dim", "rope_mscale", 0.0),
                         Fixed("rope_parameters.beta_fast", 32, "mla_moe.py's YaRN uses beta_fast 32"),
                         Fixed("rope_parameters.beta_slow", 1, "mla_moe.py's YaRN uses beta_slow 1"),
                         Fixed("rope_parameters.truncate", True, "mla_moe.py rounds YaRN's ramp ends to whole pairs"))}
MLA_NAMES = (("norm_1.weight", "input_layernorm.weight"), ("norm_2.weight", "post_attention_layernorm.weight"),
             ("attn.q_down.weight", "self_attn.q_a_proj.weight"), ("attn.c_proj.weight", "self_attn.o_proj.weight"),
             ("attn.q_norm.weight", "self_attn.q_a_layernorm.weight"),
             ("attn.kv_norm.weight", "self_attn.kv_a_layernorm.weight"), ("mlp.router.weight", "mlp.gate.weight"),
             *((f"mlp.{ours}", f"mlp.{hub}") for ours, hub in SWIGLU),
             *((f"mlp.shared.{ours}", f"mlp.shared_experts.{hub}") for ours, hub in SWIGLU))
# and joined: q_b_proj (or q_proj) = q_up and q_rope head by head, kv_a_proj_with_mqa = kv_down over k_rope,
# kv_b_proj = k_up and v_up head by head; V3's router bias is e_score_correction_bias


def deepseek_read(view, fields, arch):
    if view.get("num_key_value_heads") not in (None, fields["n_head"]):
        raise refuse(arch, "num_key_value_heads", view["num_key_value_heads"], "MLA has one latent for all heads")
    if fields["gate"] == "softmax":
        method = view.get("topk_method") or "greedy"
        if method not in ("greedy", "group_limited_greedy"):
            raise refuse(arch, "topk_method", method, "DeepSeek-V2 routes by greedy or group_limited_greedy")
        if method == "greedy":
            fields["n_group"] = fields["topk_group"] = 1
        kept = fields["topk_group"] * ((fields["n_routed_experts"] or 0) // fields["n_group"])
        if kept < (fields["top_k"] or 0):  # V2 zeroes the other groups' scores, mla_moe.py -inf: the same choice
            raise refuse(arch, "topk_group", fields["topk_group"], f"{kept} experts in the kept groups, < top_k")
    if fields["first_dense_layers"] < fields["n_layer"] and not (fields["n_routed_experts"] and fields["top_k"]):
        raise ValueError(f"{arch}: config.json sets no n_routed_experts / num_experts_per_tok for its MoE blocks")
    fields["n_routed_experts"], fields["top_k"] = fields["n_routed_experts"] or 1, fields["top_k"] or 1
    if view["rope_parameters.rope_type"] == "yarn":
        yarn_read(view, fields, arch)


def yarn_read(view, fields, arch):
    """factor, absent, is max_position_embeddings / original (block_size is still config.json's here); cos and sin
    must stay unscaled: attention_factor 1, which transformers' default get_mscale(mscale) / get_mscale(mscale_all_dim)
    is when the two are equal."""
    factor = fields["rope_scaling_factor"] = fields["rope_scaling_factor"] or (fields["block_size"]
                                                                               / fields["rope_original_len"])

    def get_mscale(m):
        return 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0

    mscale, attention_factor = view.get("rope_parameters.mscale"), view.get("rope_parameters.attention_factor")
    if attention_factor is None:
        both = mscale and fields["rope_mscale"]
        attention_factor = get_mscale(mscale) / get_mscale(fields["rope_mscale"]) if both else get_mscale(1.0)
    if abs(attention_factor - 1.0) > 1e-12:
        raise refuse(arch, "yarn attention_factor", attention_factor, f"mla_moe.py does not scale cos and sin "
                     f"(mscale {mscale} must equal mscale_all_dim {fields['rope_mscale']})")


def deepseek_write(model, c, hub, arch):
    v3 = c.gate == "sigmoid"
    if not c.n_shared_experts and c.first_dense_layers < c.n_layer:
        raise unexportable(model, arch, "n_shared_experts", 0, "transformers' DeepSeek always has shared experts")
    if not v3 and any(bool(moe.router.bias.any()) for moe in model.moe_layers()):
        raise unexportable(model, arch, "router bias", "nonzero", "DeepSeek-V2 routes without one (use sigmoid gates)")
    if v3 and c.n_group > 1 and c.n_routed_experts // c.n_group < 2:
        raise unexportable(model, arch, "n_group", c.n_group, "V3 scores a group by its two best experts: 2+ each")
    if model.mtp is not None:
        print("note: the multi-token-prediction module is not exported (transformers does not run it)", file=sys.stderr)
    hub.update(num_key_value_heads=c.n_head, tie_word_embeddings=False)
    if hub["rope_parameters"]["rope_type"] == "yarn":
        hub["rope_parameters"].update(mscale=c.rope_mscale, attention_factor=1.0)
    if v3:
        hub.update(rope_interleave=True, num_nextn_predict_layers=0)
    else:
        hub["topk_method"] = "group_limited_greedy" if c.n_group > 1 else "greedy"


def deepseek_prepare(state, config):
    """Drop V3's multi-token-prediction layers, stored past num_hidden_layers."""
    for key in [k for k in state if re.match(r"model\.layers\.(\d+)\.", k)]:
        if int(key.split(".")[2]) >= config.n_layer:
            del state[key]


def mla_renames(model):
    yield from renames(model, MLA_NAMES)
    for i, moe in [(i, block.mlp) for i, block in enumerate(model.h) if isinstance(block.mlp, mla_moe.MoE)]:
        for e in range(moe.n_experts):
            yield from ((f"h.{i}.mlp.experts.{e}.{o}", f"model.layers.{i}.mlp.experts.{e}.{h}") for o, h in SWIGLU)


def rope_order(rope_dim, interleaved):
    """Channel order: rotate_half's channel j is the checkpoint's channel order[j]. DeepSeek's RoPE turns pairs
    (0, 1), (2, 3), ...; rotate_half turns (j, j + dr/2): even channels first, then odd (SPEC: rope_interleave)."""
    if not interleaved:
        return torch.arange(rope_dim)
    return torch.cat([torch.arange(0, rope_dim, 2), torch.arange(1, rope_dim, 2)])


def mla_to_hub(model):
    """Always DeepSeek's interleaved RoPE rows (rope_interleave true)."""
    state, c = model.state_dict(), model.config
    H, n, r, vd = c.n_head, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
    back = torch.argsort(rope_order(r, interleaved=True))
    hub = {h: state[o] for o, h in mla_renames(model)}
    for i, block in enumerate(model.h):
        o, p = f"h.{i}.attn.", f"model.layers.{i}."
        q_up, q_rope = state[o + "q_up.weight"], state[o + "q_rope.weight"]
        q_rope = q_rope.view(H, r, -1)[:, back.to(q_rope.device)]
        q = torch.cat([q_up.view(H, n, -1), q_rope], dim=1).reshape(H * (n + r), -1)
        hub[p + ("self_attn.q_b_proj.weight" if c.q_lora_rank else "self_attn.q_proj.weight")] = q
        k_rope = state[o + "k_rope.weight"]
        hub[p + "self_attn.kv_a_proj_with_mqa.weight"] = torch.cat([state[o + "kv_down.weight"],
                                                                    k_rope[back.to(k_rope.device)]])
        k_up, v_up = state[o + "k_up.weight"], state[o + "v_up.weight"]
        hub[p + "self_attn.kv_b_proj.weight"] = torch.cat(
            [k_up.view(H, n, -1), v_up.view(H, vd, -1)], dim=1).reshape(H * (n + vd), -1)
        if isinstance(block.mlp, mla_moe.MoE) and c.gate == "sigmoid":
            hub[p + "mlp.gate.e_score_correction_bias"] = state[f"h.{i}.mlp.router.bias"]
    return hub


def mla_from_hub(model, take, hub_config):
    c = model.config
    H, n, r, vd, kv = c.n_head, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim, c.kv_lora_rank
    v3 = c.gate == "sigmoid"
    order = rope_order(r, interleaved=hub_config.get("rope_interleave", True) or not v3)  # V2 always interleaves
    ours = {o: take(h, router=o.endswith("router.weight")) for o, h in mla_renames(model)}
    for i, block in enumerate(model.h):
        o, p = f"h.{i}.attn.", f"model.layers.{i}.self_attn."
        q = take(p + ("q_b_proj.weight" if c.q_lora_rank else "q_proj.weight")).view(H, n + r, -1)
        ours[o + "q_up.weight"] = q[:, :n].reshape(H * n, -1)
        ours[o + "q_rope.weight"] = q[:, n:][:, order].reshape(H * r, -1)
        kv_a = take(p + "kv_a_proj_with_mqa.weight")
        ours[o + "kv_down.weight"], ours[o + "k_rope.weight"] = kv_a[:kv], kv_a[kv:][order]
        kv_b = take(p + "kv_b_proj.weight").view(H, n + vd, kv)
        ours[o + "k_up.weight"] = kv_b[:, :n].reshape(H * n, kv)
        ours[o + "v_up.weight"] = kv_b[:, n:].reshape(H * vd, kv)
        if isinstance(block.mlp, mla_moe.MoE):
            bias = f"model.layers.{i}.mlp.gate.e_score_correction_bias"
            ours[f"h.{i}.mlp.router.bias"] = take(bias, router=True) if v3 else torch.zeros(block.mlp.n_experts)
    return ours


# ----------------------------------------------------------------------------- the families

FAMILIES = {  # architecture: its family; export writes a model as the first whose model file and `exports` fit it
    "GPT2LMHeadModel": Family("gpt2", gpt, GPT2_KEYS, gpt_to_hub, gpt_from_hub, ties="always", read=gpt2_read,
                              write=lambda model, c, hub, arch: hub.update(n_ctx=c.block_size),  # older tools read it
                              prepare=gpt2_prepare),
    "LlamaForCausalLM": Family("llama", modern_gpt, LLAMA_KEYS, llama_to_hub, llama_from_hub, rope=LLAMA3,
                               read=attention_read, explicit=explicit_sizes, exports=lambda c: not c.qk_norm),
    "Qwen3ForCausalLM": Family("qwen3", modern_gpt, QWEN3_KEYS, llama_to_hub, llama_from_hub, rope=LLAMA3,
                               read=attention_read, explicit=explicit_sizes, exports=lambda c: c.qk_norm),
    "Qwen3MoeForCausalLM": Family("qwen3_moe", moe_gpt, QWEN3_MOE_KEYS, qwen3_moe_to_hub, qwen3_moe_from_hub,
                                  rope=ROPE, read=qwen3_moe_read, write=qwen3_moe_write, explicit=explicit_sizes),
    "DeepseekV3ForCausalLM": Family("deepseek_v3", mla_moe, deepseek_keys(v3=True), mla_to_hub, mla_from_hub,
                                    rope=YARN, ties="never", read=deepseek_read, write=deepseek_write,
                                    exports=lambda c: c.gate == "sigmoid", prepare=deepseek_prepare),
    "DeepseekV2ForCausalLM": Family("deepseek_v2", mla_moe, deepseek_keys(v3=False), mla_to_hub, mla_from_hub,
                                    rope=YARN, ties="never", read=deepseek_read, write=deepseek_write,
                                    exports=lambda c: c.gate == "softmax", prepare=deepseek_prepare),
}
