"""
load_hf.py - Hugging Face-format checkpoints of every family into the matching model file, text in and out with
the checkpoint's tokenizer.json, and any of these models written back in Hugging Face's layout.

    config.json "architectures"        model file       released checkpoints
    GPT2LMHeadModel                    gpt.py           openai-community/gpt2 (-medium, -large, -xl)
    LlamaForCausalLM                   modern_gpt.py    SmolLM2, TinyLlama, Llama 3.x (llama3 RoPE scaling)
    Qwen3ForCausalLM                   modern_gpt.py    Qwen3-0.6B ... (head_dim apart, QK-norm)
    Qwen3MoeForCausalLM                moe_gpt.py       Qwen3-30B-A3B
    DeepseekV3ForCausalLM              mla_moe.py       Moonlight-16B-A3B, DeepSeek-V3 (bf16 copies; FP8 refused)
    DeepseekV2ForCausalLM              mla_moe.py       DeepSeek-V2-Lite, DeepSeek-V2

A checkpoint is a folder (config.json, model.safetensors or shards listed by model.safetensors.index.json,
tokenizer.json) or a hub name, downloaded once into ~/.cache/nanodecoder/OWNER/NAME with a streamed, resumable,
size-checked download (HF_TOKEN, when set, is sent for gated repositories such as meta-llama's). config.json is
read in both forms transformers reads (v5's rope_parameters, or rope_theta + rope_scaling of hub files written by
v4), every tensor's name and shape is checked against it, and a setting the model file cannot compute (biases,
sliding windows, other RoPE variants, FP8 weights, ...) is refused by name: what loads computes what transformers
computes (logits within 1e-4 in float32, tests/test_load_hf.py). DeepSeek rotates interleaved channel pairs, the
model files the halves (rotate_half), so the query and key-rope rows are reordered on the way in and back on the
way out. Nothing is ever unpickled: safetensors, or torch.load(weights_only=True) for a .bin of tensors.

block_size sizes the rotary tables and the preallocated KV cache: it is min(max_position_embeddings, 4096)
unless --block_size says otherwise (longer generations slide the window, as the model files do).

    python load_hf.py --model HuggingFaceTB/SmolLM2-135M --prompt "The capital of France is" --temperature 0
    python load_hf.py --weights path/to/Qwen3-0.6B --prompt "Hello" --max_new_tokens 40      # offline
    HF_TOKEN=hf_... python load_hf.py --model meta-llama/Llama-3.2-1B --prompt "Hello"
    python load_hf.py --model deepseek-ai/DeepSeek-V2-Lite --dtype bfloat16 --prompt "def fib(n):"
    python load_hf.py --ckpt out/ckpt.pt --export out/hf        # a train.py model in HF layout
    python load_hf.py --weights path/to/SmolLM2-135M --export out/smol   # and back

Python: model, tokenizer, folder = load_hf.load("HuggingFaceTB/SmolLM2-135M"); load_hf.export(model, "out/hf").
"""
import argparse
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import replace

import requests
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

import gpt
import mla_moe
import modern_gpt
import moe_gpt

HUB_URL = "https://huggingface.co/{repo}/resolve/main/{filename}"
HUB_REPOS = {name: f"openai-community/{name}" for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "nanodecoder")
DEFAULT_BLOCK_SIZE = 4096  # the context used when config.json allows more (its rotary tables and KV cache)
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# causal-mask buffers that older GPT-2 files carry; they are not weights
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
# config.json's activation_function -> GPTConfig.gelu_approximate ("gelu_new" is GPT-2's tanh form)
ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}
MODEL_TYPES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM",
               "qwen3_moe": "Qwen3MoeForCausalLM", "deepseek_v3": "DeepseekV3ForCausalLM",
               "deepseek_v2": "DeepseekV2ForCausalLM"}
TRAIN_MODEL_FILES = {"gpt": gpt, "moderngpt": modern_gpt, "moegpt": moe_gpt, "mlamoe": mla_moe}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ----------------------------------------------------------------------------- download

def download(url, path, timeout=30, chunk_size=1 << 20, progress=True, headers=None, missing_ok=False):
    """Stream `url` into `path` and return path. An existing `path` is taken as done.

    The bytes go to path + ".part" first; a later call asks the server for the rest of a
    partial file (HTTP Range), and the file is renamed to `path` only once its size equals
    the size the server announced. `timeout` (seconds) bounds the connection and each read.
    `headers` are sent along (a hub token); with missing_ok a 404 returns None instead of failing."""
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    part = path + ".part"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"Accept-Encoding": "identity", **(headers or {})}  # count the file's bytes, not a gzip's
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        with requests.get(url, headers=headers, stream=True, timeout=timeout) as response:
            if response.status_code == 404 and missing_ok:
                return None
            if response.status_code in (401, 403):
                raise ConnectionError(f"{url} answered {response.status_code}: a gated or private repository? "
                                      f"accept its license on huggingface.co and set HF_TOKEN to a token")
            if response.status_code == 416:  # nothing left to send: the part file is already whole
                total = int(response.headers.get("Content-Range", "*/-1").split("/")[-1])
            else:
                response.raise_for_status()
                if response.status_code != 206:  # the server ignored the Range header: start again
                    have = 0
                length = response.headers.get("Content-Length")
                total = have + int(length) if length else -1  # -1: size unknown, not checked
                with open(part, "ab" if have else "wb") as f:
                    received, start = have, time.perf_counter()
                    for chunk in response.iter_content(chunk_size):
                        f.write(chunk)
                        received += len(chunk)
                        if progress:
                            show_progress(os.path.basename(path), received, total, have, start)
                if progress:
                    print(file=sys.stderr)
    except requests.RequestException as err:
        raise ConnectionError(f"download of {url} failed ({type(err).__name__}): check the network and "
                              f"run again to resume, or pass --weights with a local copy") from None
    size = os.path.getsize(part)
    if total >= 0 and size > total:  # not a piece of this file: resuming cannot fix it
        os.remove(part)
        raise ConnectionError(f"download of {url} gave {size:,} bytes, more than its {total:,}: removed, run again")
    if total >= 0 and size != total:
        raise ConnectionError(f"download of {url} stopped at {size:,} of {total:,} bytes: run again to resume")
    os.replace(part, path)
    return path


def show_progress(name, received, total, resumed_from, start):
    """One self-overwriting line: name, MB so far / total, percent, speed."""
    mb = 1 << 20
    speed = (received - resumed_from) / mb / max(time.perf_counter() - start, 1e-9)
    if total > 0:
        line = f"{name}: {received / mb:8.1f} / {total / mb:.1f} MB {100 * received / total:5.1f}%"
    else:
        line = f"{name}: {received / mb:8.1f} MB"
    print(f"\r{line} {speed:6.1f} MB/s", end="", file=sys.stderr, flush=True)


def fetch(repo, cache_dir=DEFAULT_CACHE, timeout=30, progress=True):
    """Download hub repository `repo` ("owner/name") into cache_dir/owner/name once and return the folder:
    config.json, model.safetensors or the shards model.safetensors.index.json lists, and tokenizer.json and
    generation_config.json when it has them. A marker file says the folder is whole: later calls stay offline."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise ValueError(f"{repo!r} is neither a local folder nor a hub name like HuggingFaceTB/SmolLM2-135M")
    folder = os.path.join(cache_dir, *repo.split("/"))
    done = os.path.join(folder, ".complete")
    if os.path.exists(done):
        return folder
    token = os.environ.get("HF_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    def get(filename, missing_ok=False):
        url = HUB_URL.format(repo=repo, filename=filename)
        return download(url, os.path.join(folder, filename), timeout, progress=progress, headers=headers,
                        missing_ok=missing_ok)

    get("config.json")
    for optional in ("generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        get(optional, missing_ok=True)
    index = get("model.safetensors.index.json", missing_ok=True)
    if index:
        for shard in sorted(set(read_json(index).get("weight_map", {}).values())):
            get(shard)
    else:
        get("model.safetensors")
    open(done, "w").close()
    return folder


def fetch_gpt2(name, cache_dir=DEFAULT_CACHE, timeout=30):
    """Download config.json and model.safetensors of GPT-2 `name` (once) into cache_dir/name; return the folder."""
    if name not in HUB_REPOS:
        raise ValueError(f"unknown GPT-2 model {name!r}: choose one of {', '.join(HUB_REPOS)}")
    folder = os.path.join(cache_dir, name)
    for filename in ("config.json", "model.safetensors"):
        download(HUB_URL.format(repo=HUB_REPOS[name], filename=filename), os.path.join(folder, filename), timeout)
    return folder


# ----------------------------------------------------------------------------- reading files

def read_json(path):
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except ValueError as err:
            raise ValueError(f"{path} is not valid JSON ({err})") from None


def read_safetensors(path, state):
    """Add every tensor of safetensors file `path` to `state`."""
    try:
        with safe_open(path, framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (a safe_open handle is no dict)
                state[key] = f.get_tensor(key)
    except SafetensorError as err:
        raise ValueError(f"{path} is not a readable safetensors file ({str(err).splitlines()[0]})") from None
    return state


def read_torch(path):
    """Tensors from a PyTorch .bin/.pt file, read with weights_only=True; a train.py checkpoint is pointed to --ckpt."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a zip, a pickle with code, cut short: torch.load has many ways to say so
        raise ValueError(f"{path} is neither safetensors nor a PyTorch file of tensors "
                         f"({type(err).__name__})") from err
    if isinstance(state, dict) and "model_type" in state and "model" in state:
        raise ValueError(f"{path} is a checkpoint written by train.py: pass it as --ckpt {path}")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state dict of tensors")
    return state


def read_weights(path):
    """(tensors, config.json as a dict or None) from a weights file or a folder: model.safetensors.index.json and
    its shards, model.safetensors, pytorch_model.bin, or the folder's only *.safetensors."""
    config = None
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "config.json")):
            config = read_json(os.path.join(path, "config.json"))
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.exists(index):
            state = {}
            for shard in sorted(set(read_json(index).get("weight_map", {}).values())):
                if not os.path.exists(os.path.join(path, shard)):
                    raise FileNotFoundError(f"{index} lists {shard}, which is not in {path}: download it")
                read_safetensors(os.path.join(path, shard), state)
            return state, config
        names = sorted(os.listdir(path))
        found = [n for n in ("model.safetensors", "pytorch_model.bin") if n in names]
        others = [n for n in names if n.endswith(".safetensors")]
        found = found or (others if len(others) == 1 else [])  # one file of another name is taken too
        if not found:
            raise FileNotFoundError(f"no model.safetensors (or its index, or pytorch_model.bin) in {path}: "
                                    f"download one, or drop --weights to fetch it")
        path = os.path.join(path, found[0])
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights {path}: no such file or folder (pass a Hugging Face folder or a "
                                f".safetensors file)")
    if path.endswith(".safetensors"):
        return read_safetensors(path, {}), config
    return read_torch(path), config


class HFTokenizer:
    """A checkpoint's tokenizer.json, run by the tokenizers library. encode adds what its post-processor adds (the
    BOS token of Llama 3, TinyLlama, DeepSeek), decode drops special tokens."""

    def __init__(self, path):
        try:
            from tokenizers import Tokenizer  # only needed here: the model files use tiktoken
        except ImportError:
            raise ValueError("reading tokenizer.json needs the tokenizers package: pip install tokenizers") from None
        try:
            self.tokenizer = Tokenizer.from_file(path)
        except Exception as err:  # the library raises a plain Exception for a bad file
            why = (str(err).splitlines() or [type(err).__name__])[0]
            raise ValueError(f"{path} is not a tokenizer.json the tokenizers library reads ({why})") from err
        self.kind, self.vocab_size = "tokenizer.json", self.tokenizer.get_vocab_size()

    def encode(self, text):
        return self.tokenizer.encode(text).ids

    def decode(self, ids):
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


# ----------------------------------------------------------------------------- config.json -> model config

def architecture(cfg):
    """The one architecture config.json names (`architectures`, else its `model_type`), checked to be supported."""
    names = cfg.get("architectures") or [MODEL_TYPES.get(cfg.get("model_type"), cfg.get("model_type"))]
    arch = names[0]
    if arch not in FAMILIES:
        raise ValueError(f"architecture {arch!r} is not supported: load_hf.py reads {', '.join(FAMILIES)}")
    return arch


def need(cfg, key, arch):
    if cfg.get(key) is None:
        raise ValueError(f"config.json has no {key!r}: it is not a complete {arch} config")
    return cfg[key]


def refuse(arch, key, value, why):
    return ValueError(f"{arch} with {key}={value!r}: {why}")


def check_common(cfg, arch, file):
    """The settings every family refuses: quantized weights, biases, an activation other than SiLU."""
    if cfg.get("quantization_config"):
        method = cfg["quantization_config"].get("quant_method", cfg["quantization_config"])
        raise refuse(arch, "quantization_config.quant_method", method, f"{file} reads float weights only "
                     f"(DeepSeek-V3's hub weights are FP8: use a bf16 copy)")
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key):
            raise refuse(arch, key, cfg[key], f"{file} has no biases")
    if cfg.get("hidden_act", "silu") != "silu":
        raise refuse(arch, "hidden_act", cfg["hidden_act"], f"{file}'s feed-forward is SwiGLU (silu)")


def rope_settings(cfg, arch, allowed):
    """(kind, theta, parameters) of config.json's RoPE, in v5's rope_parameters or v4's rope_theta + rope_scaling."""
    rp = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    kind = rp.get("rope_type", rp.get("type", "default"))
    theta = rp.get("rope_theta", cfg.get("rope_theta", 10000.0))
    if kind not in allowed:
        raise refuse(arch, "rope_type", kind, f"the model file computes {' and '.join(allowed)} RoPE only")
    partial = rp.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise refuse(arch, "partial_rotary_factor", partial, "the model file rotates the whole head")
    if kind != "default":  # transformers' own default (Phi-3 keeps this key outside rope_parameters)
        rp["original_max_position_embeddings"] = (cfg.get("original_max_position_embeddings")
                                                  or rp.get("original_max_position_embeddings")
                                                  or cfg.get("max_position_embeddings"))
    return kind, float(theta), rp


def context(cfg, block_size, key="max_position_embeddings", default=2048):
    """block_size: the user's, else config.json's context capped at DEFAULT_BLOCK_SIZE."""
    return block_size or min(int(cfg.get(key) or default), DEFAULT_BLOCK_SIZE)


def config_from_hub(hub_config, name="gpt2", block_size=None):
    """A GPTConfig from a Hugging Face GPT-2 config.json (a dict), or from preset `name`
    when there is none. Real GPT-2 has biases everywhere and a 1024-token context."""
    if hub_config is None:
        if name not in HUB_REPOS:
            raise ValueError(f"no config.json next to the weights and {name!r} is no GPT-2 preset: "
                             f"pass --model {', '.join(HUB_REPOS)}")
        return gpt.GPTConfig(**gpt.PRESETS[name], block_size=block_size or 1024, vocab_size=50257, bias=True)
    arch = "GPT2LMHeadModel"
    activation = hub_config.get("activation_function", "gelu_new")  # the Hugging Face default
    if activation not in ACTIVATIONS:
        raise ValueError(f"config.json asks for activation {activation!r}: gpt.py has {', '.join(ACTIVATIONS)}")
    for key, value in (("add_cross_attention", False), ("scale_attn_by_inverse_layer_idx", False),
                       ("scale_attn_weights", True), ("layer_norm_epsilon", 1e-5)):
        if hub_config.get(key, value) != value:
            raise refuse(arch, key, hub_config[key], f"gpt.py computes GPT-2 with {key}={value}")
    if hub_config.get("quantization_config"):
        raise refuse(arch, "quantization_config", hub_config["quantization_config"], "gpt.py reads float weights")
    try:
        n_embd, n_positions = hub_config["n_embd"], hub_config["n_positions"]
        if hub_config.get("n_inner") not in (None, 4 * n_embd):
            raise refuse(arch, "n_inner", hub_config["n_inner"], f"gpt.py's MLP is 4 * n_embd = {4 * n_embd} wide")
        if block_size and block_size > n_positions:
            raise ValueError(f"--block_size {block_size}: GPT-2 learned {n_positions} positions, no more")
        return gpt.GPTConfig(n_layer=hub_config["n_layer"], n_head=hub_config["n_head"], n_embd=n_embd,
                             block_size=block_size or n_positions, vocab_size=hub_config["vocab_size"], bias=True,
                             gelu_approximate=ACTIVATIONS[activation])
    except KeyError as err:
        raise ValueError(f"config.json has no {err.args[0]!r}: it is not a GPT-2 config") from None


def modern_config(cfg, arch, block_size):
    """Llama and Qwen3 -> ModernGPTConfig (multiple_of 1: mlp_hidden is intermediate_size exactly)."""
    check_common(cfg, arch, "modern_gpt.py")
    qwen3 = arch == "Qwen3ForCausalLM"
    if qwen3:
        check_no_sliding_window(cfg, arch)
    kind, theta, rp = rope_settings(cfg, arch, ("default", "llama3"))
    scaling = {}
    if kind == "llama3":
        try:
            scaling = {"rope_scaling_factor": float(rp["factor"]), "rope_low_freq_factor": float(rp["low_freq_factor"]),
                       "rope_high_freq_factor": float(rp["high_freq_factor"]),
                       "rope_original_len": int(rp["original_max_position_embeddings"])}
        except (KeyError, TypeError) as err:
            raise ValueError(f"{arch}: llama3 rope parameters lack {err}") from None
        if scaling["rope_high_freq_factor"] <= scaling["rope_low_freq_factor"]:
            raise refuse(arch, "high_freq_factor", rp["high_freq_factor"], "it must exceed low_freq_factor")
    n_head = need(cfg, "num_attention_heads", arch)
    head_dim = cfg.get("head_dim", 128 if qwen3 else None) or 0  # Qwen3's default is 128, Llama's n_embd / n_head
    return modern_gpt.ModernGPTConfig(
        block_size=context(cfg, block_size), vocab_size=need(cfg, "vocab_size", arch),
        n_layer=need(cfg, "num_hidden_layers", arch), n_head=n_head, n_kv_head=cfg.get("num_key_value_heads") or n_head,
        n_embd=need(cfg, "hidden_size", arch), head_dim=head_dim, mlp_hidden=need(cfg, "intermediate_size", arch),
        multiple_of=1, rope_theta=theta, qk_norm=qwen3, tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        norm_eps=cfg.get("rms_norm_eps", 1e-6), dropout=0.0, **scaling)


def check_no_sliding_window(cfg, arch):
    if cfg.get("use_sliding_window"):
        raise refuse(arch, "use_sliding_window", True, "the model file attends to the whole context")
    other = [t for t in cfg.get("layer_types") or [] if t != "full_attention"]
    if other:
        raise refuse(arch, "layer_types", other[0], "the model file attends to the whole context in every layer")


def qwen3_moe_config(cfg, arch, block_size):
    """Qwen3-MoE -> MoEGPTConfig: dense blocks first (mlp_only_layers must be 0..k-1), then softmax top-k MoE."""
    check_common(cfg, arch, "moe_gpt.py")
    check_no_sliding_window(cfg, arch)
    theta = rope_settings(cfg, arch, ("default",))[1]
    n_layer, n_experts = need(cfg, "num_hidden_layers", arch), cfg.get("num_experts", cfg.get("num_local_experts", 128))
    if not n_experts:
        raise refuse(arch, "num_experts", n_experts, "a Qwen3-MoE without experts: moe_gpt.py needs some")
    if cfg.get("decoder_sparse_step", 1) != 1:
        raise refuse(arch, "decoder_sparse_step", cfg["decoder_sparse_step"],
                     "moe_gpt.py has MoE in every block after the dense ones")
    dense = sorted(cfg.get("mlp_only_layers") or [])
    if dense != list(range(len(dense))):
        raise refuse(arch, "mlp_only_layers", dense, "moe_gpt.py's dense blocks are the first ones (0 .. k-1)")
    n_head = need(cfg, "num_attention_heads", arch)
    return moe_gpt.MoEGPTConfig(
        block_size=context(cfg, block_size), vocab_size=need(cfg, "vocab_size", arch), n_layer=n_layer,
        n_head=n_head, n_kv_head=cfg.get("num_key_value_heads") or n_head, n_embd=need(cfg, "hidden_size", arch),
        head_dim=cfg.get("head_dim") or 0, mlp_hidden=cfg.get("intermediate_size") or 1, multiple_of=1,
        rope_theta=theta, qk_norm=True,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)), norm_eps=cfg.get("rms_norm_eps", 1e-6),
        dropout=0.0, n_routed_experts=n_experts, top_k=cfg.get("num_experts_per_tok", 8), n_shared_experts=0,
        granularity=1, moe_hidden=need(cfg, "moe_intermediate_size", arch), first_dense_layers=len(dense),
        gate="softmax", renormalize=bool(cfg.get("norm_topk_prob", False)),
        aux_loss_weight=cfg.get("router_aux_loss_coef", 0.001), z_loss_weight=0.0, routed_scaling_factor=1.0)


def deepseek_config(cfg, arch, block_size):
    """DeepSeek-V2 / V3 -> MLAMoEConfig. V3: sigmoid gates plus e_score_correction_bias, groups scored by their two
    best, norm_topk_prob. V2: softmax, greedy or groups scored by their best, never renormalised."""
    v3 = arch == "DeepseekV3ForCausalLM"
    check_common(cfg, arch, "mla_moe.py")
    n_head = need(cfg, "num_attention_heads", arch)
    if cfg.get("num_key_value_heads") not in (None, n_head):
        raise refuse(arch, "num_key_value_heads", cfg["num_key_value_heads"], "MLA has one latent for all heads")
    if cfg.get("moe_layer_freq", 1) != 1:
        raise refuse(arch, "moe_layer_freq", cfg["moe_layer_freq"], "mla_moe.py has MoE in every block after the dense")
    scoring, method = ("sigmoid", ("noaux_tc",)) if v3 else ("softmax", ("greedy", "group_limited_greedy"))
    if cfg.get("scoring_func", scoring) != scoring:
        raise refuse(arch, "scoring_func", cfg["scoring_func"], f"transformers' {arch} always scores by {scoring}")
    topk_method = cfg.get("topk_method") or method[0]
    if topk_method not in method:
        raise refuse(arch, "topk_method", topk_method, f"transformers' {arch} routes by {' or '.join(method)}")
    if not v3 and cfg.get("norm_topk_prob"):
        raise refuse(arch, "norm_topk_prob", True, "transformers' DeepSeek-V2 ignores it and never renormalises")
    grouped = v3 or topk_method == "group_limited_greedy"  # absent keys: transformers' defaults (V3's are 8 and 4)
    n_group, topk_group = (cfg.get("n_group", 8 if v3 else None) or 1,
                           cfg.get("topk_group", 4 if v3 else None) or 1) if grouped else (1, 1)
    if not v3 and grouped:  # V2 zeroes the other groups' scores, mla_moe.py sets them to -inf: the same choice
        kept = topk_group * ((cfg.get("n_routed_experts") or 0) // n_group)  # while the kept groups hold top_k
        if kept < (cfg.get("num_experts_per_tok") or 0):
            raise refuse(arch, "topk_group", topk_group, f"{kept} experts in the kept groups, fewer than top_k")
    kind, theta, rp = rope_settings(cfg, arch, ("default", "yarn"))
    yarn = {"rope_scaling_factor": 1.0, "rope_mscale": 0.0}
    if kind == "yarn":
        yarn = yarn_settings(rp, cfg, arch)
    n_layer, n_experts = need(cfg, "num_hidden_layers", arch), cfg.get("n_routed_experts", 256 if v3 else 64)
    first_dense = cfg.get("first_k_dense_replace", 3 if v3 else 0) or 0
    top_k = cfg.get("num_experts_per_tok", 8 if v3 else None)
    if first_dense < n_layer and not (n_experts and top_k):
        raise ValueError(f"{arch}: config.json sets no n_routed_experts / num_experts_per_tok for its MoE blocks")
    return mla_moe.MLAMoEConfig(
        block_size=context(cfg, block_size), vocab_size=need(cfg, "vocab_size", arch), n_layer=n_layer,
        n_head=n_head, n_embd=need(cfg, "hidden_size", arch), q_lora_rank=cfg.get("q_lora_rank", 1536) or 0,
        kv_lora_rank=need(cfg, "kv_lora_rank", arch), qk_nope_head_dim=need(cfg, "qk_nope_head_dim", arch),
        qk_rope_head_dim=need(cfg, "qk_rope_head_dim", arch), v_head_dim=need(cfg, "v_head_dim", arch),
        latent_norm_eps=1e-6,  # transformers' q_a_layernorm and kv_a_layernorm ignore rms_norm_eps
        rope_theta=theta, mlp_hidden=cfg.get("intermediate_size") or 1, norm_eps=cfg.get("rms_norm_eps", 1e-6),
        n_routed_experts=n_experts or 1, top_k=top_k or 1,
        n_shared_experts=cfg.get("n_shared_experts", 1 if v3 else 2) or 0,
        moe_hidden=cfg.get("moe_intermediate_size") or 1,
        first_dense_layers=first_dense, gate=scoring, renormalize=bool(v3 and cfg.get("norm_topk_prob", True)),
        routed_scaling_factor=float(cfg.get("routed_scaling_factor", 2.5 if v3 else 1.0)), n_group=n_group,
        topk_group=topk_group, seq_aux_loss_weight=0.0, bias_update_rate=0.0, mtp_weight=0.0, **yarn)


def yarn_settings(rp, cfg, arch):
    """YaRN as mla_moe.py computes it: frequencies ramped between beta_fast 32 and beta_slow 1, softmax scale times
    (0.1 mscale_all_dim ln(factor) + 1)^2, and cos/sin unscaled, which transformers does when attention_factor is 1."""
    factor = rp.get("factor") or cfg["max_position_embeddings"] / rp["original_max_position_embeddings"]
    mscale, mscale_all_dim = rp.get("mscale"), rp.get("mscale_all_dim")

    def get_mscale(m=1.0):
        return 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0

    attention_factor = rp.get("attention_factor")
    if attention_factor is None and mscale and mscale_all_dim:
        attention_factor = get_mscale(mscale) / get_mscale(mscale_all_dim)
    elif attention_factor is None:
        attention_factor = get_mscale()
    if abs(attention_factor - 1.0) > 1e-12:
        raise refuse(arch, "yarn attention_factor", attention_factor, "mla_moe.py does not scale cos and sin "
                     f"(mscale {mscale} must equal mscale_all_dim {mscale_all_dim})")
    for key, value in (("beta_fast", 32), ("beta_slow", 1)):
        if (rp.get(key) or value) != value:  # transformers reads 0 and null as the default too
            raise refuse(arch, f"yarn {key}", rp[key], f"mla_moe.py's YaRN uses {key} {value}")
    if not rp.get("truncate", True):
        raise refuse(arch, "yarn truncate", rp["truncate"], "mla_moe.py rounds YaRN's ramp ends to whole pairs")
    return {"rope_scaling_factor": float(factor), "rope_original_len": int(rp["original_max_position_embeddings"]),
            "rope_mscale": float(mscale_all_dim or 0.0)}


# ----------------------------------------------------------------------------- tensor names, both ways
# Each family: renames(model) yields (our name, hub name) pairs; to_hub / from_hub add the tensors that are cut or
# joined on the way. from_hub's `take(name)` pops a hub tensor (in the target dtype); to_hub works on meta tensors
# too, which is how a checkpoint's names and shapes are checked before anything is loaded.

def gpt_hub_state(state):
    """gpt.py's state dict -> GPT-2's names (OpenAI's, without the head, which is wte): Conv1D weights transposed."""
    return {name: t.t() if name.endswith(CONV1D_WEIGHTS) else t
            for name, t in state.items() if name != "lm_head.weight"}


def gpt_to_hub(model):
    return gpt_hub_state(model.state_dict())


def gpt_from_hub(model, take):
    ours = {name: take(name).t() if name.endswith(CONV1D_WEIGHTS) else take(name)
            for name in model.state_dict() if name != "lm_head.weight"}
    ours["lm_head.weight"] = ours["wte.weight"]
    return ours


def layer_renames(model, names):
    """(h.i.ours, model.layers.i.hub) for every block's parameter listed in `names` that the block has."""
    state = model.state_dict()
    for i in range(len(model.h)):
        for ours, hub in names:
            if f"h.{i}.{ours}" in state:
                yield f"h.{i}.{ours}", f"model.layers.{i}.{hub}"


def top_renames(model):
    yield "wte.weight", "model.embed_tokens.weight"
    yield "norm_f.weight", "model.norm.weight"
    if model.lm_head.weight is not model.wte.weight:
        yield "lm_head.weight", "lm_head.weight"


SWIGLU = (("gate.weight", "gate_proj.weight"), ("up.weight", "up_proj.weight"), ("down.weight", "down_proj.weight"))
LLAMA_NAMES = (("norm_1.weight", "input_layernorm.weight"), ("norm_2.weight", "post_attention_layernorm.weight"),
               ("attn.c_proj.weight", "self_attn.o_proj.weight"), ("attn.q_norm.weight", "self_attn.q_norm.weight"),
               ("attn.k_norm.weight", "self_attn.k_norm.weight"), ("mlp.router.weight", "mlp.gate.weight"),
               *((f"mlp.{ours}", f"mlp.{hub}") for ours, hub in SWIGLU))


def llama_renames(model):
    yield from top_renames(model)
    yield from layer_renames(model, LLAMA_NAMES)


def llama_to_hub(model):
    """ModernGPT and MoEGPT -> Llama / Qwen3 / Qwen3-MoE names: c_attn cut into q, k, v; stacked experts unstacked."""
    state = model.state_dict()
    hub = {h: state[o] for o, h in llama_renames(model)}
    for i, block in enumerate(model.h):
        attn, p = block.attn, f"model.layers.{i}."
        sizes = [attn.n_head * attn.head_dim] + 2 * [attn.n_kv_head * attn.head_dim]
        for x, w in zip("qkv", state[f"h.{i}.attn.c_attn.weight"].split(sizes)):
            hub[p + f"self_attn.{x}_proj.weight"] = w
        if isinstance(block.mlp, moe_gpt.MoE):
            for ours, name in SWIGLU:
                for e, w in enumerate(state[f"h.{i}.mlp.experts.{ours.removesuffix('.weight')}"].unbind(0)):
                    hub[p + f"mlp.experts.{e}.{name}"] = w
    return hub


def llama_from_hub(model, take):
    ours = {o: take(h, router=o.endswith("router.weight")) for o, h in llama_renames(model)}
    for i, block in enumerate(model.h):
        p = f"model.layers.{i}."
        ours[f"h.{i}.attn.c_attn.weight"] = torch.cat([take(p + f"self_attn.{x}_proj.weight") for x in "qkv"])
        if isinstance(block.mlp, moe_gpt.MoE):
            ours[f"h.{i}.mlp.router.bias"] = torch.zeros(block.mlp.n_experts)  # Qwen3-MoE has no routing bias
            for name, hub in SWIGLU:
                ours[f"h.{i}.mlp.experts.{name.removesuffix('.weight')}"] = torch.stack(
                    [take(p + f"mlp.experts.{e}.{hub}") for e in range(block.mlp.n_experts)])
    if model.lm_head.weight is model.wte.weight:
        ours["lm_head.weight"] = ours["wte.weight"]
    return ours


MLA_NAMES = (("norm_1.weight", "input_layernorm.weight"), ("norm_2.weight", "post_attention_layernorm.weight"),
             ("attn.q_down.weight", "self_attn.q_a_proj.weight"),
             ("attn.q_norm.weight", "self_attn.q_a_layernorm.weight"),
             ("attn.kv_norm.weight", "self_attn.kv_a_layernorm.weight"),
             ("attn.c_proj.weight", "self_attn.o_proj.weight"),
             ("mlp.router.weight", "mlp.gate.weight"),
             *((f"mlp.{ours}", f"mlp.{hub}") for ours, hub in SWIGLU),
             *((f"mlp.shared.{ours}", f"mlp.shared_experts.{hub}") for ours, hub in SWIGLU))


def mla_renames(model):
    yield from top_renames(model)
    yield from layer_renames(model, MLA_NAMES)
    for i, block in enumerate(model.h):
        if isinstance(block.mlp, mla_moe.MoE):
            for e in range(block.mlp.n_experts):
                for ours, hub in SWIGLU:
                    yield f"h.{i}.mlp.experts.{e}.{ours}", f"model.layers.{i}.mlp.experts.{e}.{hub}"


def interleave_order(rope_dim, interleaved):
    """Channel order: rotate_half's channel j is the checkpoint's channel order[j]. DeepSeek's RoPE turns pairs
    (0, 1), (2, 3), ...; rotate_half turns (j, j + dr/2): even channels first, then odd (SPEC: rope_interleave)."""
    if not interleaved:
        return torch.arange(rope_dim)
    return torch.cat([torch.arange(0, rope_dim, 2), torch.arange(1, rope_dim, 2)])


def mla_to_hub(model, interleaved=True, v3=True):
    """MLAMoE -> DeepSeek names: q_up and q_rope joined head by head, kv_down and k_rope stacked, k_up and v_up
    joined head by head; RoPE channels back in interleaved order; V3's router bias is e_score_correction_bias."""
    state, c = model.state_dict(), model.config
    H, n, r, vd = c.n_head, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
    back = torch.argsort(interleave_order(r, interleaved))
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
        if isinstance(block.mlp, mla_moe.MoE) and v3:
            hub[p + "mlp.gate.e_score_correction_bias"] = state[f"h.{i}.mlp.router.bias"]
    return hub


def mla_from_hub(model, take, interleaved=True, v3=True):
    c = model.config
    H, n, r, vd, kv = c.n_head, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim, c.kv_lora_rank
    order = interleave_order(r, interleaved)
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


def deepseek_interleaved(cfg, arch):
    return arch == "DeepseekV2ForCausalLM" or cfg.get("rope_interleave", True)


FAMILIES = {  # architecture: (model file, config reader, to_hub, from_hub)
    "GPT2LMHeadModel": (gpt, lambda cfg, arch, block: config_from_hub(cfg, block_size=block), gpt_to_hub, gpt_from_hub),
    "LlamaForCausalLM": (modern_gpt, modern_config, llama_to_hub, llama_from_hub),
    "Qwen3ForCausalLM": (modern_gpt, modern_config, llama_to_hub, llama_from_hub),
    "Qwen3MoeForCausalLM": (moe_gpt, qwen3_moe_config, llama_to_hub, llama_from_hub),
    "DeepseekV3ForCausalLM": (mla_moe, deepseek_config, mla_to_hub, mla_from_hub),
    "DeepseekV2ForCausalLM": (mla_moe, deepseek_config, mla_to_hub, mla_from_hub),
}


# ----------------------------------------------------------------------------- loading

def normalize(state, arch, n_layer):
    """The checkpoint's tensors under the names to_hub writes: GPT-2 without "transformer." and its mask buffers;
    transformers' fused in-memory experts (gate_up_proj [E, 2I, C], down_proj [E, C, I]) split per expert; keys that
    carry no weights (old rotary inv_freq, FP8 scales, DeepSeek-V3's MTP layers past num_hidden_layers) dropped."""
    out = {}
    for key, tensor in state.items():
        if arch == "GPT2LMHeadModel":
            key = key.removeprefix("transformer.")
            if key.endswith(IGNORED_SUFFIXES):
                continue
        if key.endswith((".rotary_emb.inv_freq", ".weight_scale_inv")):
            continue
        layer = re.match(r"model\.layers\.(\d+)\.", key)
        if arch.startswith("Deepseek") and layer and int(layer.group(1)) >= n_layer:
            continue
        if key.endswith("mlp.experts.gate_up_proj"):
            gate, up = tensor.chunk(2, dim=1)
            for e in range(tensor.size(0)):
                out[key.replace("gate_up_proj", f"{e}.gate_proj.weight")] = gate[e]
                out[key.replace("gate_up_proj", f"{e}.up_proj.weight")] = up[e]
        elif key.endswith("mlp.experts.down_proj"):
            for e in range(tensor.size(0)):
                out[key.replace("down_proj", f"{e}.down_proj.weight")] = tensor[e]
        else:
            out[key] = tensor
    return out


def check_tensors(state, expected, arch):
    """Every expected tensor present with its shape, nothing else: one error naming the first mismatch."""
    for key, shape in expected.items():
        if key in state and tuple(state[key].shape) != tuple(shape):
            raise ValueError(f"weight {key!r} has shape {tuple(state[key].shape)}, config.json's sizes give "
                             f"{tuple(shape)}: the file does not fit its {arch} config")
    unexpected = [key for key in state if key not in expected]
    if unexpected:
        raise ValueError(f"unexpected weight {unexpected[0]!r} (shape {tuple(state[unexpected[0]].shape)}, "
                         f"{len(unexpected)} unexpected in all): the file does not fit its {arch} config")
    missing = [key for key in expected if key not in state]
    if missing:
        raise ValueError(f"the weights lack {missing[0]!r} ({len(missing)} missing in all): "
                         f"the file does not fit its {arch} config")
    for key, tensor in state.items():
        if tensor.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            raise ValueError(f"weight {key!r} is stored as {tensor.dtype}: load_hf.py reads float32/bf16/fp16 weights")


def from_hf(hub_config, hub_state, dtype=torch.float32, block_size=None, name="gpt2"):
    """The model file's model (eval mode, on the CPU) for config.json `hub_config` (a dict; None: GPT-2 preset
    `name`) and a state dict with Hugging Face names. hub_state is emptied on the way, to keep memory at one copy."""
    arch = architecture(hub_config) if hub_config is not None else "GPT2LMHeadModel"
    module, read_config, to_hub, from_hub = FAMILIES[arch]
    if hub_config is None:
        config = config_from_hub(None, name, block_size)
    else:
        config = read_config(hub_config, arch, block_size)
    state = normalize(hub_state, arch, config.n_layer)
    hub_state.clear()
    options = {}
    if arch.startswith("Deepseek"):
        options = {"interleaved": deepseek_interleaved(hub_config, arch), "v3": arch == "DeepseekV3ForCausalLM"}
    embedding = state.get("model.embed_tokens.weight", state.get("wte.weight"))
    head = state.get("lm_head.weight")
    tied = (hub_config or {}).get("tie_word_embeddings", arch == "GPT2LMHeadModel")
    if head is not None and embedding is not None and torch.equal(head, embedding):
        state.pop("lm_head.weight")  # a stored copy of the tied head
        head = None
    if arch == "GPT2LMHeadModel":
        if head is not None or not tied:
            raise ValueError("GPT2LMHeadModel with an output head apart from wte (tie_word_embeddings false or its "
                             "own lm_head.weight): gpt.py always ties the two")
        if "wpe.weight" in state and state["wpe.weight"].size(0) > config.block_size:
            state["wpe.weight"] = state["wpe.weight"][:config.block_size]  # --block_size under n_positions
    elif arch.startswith("Deepseek"):
        if tied and head is None and embedding is not None:
            state["lm_head.weight"] = embedding.clone()  # mla_moe.py's head is never tied: a copy computes the same
    else:
        config = replace(config, tie_embeddings=bool(tied and head is None))  # tied, but a head stored: untie
    del embedding, head  # no reference kept: each tensor is freed once converted
    with torch.device("meta"):  # no memory and no random init: the checkpoint's tensors are assigned below
        model = module.Model(config)
    check_tensors(state, {key: t.shape for key, t in to_hub(model, **options).items()}, arch)

    def take(key, router=False):  # router weights stay float32, as transformers keeps them
        return state.pop(key).to(torch.float32 if router else dtype)

    model.load_state_dict(from_hub(model, take, **options), assign=True)
    if config_tied(model):
        model.lm_head.weight = model.wte.weight  # assign=True made two Parameters of one tensor
    rotary_tables(model, module)
    unset = [key for key, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if unset:
        raise RuntimeError(f"load_hf.py left {unset[0]} unset: a buffer it does not know of")
    return model.eval()


def config_tied(model):
    return getattr(model.config, "tie_embeddings", isinstance(model, gpt.GPT))


def rotary_tables(model, module):
    """The rotary cos/sin tables are computed, not stored: build them once (float32) and share them."""
    if not hasattr(module, "RotaryEmbedding"):
        return
    c = model.config
    head_dim = c.qk_rope_head_dim if module is mla_moe else (c.head_dim or c.n_embd // c.n_head)
    table = module.RotaryEmbedding(module.rope_frequencies(c, head_dim), c.block_size)
    for m in model.modules():
        if isinstance(m, module.RotaryEmbedding):
            m.cos, m.sin = table.cos, table.sin


def load(source, device="cpu", dtype=torch.float32, block_size=None, cache_dir=DEFAULT_CACHE, timeout=30,
         offline=False):
    """(model in eval mode, tokenizer or None, folder) from a local folder (or weights file), else a hub name
    (fetched unless offline). The tokenizer is the folder's tokenizer.json; GPT-2 without one gets gpt.py's BPE."""
    if os.path.exists(source):
        folder = source if os.path.isdir(source) else os.path.dirname(os.path.abspath(source))
    elif offline:
        raise FileNotFoundError(f"--weights {source}: no such file or folder")
    elif source in HUB_REPOS:
        folder = source = fetch_gpt2(source, cache_dir, timeout)
    else:
        folder = source = fetch(source, cache_dir, timeout)
    hub_state, hub_config = read_weights(source)
    if hub_config is None:
        raise FileNotFoundError(f"no config.json in {folder}: load_hf.py needs it to know the architecture "
                                f"(a bare GPT-2 file: python load_gpt2.py --weights {source})")
    model = from_hf(hub_config, hub_state, dtype, block_size).to(device)
    return model, tokenizer_for(folder, model), folder


def tokenizer_for(folder, model):
    path = os.path.join(folder, "tokenizer.json")
    if os.path.exists(path):
        return HFTokenizer(path)
    if isinstance(model, gpt.GPT) and model.config.vocab_size == 50257:
        return gpt.Tokenizer("gpt2")  # data/gpt2.tiktoken: the same BPE, offline
    return None


def eos_ids(folder):
    """The end-of-text ids of generation_config.json, else config.json (an int or a list), as a set."""
    for name in ("generation_config.json", "config.json"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            eos = read_json(path).get("eos_token_id")
            if eos is not None:
                return set(eos if isinstance(eos, list) else [eos])
    return set()


def load_train_checkpoint(path, device="cpu"):
    """(model, tokenizer) of a train.py checkpoint, by the model file its model_type names."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--ckpt {path}: no such checkpoint (an HF folder goes with --weights)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, empty or not a checkpoint
        raise ValueError(f"{path} is not a readable train.py checkpoint ({type(err).__name__})") from err
    model_type = ckpt.get("model_type") if isinstance(ckpt, dict) else None
    if model_type not in TRAIN_MODEL_FILES:
        raise ValueError(f"{path} holds a {model_type!r} model: load_hf.py handles {', '.join(TRAIN_MODEL_FILES)}")
    model, tokenizer, _ = TRAIN_MODEL_FILES[model_type].load_checkpoint(path, device)
    return model, tokenizer


# ----------------------------------------------------------------------------- export

def export(model, folder, source=None):
    """Write `model` (gpt, moderngpt, moegpt or mlamoe) as a Hugging Face checkpoint: config.json and
    model.safetensors, plus source's tokenizer and generation files when it came from a folder. A model the
    matching transformers architecture cannot compute exactly is refused, naming the setting."""
    source_config = None
    if source and os.path.exists(os.path.join(source, "config.json")):
        source_config = read_json(os.path.join(source, "config.json"))
    hub_config, hub_state = to_hf(model, source_config)
    hub_state = {k: standalone(t) for k, t in hub_state.items()}
    os.makedirs(folder, exist_ok=True)
    save_file(hub_state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(hub_config, f, indent=2)
    if source and os.path.abspath(source) != os.path.abspath(folder):
        for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json"):
            if os.path.exists(os.path.join(source, name)):
                shutil.copy(os.path.join(source, name), os.path.join(folder, name))
    return folder


def standalone(t):
    """t on the CPU, owning exactly its memory: safetensors refuses tensors that share storage (q, k, v cut from
    c_attn, experts from their stack), and a whole tensor needs no copy."""
    t = t.detach().cpu().contiguous()
    whole = t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size()
    return t if whole else t.clone()


def export_gpt2(model, folder):
    """Write gpt.py's `model` as Hugging Face GPT-2 files (Conv1D layout, no head: it is tied)."""
    if not isinstance(model, gpt.GPT):
        raise TypeError(f"export_gpt2 writes gpt.py's GPT, not {type(model).__name__}: use load_hf.export")
    return export(model, folder)


def to_hf(model, source_config=None):
    """(config.json dict, state dict with Hugging Face names) for `model`; source_config (the config.json it was
    loaded from, if any) lends its special-token ids and context length."""
    if isinstance(model, gpt.GPT):
        config, state = gpt2_hub(model)
    elif isinstance(model, modern_gpt.ModernGPT):
        config, state = modern_hub(model)
    elif isinstance(model, moe_gpt.MoEGPT):
        config, state = qwen3_moe_hub(model)
    elif isinstance(model, mla_moe.MLAMoE):
        config, state = deepseek_hub(model)
    else:
        raise TypeError(f"{type(model).__name__} has no Hugging Face architecture: export gpt, moderngpt, moegpt "
                         f"or mlamoe")
    gpt2_bpe = 50256 if model.config.vocab_size == 50257 else None  # <|endoftext|> of GPT-2's BPE
    config.update(bos_token_id=gpt2_bpe, eos_token_id=gpt2_bpe)
    rope = config.get("rope_parameters", {})
    if "factor" in rope:  # a context past the pretraining one, as scaled RoPE configs state it
        context = int(rope["factor"] * rope["original_max_position_embeddings"])
        config["max_position_embeddings"] = max(config["max_position_embeddings"], context)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):  # the checkpoint it came from: its special tokens
        if source_config and source_config.get(key) is not None:
            config[key] = source_config[key]
    if source_config and "max_position_embeddings" in config:  # and its context, unless --block_size went past it
        config["max_position_embeddings"] = max(config["max_position_embeddings"],
                                                source_config.get("max_position_embeddings") or 0)
    return config, state


def gpt2_hub(model):
    """GPT-2 files always have every bias: a model without them gets zero biases, which compute the same."""
    c, state = model.config, model.state_dict()
    if not c.bias:
        with torch.device("meta"):
            layout = gpt.GPT(replace(c, bias=True)).state_dict()  # the names and shapes with every bias
        state = {k: state[k] if k in state else torch.zeros(t.shape, dtype=model.wte.weight.dtype)
                 for k, t in layout.items()}
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": c.n_layer, "n_head": c.n_head,
              "n_embd": c.n_embd, "n_positions": c.block_size, "n_ctx": c.block_size, "vocab_size": c.vocab_size,
              "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new" if c.gelu_approximate == "tanh" else "gelu",
              "tie_word_embeddings": True, "dtype": str(model.wte.weight.dtype).removeprefix("torch.")}
    return config, gpt_hub_state(state)


def common_hub(model, arch, model_type):
    c = model.config
    return {"architectures": [arch], "model_type": model_type, "vocab_size": c.vocab_size, "hidden_size": c.n_embd,
            "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head, "hidden_act": "silu",
            "max_position_embeddings": c.block_size, "rms_norm_eps": c.norm_eps, "attention_bias": False,
            "dtype": str(model.wte.weight.dtype).removeprefix("torch.")}


def modern_hub(model):
    """ModernGPT -> LlamaForCausalLM, or Qwen3ForCausalLM when it has QK-norm."""
    c, attn = model.config, model.h[0].attn
    qwen3 = c.qk_norm
    config = common_hub(model, "Qwen3ForCausalLM" if qwen3 else "LlamaForCausalLM", "qwen3" if qwen3 else "llama")
    config.update(num_key_value_heads=c.n_kv_head, head_dim=attn.head_dim,
                  intermediate_size=model.h[0].mlp.gate.out_features, tie_word_embeddings=c.tie_embeddings,
                  rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta})
    if c.rope_scaling_factor != 1.0:
        config["rope_parameters"].update(rope_type="llama3", factor=c.rope_scaling_factor,
                                         low_freq_factor=c.rope_low_freq_factor,
                                         high_freq_factor=c.rope_high_freq_factor,
                                         original_max_position_embeddings=c.rope_original_len)
    if qwen3:
        config.update(use_sliding_window=False, layer_types=["full_attention"] * c.n_layer)
    else:
        config["mlp_bias"] = False
    return config, llama_to_hub(model)


def not_exportable(kind, key, value, fix):
    return ValueError(f"{kind} with {key}={value!r} has no exact Hugging Face counterpart: {fix}")


def qwen3_moe_hub(model):
    """MoEGPT -> Qwen3MoeForCausalLM: QK-norm on, softmax top-k without shared experts, granularity 1, no scaling
    and no routing bias; dense blocks first."""
    c = model.config
    for key, value, wanted, fix in (
            ("qk_norm", c.qk_norm, True, "Qwen3-MoE always normalises q and k (train with --qk_norm true)"),
            ("n_shared_experts", c.n_shared_experts, 0, "Qwen3-MoE has no shared experts"),
            ("granularity", c.granularity, 1, "Qwen3-MoE's experts are whole"),
            ("gate", c.gate, "softmax", "Qwen3-MoE's gates are a softmax"),
            ("routed_scaling_factor", c.routed_scaling_factor, 1.0, "Qwen3-MoE does not scale the routed experts")):
        if value != wanted:
            raise not_exportable("moegpt", key, value, fix)
    moe_layers = model.moe_layers()
    if any(bool(moe.router.bias.any()) for moe in moe_layers):
        raise not_exportable("moegpt", "router bias", "nonzero", "Qwen3-MoE routes without a bias (bias_update_rate 0)")
    attn = model.h[0].attn
    config = common_hub(model, "Qwen3MoeForCausalLM", "qwen3_moe")
    dense = moe_gpt.swiglu_hidden(c.n_embd, c.mlp_hidden, c.multiple_of)
    config.update(num_key_value_heads=c.n_kv_head, head_dim=attn.head_dim, intermediate_size=dense,
                  tie_word_embeddings=c.tie_embeddings,
                  rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
                  num_experts=c.n_routed_experts, num_experts_per_tok=c.top_k, norm_topk_prob=c.renormalize,
                  moe_intermediate_size=moe_layers[0].experts.gate.size(1) if moe_layers else dense,
                  decoder_sparse_step=1, mlp_only_layers=list(range(min(c.first_dense_layers, c.n_layer))),
                  use_sliding_window=False, router_aux_loss_coef=c.aux_loss_weight)
    return config, llama_to_hub(model)


def deepseek_hub(model):
    """MLAMoE -> DeepseekV3ForCausalLM (sigmoid gates) or DeepseekV2ForCausalLM (softmax, not renormalised, no
    routing bias), RoPE rows interleaved as the hub's files; YaRN with attention_factor 1 (cos/sin unscaled)."""
    c = model.config
    v3 = c.gate == "sigmoid"
    kind = "mlamoe (V3)" if v3 else "mlamoe (V2)"
    if c.latent_norm_eps != 1e-6:
        raise not_exportable(kind, "latent_norm_eps", c.latent_norm_eps, "transformers fixes the latent RMSNorms' eps "
                             "at 1e-6 (train with --latent_norm_eps 1e-6)")
    if not c.n_shared_experts and c.first_dense_layers < c.n_layer:
        raise not_exportable(kind, "n_shared_experts", 0, "transformers' DeepSeek always has shared experts")
    if not v3 and c.renormalize:
        raise not_exportable(kind, "renormalize", True, "transformers' DeepSeek-V2 never renormalises")
    if not v3 and any(bool(moe.router.bias.any()) for moe in model.moe_layers()):
        raise not_exportable(kind, "router bias", "nonzero", "DeepSeek-V2 routes without a bias (use sigmoid gates)")
    if v3 and c.n_group > 1 and c.n_routed_experts // c.n_group < 2:
        raise not_exportable(kind, "n_group", c.n_group, "V3 scores a group by its two best experts: 2+ per group")
    if model.mtp is not None:
        print("note: the multi-token-prediction module is not exported (transformers does not run it)", file=sys.stderr)
    arch, model_type = ("DeepseekV3ForCausalLM", "deepseek_v3") if v3 else ("DeepseekV2ForCausalLM", "deepseek_v2")
    config = common_hub(model, arch, model_type)
    rope = {"rope_type": "default", "rope_theta": c.rope_theta}
    if c.rope_scaling_factor != 1.0:
        rope.update(rope_type="yarn", factor=c.rope_scaling_factor,
                    original_max_position_embeddings=c.rope_original_len,
                    beta_fast=32, beta_slow=1, mscale=c.rope_mscale, mscale_all_dim=c.rope_mscale, attention_factor=1.0)
    config.update(num_key_value_heads=c.n_head, q_lora_rank=c.q_lora_rank or None, kv_lora_rank=c.kv_lora_rank,
                  qk_nope_head_dim=c.qk_nope_head_dim, qk_rope_head_dim=c.qk_rope_head_dim, v_head_dim=c.v_head_dim,
                  intermediate_size=c.mlp_hidden, moe_intermediate_size=c.moe_hidden,
                  n_routed_experts=c.n_routed_experts,
                  num_experts_per_tok=c.top_k, n_shared_experts=c.n_shared_experts,
                  first_k_dense_replace=c.first_dense_layers, routed_scaling_factor=c.routed_scaling_factor,
                  n_group=c.n_group, topk_group=c.topk_group, norm_topk_prob=c.renormalize, rope_parameters=rope,
                  tie_word_embeddings=False, moe_layer_freq=1)
    if v3:
        config.update(rope_interleave=True, scoring_func="sigmoid", topk_method="noaux_tc", num_nextn_predict_layers=0)
    else:
        config.update(scoring_func="softmax", topk_method="group_limited_greedy" if c.n_group > 1 else "greedy")
    return config, mla_to_hub(model, interleaved=True, v3=v3)


# ----------------------------------------------------------------------------- command line

def main(argv=None):
    parser = argparse.ArgumentParser(description="Run a Hugging Face checkpoint with this project's model files, "
                                                 "or write a model in Hugging Face's layout.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="a hub name, e.g. HuggingFaceTB/SmolLM2-135M (downloaded once), or gpt2")
    source.add_argument("--weights", help="a local Hugging Face folder (no network used)")
    source.add_argument("--ckpt", help="a checkpoint written by train.py (its model_type picks the file)")
    parser.add_argument("--export", metavar="DIR", help="write the model as config.json + model.safetensors")
    parser.add_argument("--cache_dir", default=DEFAULT_CACHE, help="where downloads are kept")
    parser.add_argument("--timeout", type=float, default=30, help="seconds to wait for the server")
    parser.add_argument("--prompt", help="text to continue (default: none with --export, else a greeting)")
    parser.add_argument("--prompt_ids", help="comma-separated token ids instead of --prompt (a checkpoint without "
                                             "tokenizer.json); prints ids")
    parser.add_argument("--max_new_tokens", type=int, default=50)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top_k", type=int, default=50)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--num_samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="of the weights (bfloat16 halves memory)")
    parser.add_argument("--block_size", type=int, help=f"context length, rotary tables and KV cache (default: "
                                                       f"max_position_embeddings, at most {DEFAULT_BLOCK_SIZE})")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    try:
        folder = None
        if args.ckpt:
            model, tokenizer = load_train_checkpoint(args.ckpt, args.device)
        else:
            if not (args.weights or args.model):
                raise ValueError("pass --model HUB_NAME, --weights FOLDER or --ckpt FILE")
            model, tokenizer, folder = load(args.weights or args.model, args.device,
                                            DTYPES[args.dtype], args.block_size, args.cache_dir, args.timeout,
                                            offline=bool(args.weights))
        counts = model.param_counts()
        print(f"{args.ckpt or args.weights or args.model}: {type(model).__name__} of {counts['total'] / 1e6:.2f}M "
              f"parameters ({counts['active'] / 1e6:.2f}M active), block_size {model.config.block_size}",
              file=sys.stderr)
        if args.export:
            print(f"exported to {export(model, args.export, folder)}", file=sys.stderr)
        prompt = None
        if args.prompt_ids:
            prompt = [int(i) for i in args.prompt_ids.replace(" ", "").split(",") if i]
        elif args.prompt is not None or not args.export:
            if tokenizer is None:
                raise ValueError(f"no tokenizer.json in {folder or args.ckpt}: pass --prompt_ids (Moonlight ships a "
                                 f"tiktoken tokenizer with remote code, not tokenizer.json)")
            prompt = tokenizer.encode("Hello, I'm a language model," if args.prompt is None else args.prompt)
        if prompt is not None and not prompt:
            raise ValueError("the prompt is empty: give text to continue")
        if prompt and not all(0 <= i < model.config.vocab_size for i in prompt):
            raise ValueError(f"--prompt_ids must lie in 0 .. {model.config.vocab_size - 1}, the model's vocabulary")
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if prompt is None or not args.max_new_tokens:
        return
    stop = eos_ids(folder) if folder else set()
    idx = torch.tensor([prompt] * args.num_samples, dtype=torch.long, device=args.device)
    out = model.generate(idx, args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    for row in out.tolist():
        new = row[len(prompt):]
        cut = next((i for i, t in enumerate(new) if t in stop), len(new))  # end of text: the rest is noise
        row = prompt + new[:cut]
        print(",".join(map(str, row)) if args.prompt_ids else tokenizer.decode(row))
        if args.num_samples > 1:
            print("-" * 40)


if __name__ == "__main__":
    main()
