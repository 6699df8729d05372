"""
load_hf.py - Hugging Face checkpoints of every family into the matching model file, text in and out with the
checkpoint's tokenizer.json, and any of these models written back in Hugging Face's layout (--export).

    config.json "architectures"        model file       released checkpoints
    GPT2LMHeadModel                    gpt.py           openai-community/gpt2 (-medium, -large, -xl)
    LlamaForCausalLM                   modern_gpt.py    SmolLM2, TinyLlama, Llama 3.x (llama3 RoPE scaling)
    Qwen3ForCausalLM                   modern_gpt.py    Qwen3-0.6B ... (head_dim apart, QK-norm)
    Qwen3MoeForCausalLM                moe_gpt.py       Qwen3-30B-A3B
    DeepseekV3ForCausalLM              mla_moe.py       Moonlight-16B-A3B, DeepSeek-V3 (bf16 copies; FP8 refused)
    DeepseekV2ForCausalLM              mla_moe.py       DeepSeek-V2-Lite, DeepSeek-V2

This file is the pipeline, hf_families.py the families it reads. In order: download (a hub name goes once into
~/.cache/nanodecoder/OWNER/NAME, streamed, resumable, size-checked, with HF_TOKEN for gated repositories), read
the files (safetensors or its shards, or a .bin read with weights_only=True: nothing is unpickled), read
config.json through the family's table (v5's rope_parameters or v4's rope_theta + rope_scaling), where a setting
the model file cannot compute is refused by name, check every tensor's name and shape, convert; export runs the
same tables backwards; then the command line. What loads computes what transformers computes (logits within
1e-4 in float32: tests/test_load_hf.py).

block_size sizes the rotary tables and the preallocated KV cache: min(max_position_embeddings, 4096) unless
--block_size says otherwise (longer generations slide the window, as the model files do).

    python load_hf.py --model HuggingFaceTB/SmolLM2-135M --prompt "The capital of France is" --temperature 0
    python load_hf.py --weights path/to/Qwen3-0.6B --prompt "Hello" --max_new_tokens 40      # offline
    HF_TOKEN=hf_... python load_hf.py --model meta-llama/Llama-3.2-1B --prompt "Hello"
    python load_hf.py --model deepseek-ai/DeepSeek-V2-Lite --dtype bfloat16 --prompt "def fib(n):"
    python load_hf.py --ckpt out/ckpt.pt --export out/hf        # a train.py model in HF layout
    python load_hf.py --weights path/to/SmolLM2-135M --export out/smol   # and back

Python: model, tokenizer, folder = load_hf.load("HuggingFaceTB/SmolLM2-135M"); load_hf.export(model, "out/hf").
"""
import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
import time

import requests
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

import gpt
from data import bounded
from hf_families import FAMILIES, REQUIRED, SAME, Fixed, Ours, refuse, unexportable

HUB_URL = "https://huggingface.co/{repo}/resolve/main/{filename}"
HUB_REPOS = {name: f"openai-community/{name}" for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "nanodecoder")
DEFAULT_BLOCK_SIZE = 4096  # the context used when config.json allows more (its rotary tables and KV cache)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ----------------------------------------------------------------------------- download

def download(url, path, timeout=30, chunk_size=1 << 20, progress=True, headers=None, missing_ok=False):
    """Stream `url` into `path` and return path; an existing `path` is taken as done. The bytes go to path + ".part"
    first; a later call asks for the rest of a partial file (HTTP Range), and the file is renamed to `path` only once
    its size equals the one the server announced. `timeout` (seconds) bounds the connection and each read;
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
    line = f"{name}: {received / mb:8.1f}" + (f" / {total / mb:.1f} MB {100 * received / total:5.1f}%" if total > 0
                                               else " MB")
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
    for shard in sorted(set(read_json(index).get("weight_map", {}).values())) if index else ["model.safetensors"]:
        get(shard)
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
    return (read_safetensors(path, {}) if path.endswith(".safetensors") else read_torch(path)), config


class HFTokenizer:
    """A checkpoint's tokenizer.json, run by the tokenizers library. encode adds what its post-processor adds (the
    BOS token of Llama 3, TinyLlama, DeepSeek), decode drops special tokens. state() carries the file's text, so a
    train.py checkpoint of a fine-tuned model holds its tokenizer: HFTokenizer(**state) rebuilds it."""

    def __init__(self, path=None, kind="tokenizer.json", json=None):
        try:
            from tokenizers import Tokenizer  # only needed here: the model files use tiktoken
        except ImportError:
            raise ValueError("reading tokenizer.json needs the tokenizers package: pip install tokenizers") from None
        try:
            if json is None:
                with open(path, encoding="utf-8") as f:
                    json = f.read()
            self.tokenizer = Tokenizer.from_str(json)
        except Exception as err:  # the library raises a plain Exception for a bad file
            why = (str(err).splitlines() or [type(err).__name__])[0]
            raise ValueError(f"{path or 'the checkpoint'}'s tokenizer.json is not one the tokenizers library reads "
                             f"({why})") from err
        self.kind, self.json, self.vocab_size = kind, json, self.tokenizer.get_vocab_size()

    def encode(self, text):
        return self.tokenizer.encode(text).ids

    def decode(self, ids):
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def state(self):
        return {"kind": self.kind, "json": self.json}


def tokenizer_for(folder, model):
    """The folder's tokenizer.json, else GPT-2's BPE (data/gpt2.tiktoken, offline) for a GPT-2 vocabulary, else None."""
    if os.path.exists(os.path.join(folder, "tokenizer.json")):
        return HFTokenizer(os.path.join(folder, "tokenizer.json"))
    return gpt.Tokenizer("gpt2") if isinstance(model, gpt.GPT) and model.config.vocab_size == 50257 else None


def eos_ids(folder):
    """The end-of-text ids of generation_config.json, else config.json (an int or a list), as a set."""
    for path in (os.path.join(folder, "generation_config.json"), os.path.join(folder, "config.json")):
        eos = read_json(path).get("eos_token_id") if os.path.exists(path) else None
        if eos is not None:
            return set(eos if isinstance(eos, list) else [eos])
    return set()


# ----------------------------------------------------------------------------- config.json -> config, by table

def architecture(cfg):
    """The one architecture config.json names (`architectures`, else its `model_type`), checked to be supported."""
    by_type = {family.model_type: arch for arch, family in FAMILIES.items()}
    arch = (cfg.get("architectures") or [by_type.get(cfg.get("model_type"), cfg.get("model_type"))])[0]
    if arch not in FAMILIES:
        raise ValueError(f"architecture {arch!r} is not supported: load_hf.py reads {', '.join(FAMILIES)}")
    return arch


def hub_view(cfg):
    """config.json in the tables' names: one level, RoPE under "rope_parameters." whether from v5's rope_parameters
    or v4's rope_theta + rope_scaling ("type" in DeepSeek's), v5's num_local_experts as v4's num_experts."""
    rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    rope.setdefault("rope_type", rope.pop("type", "default"))
    if "rope_theta" in cfg:
        rope.setdefault("rope_theta", cfg["rope_theta"])
    if rope["rope_type"] != "default":  # transformers' own default (Phi-3 keeps this key outside rope_parameters)
        rope["original_max_position_embeddings"] = (cfg.get("original_max_position_embeddings")
                                                    or rope.get("original_max_position_embeddings")
                                                    or cfg.get("max_position_embeddings"))
    rope = {k: v for k, v in rope.items() if v or k not in ("beta_fast", "beta_slow")}  # 0, null: the default
    view = {"num_experts": cfg["num_local_experts"], **cfg} if "num_local_experts" in cfg else cfg
    return {**view, **{f"rope_parameters.{key}": value for key, value in rope.items()}}


def read_config(cfg, arch, block_size=None):
    """The model file's config for config.json `cfg` of architecture `arch`, read through its family's table."""
    family = FAMILIES[arch]
    file, view = family.module.__name__ + ".py", hub_view(cfg)
    if cfg.get("quantization_config"):
        method = cfg["quantization_config"].get("quant_method", cfg["quantization_config"])
        raise refuse(arch, "quantization_config.quant_method", method, f"{file} reads float weights only "
                     f"(DeepSeek-V3's hub weights are FP8: use a bf16 copy)")
    partial = view.get("rope_parameters.partial_rotary_factor", view.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise refuse(arch, "partial_rotary_factor", partial, f"{file} rotates the whole head")
    kind, rope = view["rope_parameters.rope_type"], family.rope or {}
    if family.rope is not None and kind not in rope:
        raise refuse(arch, "rope_type", kind, f"{file} computes {' and '.join(rope)} RoPE only")
    fields = {}
    for row in family.keys + rope.get(kind, ()):
        if isinstance(row, Ours):
            fields[row.field] = row.value
            continue
        value = view.get(row.hub)
        if isinstance(row, Fixed):
            if value is not None and value != row.value:
                raise refuse(arch, row.hub, value, row.why.format(file=file))
        else:
            if value is None:
                value = row.default if view.get(row.hub, SAME) is SAME or row.null is SAME else row.null
            if value is REQUIRED:
                raise ValueError(f"config.json has no {row.hub!r}: it is not a complete {arch} config")
            if row.values is not None and value not in row.values:
                raise refuse(arch, row.hub, value, f"{file} computes {', '.join(row.values)} only")
            fields[row.ours] = row.values[value] if row.values else value
    if family.read:
        family.read(view, fields, arch)
    fields["block_size"] = block_size or min(fields["block_size"], DEFAULT_BLOCK_SIZE)
    return family.module.Config(**fields)


def config_from_hub(hub_config, name="gpt2", block_size=None):
    """A GPTConfig from a Hugging Face GPT-2 config.json (a dict), or from preset `name`
    when there is none. Real GPT-2 has biases everywhere and a 1024-token context."""
    if hub_config is not None:
        return read_config(hub_config, "GPT2LMHeadModel", block_size)
    if name not in HUB_REPOS:
        raise ValueError(f"no config.json next to the weights and {name!r} is no GPT-2 preset: "
                         f"pass --model {', '.join(HUB_REPOS)}")
    return gpt.GPTConfig(**gpt.PRESETS[name], block_size=block_size or 1024, vocab_size=50257, bias=True)


# ----------------------------------------------------------------------------- tensors in, the model out

def normalize(state, family, config):
    """The checkpoint's tensors under the names to_hub writes: no "transformer." prefix (old GPT-2 files);
    transformers' fused in-memory experts (gate_up_proj [E, 2I, C], down_proj [E, C, I]) split per expert; keys that
    carry no weights (old rotary inv_freq, FP8 scales, the family's own) dropped."""
    out = {}
    for key, tensor in state.items():
        key = key.removeprefix("transformer.")
        if key.endswith("mlp.experts.gate_up_proj"):
            for e, (gate, up) in enumerate(zip(*tensor.chunk(2, dim=1))):
                out[key.replace("gate_up_proj", f"{e}.gate_proj.weight")] = gate
                out[key.replace("gate_up_proj", f"{e}.up_proj.weight")] = up
        elif key.endswith("mlp.experts.down_proj"):
            for e, down in enumerate(tensor):
                out[key.replace("down_proj", f"{e}.down_proj.weight")] = down
        elif not key.endswith((".rotary_emb.inv_freq", ".weight_scale_inv")):
            out[key] = tensor
    if family.prepare:
        family.prepare(out, config)
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
    family = FAMILIES[arch]
    config = config_from_hub(None, name, block_size) if hub_config is None else read_config(hub_config, arch,
                                                                                            block_size)
    state = normalize(hub_state, family, config)
    hub_state.clear()
    embedding = state.get("model.embed_tokens.weight", state.get("wte.weight"))
    if "lm_head.weight" in state and embedding is not None and torch.equal(state["lm_head.weight"], embedding):
        del state["lm_head.weight"]  # a stored copy of the tied head
    if "lm_head.weight" in state and family.ties == "always":
        raise refuse(arch, "lm_head.weight", "apart from wte", "gpt.py always ties the output head to wte")
    if "lm_head.weight" in state and family.ties == "field":
        config = dataclasses.replace(config, tie_embeddings=False)  # tied, but a head stored: untie, as transformers
    if "lm_head.weight" not in state and family.ties == "never" and (hub_config or {}).get("tie_word_embeddings"):
        state["lm_head.weight"] = embedding.clone()  # mla_moe.py's head is never tied: a copy computes the same
    del embedding  # no reference kept: each tensor is freed once converted
    with torch.device("meta"):  # no memory and no random init: the checkpoint's tensors are assigned below
        model = family.module.Model(config)
    check_tensors(state, {key: t.shape for key, t in family.to_hub(model).items()}, arch)

    def take(key, router=False):  # router weights stay float32, as transformers keeps them
        # copied into memory of torch's own (64-byte aligned): safetensors' tensors can sit at any offset of the
        # file's buffer, and the CPU's matmul kernels take other paths (other roundings) on unaligned rows
        return state.pop(key).to(torch.float32 if router else dtype, copy=True)

    model.load_state_dict(family.from_hub(model, take, hub_config or {}), assign=True)
    if getattr(config, "tie_embeddings", family.ties == "always"):
        model.lm_head.weight = model.wte.weight  # assign=True made two Parameters of one tensor
    if hasattr(family.module, "RotaryEmbedding"):  # the cos/sin tables are computed, not stored: once, shared
        c = model.config
        head_dim = getattr(c, "qk_rope_head_dim", 0) or c.head_dim or c.n_embd // c.n_head
        table = family.module.RotaryEmbedding(family.module.rope_frequencies(c, head_dim), c.block_size)
        for m in model.modules():
            if isinstance(m, family.module.RotaryEmbedding):
                m.cos, m.sin = table.cos, table.sin
    unset = [key for key, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if unset:
        raise RuntimeError(f"load_hf.py left {unset[0]} unset: a buffer it does not know of")
    return model.eval()


def load(source, device="cpu", dtype=torch.float32, block_size=None, cache_dir=DEFAULT_CACHE, timeout=30,
         offline=False):
    """(model in eval mode, tokenizer or None, folder) from a local folder (or weights file), else a hub name
    (fetched unless offline). The tokenizer is the folder's tokenizer.json; GPT-2 without one gets gpt.py's BPE."""
    if os.path.exists(source):
        folder = source if os.path.isdir(source) else os.path.dirname(os.path.abspath(source))
    elif offline:
        raise FileNotFoundError(f"--weights {source}: no such file or folder")
    else:
        folder = source = (fetch_gpt2 if source in HUB_REPOS else fetch)(source, cache_dir, timeout)
    hub_state, hub_config = read_weights(source)
    if hub_config is None:
        raise FileNotFoundError(f"no config.json in {folder}: load_hf.py needs it to know the architecture "
                                f"(a bare GPT-2 file: python load_gpt2.py --weights {source})")
    model = from_hf(hub_config, hub_state, dtype, block_size).to(device)
    return model, tokenizer_for(folder, model), folder


def load_train_checkpoint(path, device="cpu"):
    """(model, tokenizer) of a train.py checkpoint, by the model file its model_type names."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--ckpt {path}: no such checkpoint (an HF folder goes with --weights)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, empty or not a checkpoint
        raise ValueError(f"{path} is not a readable train.py checkpoint ({type(err).__name__})") from err
    files = {family.module.MODEL_TYPE: family.module for family in FAMILIES.values()}
    model_type = ckpt.get("model_type") if isinstance(ckpt, dict) else None
    if model_type not in files:
        raise ValueError(f"{path} holds a {model_type!r} model: load_hf.py handles {', '.join(files)}")
    model, tokenizer, ckpt = files[model_type].load_checkpoint(path, device)
    return model, tokenizer or HFTokenizer(**ckpt["tokenizer"])  # None: a fine-tuned released model's tokenizer.json


def training_source(source, timeout=30):
    """(local path, model type) of what train.py --init starts from: a train.py checkpoint, a Hugging Face folder,
    or a hub name, fetched once per machine by its first process (LOCAL_RANK 0) while the others wait for it."""
    if not os.path.exists(source):
        folder = os.path.join(DEFAULT_CACHE, *source.split("/"))
        if os.environ.get("LOCAL_RANK", "0") == "0":
            folder = fetch(source, timeout=timeout)
        while not os.path.exists(os.path.join(folder, ".complete")):
            time.sleep(1)
        source = folder
    if os.path.isfile(source):
        try:
            model_type = torch.load(source, map_location="cpu", weights_only=True, mmap=True).get("model_type")
        except Exception as err:  # truncated, empty or not a checkpoint
            raise ValueError(f"{source} is not a readable train.py checkpoint ({type(err).__name__})") from err
        return source, model_type
    config = os.path.join(source, "config.json")
    if not os.path.exists(config):
        raise FileNotFoundError(f"no config.json in {source}: --init takes a train.py checkpoint, a Hugging Face "
                                "folder or a hub name")
    return source, FAMILIES[architecture(read_json(config))].module.MODEL_TYPE


# ----------------------------------------------------------------------------- export: the tables backwards

def write_config(model, arch, family):
    """config.json of `model` as `arch`, through its family's table; a model the table cannot state is refused."""
    c = family.explicit(model, family.module) if family.explicit else model.config
    kind = next(k for k in family.rope if k != "default") if getattr(c, "rope_scaling_factor", 1.0) != 1 else "default"
    flat = {"architectures": [arch], "model_type": family.model_type,
            "dtype": str(model.wte.weight.dtype).removeprefix("torch.")}
    if family.rope is not None:
        flat["rope_parameters.rope_type"] = kind
    for row in family.keys + (family.rope or {}).get(kind, ()):
        if isinstance(row, Ours):
            if row.why and getattr(c, row.field) != row.value:
                raise unexportable(model, arch, row.field, getattr(c, row.field), row.why)
        elif isinstance(row, Fixed):
            flat[row.hub] = row.value
        else:
            value = getattr(c, row.ours)
            value = next(k for k, v in row.values.items() if v == value) if row.values else value
            flat[row.hub] = None if row.null is not SAME and value == row.null else value
    hub = {}
    for key, value in flat.items():  # "rope_parameters.x" back into its dict
        outer, _, inner = key.rpartition(".")
        (hub.setdefault(outer, {}) if outer else hub)[inner] = value
    if family.write:
        family.write(model, c, hub, arch)
    return hub


def to_hf(model, source_config=None):
    """(config.json dict, state dict with Hugging Face names) for `model`; source_config (the config.json it was
    loaded from, if any) lends its special-token ids and context length."""
    found = [arch for arch, f in FAMILIES.items() if isinstance(model, f.module.Model) and f.exports(model.config)]
    if not found:
        raise TypeError(f"{type(model).__name__} has no Hugging Face architecture: export gpt, moderngpt, moegpt "
                        f"or mlamoe")
    config = write_config(model, found[0], FAMILIES[found[0]])
    gpt2_bpe = 50256 if model.config.vocab_size == 50257 else None  # <|endoftext|> of GPT-2's BPE
    config.update(bos_token_id=gpt2_bpe, eos_token_id=gpt2_bpe)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):  # the checkpoint it came from: its special tokens
        if source_config and source_config.get(key) is not None:
            config[key] = source_config[key]
    if "max_position_embeddings" in config:  # (GPT-2's learned n_positions are block_size exactly)
        rope = config["rope_parameters"]  # the context a scaled RoPE scales to, as released configs state it
        scaled = int(rope["factor"] * rope["original_max_position_embeddings"]) if "factor" in rope else 0
        config["max_position_embeddings"] = max(config["max_position_embeddings"], scaled,  # and the source's
                                                (source_config or {}).get("max_position_embeddings") or 0)
    return config, FAMILIES[found[0]].to_hub(model)


def export(model, folder, source=None):
    """Write `model` (gpt, moderngpt, moegpt or mlamoe) as a Hugging Face checkpoint: config.json and
    model.safetensors (each written whole, then renamed), plus source's tokenizer and generation files when it came
    from a folder. A model the matching transformers architecture cannot compute exactly is refused, by setting."""
    source_config = None
    if source and os.path.exists(os.path.join(source, "config.json")):
        source_config = read_json(os.path.join(source, "config.json"))
    hub_config, hub_state = to_hf(model, source_config)
    os.makedirs(folder, exist_ok=True)
    weights, config = os.path.join(folder, "model.safetensors"), os.path.join(folder, "config.json")
    save_file({k: standalone(t) for k, t in hub_state.items()}, weights + ".tmp", metadata={"format": "pt"})
    with open(config + ".tmp", "w") as f:
        json.dump(hub_config, f, indent=2)
    os.replace(weights + ".tmp", weights)
    os.replace(config + ".tmp", config)
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


# ----------------------------------------------------------------------------- command line

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every default; an option without one says in its help what happens instead."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's own complaints (an unknown option, a value out of range) in one line, exit status 2."""

    def __init__(self, **kwargs):
        super().__init__(formatter_class=HelpFormatter, **kwargs)

    def error(self, message):
        print(f"error: {message} (python {self.prog} --help lists the options)", file=sys.stderr)
        sys.exit(2)


def add_common_options(parser):
    """The options load_gpt2.py shares: sampling (each checked for its range), device, download."""
    parser.add_argument("--max_new_tokens", type=bounded(int, 0), default=50, help="tokens to generate, >= 0")
    parser.add_argument("--temperature", type=bounded(float, 0), default=0.8,
                        help="divides the logits before sampling, >= 0 (0 = greedy)")
    parser.add_argument("--top_k", type=bounded(int, 0), default=50,
                        help="sample among the k likeliest tokens, >= 0 (0 = all)")
    parser.add_argument("--top_p", type=bounded(float, 0, 1, low_open=True),
                        help="sample among the likeliest tokens holding this probability, in (0, 1] (default: all)")
    parser.add_argument("--num_samples", type=bounded(int, 1), default=1, help="continuations of the prompt, >= 1")
    parser.add_argument("--seed", type=int, default=1337, help="of the random sampling")
    parser.add_argument("--compile", action="store_true", help="torch.compile decoding: dense 2-3x, after 20-60 s")
    parser.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu",
                        help="to run on: cuda, cpu, mps")
    parser.add_argument("--timeout", type=bounded(float, 0, low_open=True), default=30,
                        help="seconds to wait for the server, > 0")
    parser.add_argument("--cache_dir", default=DEFAULT_CACHE, help="where downloads are kept")


def device_arg(text):
    """--device: one torch knows and this machine has."""
    try:
        kind = torch.device(text).type
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is no device: use cuda, cpu or mps") from None
    if (kind == "cuda" and not torch.cuda.is_available()) or (kind == "mps" and not torch.backends.mps.is_available()):
        raise argparse.ArgumentTypeError(f"{text} is not available on this machine: use cpu")
    return text


def token_ids(text):
    """--prompt_ids: comma-separated token ids, e.g. 5,17,42."""
    ids = [i for i in text.replace(" ", "").split(",") if i]
    if not ids or not all(i.isdigit() for i in ids):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of token ids >= 0")
    return [int(i) for i in ids]


def main(argv=None):
    parser = ArgumentParser(prog="load_hf.py", description="Run a Hugging Face checkpoint with this project's "
                            "model files, or write a model in Hugging Face's layout.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="a hub name, e.g. HuggingFaceTB/SmolLM2-135M (downloaded once), or gpt2")
    source.add_argument("--weights", help="a local Hugging Face folder (no network used)")
    source.add_argument("--ckpt", help="a checkpoint written by train.py (its model_type picks the file)")
    parser.add_argument("--export", metavar="DIR", help="write the model as config.json + model.safetensors")
    parser.add_argument("--prompt", help="text to continue (default: none with --export, else a greeting)")
    parser.add_argument("--prompt_ids", type=token_ids, help="comma-separated token ids instead of --prompt (a "
                                                             "checkpoint without tokenizer.json); prints ids")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="of the weights (bfloat16 halves memory)")
    parser.add_argument("--block_size", type=bounded(int, 1), help=f"context length, rotary tables and KV cache, >= "
                        f"1 (default: max_position_embeddings, at most {DEFAULT_BLOCK_SIZE})")
    add_common_options(parser)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    try:
        folder = None
        if args.ckpt:
            model, tokenizer = load_train_checkpoint(args.ckpt, args.device)
        elif args.weights or args.model:
            model, tokenizer, folder = load(args.weights or args.model, args.device, DTYPES[args.dtype],
                                            args.block_size, args.cache_dir, args.timeout, offline=bool(args.weights))
        else:
            raise ValueError("pass --model HUB_NAME, --weights FOLDER or --ckpt FILE")
        counts = model.param_counts()
        print(f"{args.ckpt or args.weights or args.model}: {type(model).__name__} of {counts['total'] / 1e6:.2f}M "
              f"parameters ({counts['active'] / 1e6:.2f}M active), block_size {model.config.block_size}",
              file=sys.stderr)
        if args.export:
            print(f"exported to {export(model, args.export, folder)}", file=sys.stderr)
            if args.ckpt and isinstance(tokenizer, HFTokenizer):  # a fine-tuned released model: its tokenizer too
                with open(os.path.join(args.export, "tokenizer.json"), "w", encoding="utf-8") as f:
                    f.write(tokenizer.json)
        prompt = args.prompt_ids
        if prompt is None and (args.prompt is not None or not args.export):
            if tokenizer is None:
                raise ValueError(f"no tokenizer.json in {folder or args.ckpt}: pass --prompt_ids (Moonlight ships a "
                                 f"tiktoken tokenizer with remote code, not tokenizer.json)")
            prompt = tokenizer.encode("Hello, I'm a language model," if args.prompt is None else args.prompt)
            if not prompt:
                raise ValueError("the prompt is empty: give text to continue")
        if prompt and max(prompt) >= model.config.vocab_size:
            raise ValueError(f"--prompt_ids must lie in 0 .. {model.config.vocab_size - 1}, the model's vocabulary")
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if prompt is None or not args.max_new_tokens:
        return
    stop = eos_ids(folder) if folder else set()
    out = model.generate(torch.tensor([prompt] * args.num_samples, device=args.device), args.max_new_tokens,
                         args.temperature, args.top_k, args.top_p, compile=args.compile)
    for row in out.tolist():
        new = row[len(prompt):]
        row = prompt + new[:next((i for i, t in enumerate(new) if t in stop), len(new))]  # end of text: then noise
        print(",".join(map(str, row)) if args.prompt_ids else tokenizer.decode(row))
        if args.num_samples > 1:
            print("-" * 40)


if __name__ == "__main__":
    main()
