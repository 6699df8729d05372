"""
load_gpt2.py - OpenAI's GPT-2 weights (gpt2, gpt2-medium, gpt2-large, gpt2-xl) in gpt.py's GPT.

The weights come as safetensors from the Hugging Face hub (openai-community/gpt2, ...): a
streamed download into a cache folder with a progress line, a timeout, resumption of a
partial file (HTTP Range) and a size check. Or `--weights PATH` reads a local safetensors
file, or a folder holding one next to its config.json as Hugging Face repositories ship
them, without touching the network. Nothing is ever unpickled: safetensors, or
torch.load(weights_only=True) for a PyTorch .bin/.pt file of tensors.

OpenAI's GPT-2 (Radford et al. 2019) stores its four Linear layers per block as "Conv1D"
with weights of shape (in, out), the transpose of nn.Linear's (out, in); everything else
maps name for name (gpt.py uses OpenAI's names). The output head is tied to wte.

    python load_gpt2.py --model gpt2 --prompt "Hello, I'm a language model,"
    python load_gpt2.py --weights path/to/gpt2 --prompt "Hello"    # offline
    python load_gpt2.py --ckpt out/ckpt.pt --export out/hf-gpt2     # a train.py model, in GPT-2's layout
"""
import argparse
import json
import os
import sys
import time
from dataclasses import asdict

import requests
import torch
from safetensors.torch import load_file, save_file

import gpt

HUB_URL = "https://huggingface.co/{repo}/resolve/main/{filename}"
HUB_REPOS = {name: f"openai-community/{name}" for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "nanodecoder")
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# causal-mask buffers that older GPT-2 files carry; they are not weights
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
# config.json's activation_function -> GPTConfig.gelu_approximate ("gelu_new" is GPT-2's tanh form)
ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}


# ----------------------------------------------------------------------------- download

def download(url, path, timeout=30, chunk_size=1 << 20, progress=True):
    """Stream `url` into `path` and return path. An existing `path` is taken as done.

    The bytes go to path + ".part" first; a later call asks the server for the rest of a
    partial file (HTTP Range), and the file is renamed to `path` only once its size equals
    the size the server announced. `timeout` (seconds) bounds the connection and each read."""
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    part = path + ".part"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"Accept-Encoding": "identity"}  # count the bytes of the file itself, not of a gzip of it
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        with requests.get(url, headers=headers, stream=True, timeout=timeout) as response:
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


def fetch_gpt2(name, cache_dir=DEFAULT_CACHE, timeout=30):
    """Download config.json and model.safetensors of GPT-2 `name` (once) and return their folder."""
    if name not in HUB_REPOS:
        raise ValueError(f"unknown GPT-2 model {name!r}: choose one of {', '.join(HUB_REPOS)}")
    folder = os.path.join(cache_dir, name)
    for filename in ("config.json", "model.safetensors"):
        url = HUB_URL.format(repo=HUB_REPOS[name], filename=filename)
        download(url, os.path.join(folder, filename), timeout)
    return folder


# ----------------------------------------------------------------------------- reading and mapping

def read_weights(path):
    """Tensors and the Hugging Face config (a dict, or None) from a weights file or a folder
    holding model.safetensors (or one *.safetensors / pytorch_model.bin) and config.json."""
    config = None
    if os.path.isdir(path):
        config_path = os.path.join(path, "config.json")
        if os.path.exists(config_path):
            with open(config_path) as f:
                config = json.load(f)
        names = sorted(os.listdir(path))
        candidates = ["model.safetensors"] + [n for n in names if n.endswith(".safetensors")] + ["pytorch_model.bin"]
        found = [n for n in candidates if n in names]
        if not found:
            raise FileNotFoundError(f"no model.safetensors (or pytorch_model.bin) in {path}: "
                                    f"download one, or drop --weights to fetch it")
        path = os.path.join(path, found[0])
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file {path} not found: pass a .safetensors file or its folder")
    if path.endswith(".safetensors"):
        return load_file(path), config
    state = torch.load(path, map_location="cpu", weights_only=True)  # tensors only, never arbitrary pickles
    return state, config


def config_from_hub(hub_config, name="gpt2"):
    """A GPTConfig from a Hugging Face GPT-2 config.json (a dict), or from preset `name`
    when there is none. Real GPT-2 has biases everywhere and a 1024-token context."""
    if hub_config is None:
        if name not in HUB_REPOS:
            raise ValueError(f"no config.json next to the weights and {name!r} is no GPT-2 preset: "
                             f"pass --model {', '.join(HUB_REPOS)}")
        return gpt.GPTConfig(**gpt.PRESETS[name], block_size=1024, vocab_size=50257, bias=True)
    activation = hub_config.get("activation_function", "gelu_new")  # the Hugging Face default
    if activation not in ACTIVATIONS:
        raise ValueError(f"config.json asks for activation {activation!r}: gpt.py has {', '.join(ACTIVATIONS)}")
    try:
        return gpt.GPTConfig(n_layer=hub_config["n_layer"], n_head=hub_config["n_head"], n_embd=hub_config["n_embd"],
                             block_size=hub_config["n_positions"], vocab_size=hub_config["vocab_size"], bias=True,
                             gelu_approximate=ACTIVATIONS[activation])
    except KeyError as err:
        raise ValueError(f"config.json has no {err.args[0]!r}: it is not a GPT-2 config") from None


def gpt_state_dict(hub_state, model):
    """Map a Hugging Face GPT-2 state dict onto `model`'s names: drop the "transformer."
    prefix and the mask buffers, transpose the Conv1D weights, and check every name and
    shape. Returns a state dict that model.load_state_dict(strict=True) accepts."""
    expected = {k: v.shape for k, v in model.state_dict().items() if k != "lm_head.weight"}  # lm_head is wte
    mapped = {}
    for key, tensor in hub_state.items():
        name = key.removeprefix("transformer.")
        if name.endswith(IGNORED_SUFFIXES) or name == "lm_head.weight":
            continue  # mask buffers; a stored head is the tied wte again
        if name.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()  # Conv1D (in, out) -> nn.Linear (out, in)
        if name not in expected:
            raise ValueError(f"unexpected weight {key!r} (shape {tuple(tensor.shape)}): "
                             f"the file does not fit GPT with {model.config}")
        if tensor.shape != expected[name]:
            raise ValueError(f"weight {key!r} has shape {tuple(tensor.shape)}, the model expects "
                             f"{tuple(expected[name])}: the file is another size than {model.config}")
        mapped[name] = tensor.contiguous()
    missing = sorted(expected.keys() - mapped.keys())
    if missing:
        raise ValueError(f"the weights lack {missing[0]!r} ({len(missing)} missing in all): "
                         f"the file does not fit GPT with {model.config}")
    mapped["lm_head.weight"] = mapped["wte.weight"]
    return mapped


def load_gpt2(name="gpt2", weights=None, cache_dir=DEFAULT_CACHE, timeout=30, device="cpu"):
    """GPT-2 `name` as a gpt.GPT in eval mode: from `weights` (a file or folder, no network),
    else downloaded from the hub into cache_dir."""
    path = weights if weights else fetch_gpt2(name, cache_dir, timeout)
    hub_state, hub_config = read_weights(path)
    model = gpt.GPT(config_from_hub(hub_config, name))
    model.load_state_dict(gpt_state_dict(hub_state, model))
    return model.to(device).eval()


def load_pretrained(init, weights=None, cache_dir=DEFAULT_CACHE, device="cpu"):
    """The starting point of a fine-tune: (model, tokenizer) for a GPT-2 name (gpt2, ...,
    read from `weights` when given) or the path of a gpt checkpoint written by train.py.
    A fine-tune needs GPT-2 BPE ids (50256 is its padding), so a char-level model is refused."""
    if init in HUB_REPOS:
        return load_gpt2(init, weights, cache_dir, device=device), gpt.Tokenizer("gpt2")
    if not os.path.exists(init):
        raise FileNotFoundError(f"--init {init}: no such checkpoint; use {', '.join(HUB_REPOS)}, "
                                f"a gpt checkpoint from train.py, or scratch")
    model, tokenizer = gpt.load_checkpoint(init, device)
    if tokenizer.kind != "gpt2":
        raise ValueError(f"{init} uses the {tokenizer.kind} tokenizer; fine-tuning needs GPT-2 BPE: "
                         f"train it with python train.py --model_type gpt --tokenizer gpt2")
    return model, tokenizer


# ----------------------------------------------------------------------------- export

def export_gpt2(model, folder):
    """Write `model` as Hugging Face GPT-2 files: model.safetensors (Conv1D layout, no head:
    it is tied) and config.json. A model without biases gets zero biases, which compute the
    same, so the files always have GPT-2's exact layout."""
    c = model.config
    reference = gpt.GPT(gpt.GPTConfig(**{**asdict(c), "bias": True}))  # the layout with every bias
    state = model.state_dict()
    hub_state = {}
    for name, like in reference.state_dict().items():
        if name == "lm_head.weight":
            continue
        tensor = state[name] if name in state else torch.zeros_like(like)
        if name.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()  # nn.Linear (out, in) -> Conv1D (in, out)
        hub_state[name] = tensor.detach().cpu().contiguous().clone()  # safetensors refuses shared storage
    os.makedirs(folder, exist_ok=True)
    save_file(hub_state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    hub_config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": c.n_layer,
                  "n_head": c.n_head, "n_embd": c.n_embd, "n_positions": c.block_size, "n_ctx": c.block_size,
                  "vocab_size": c.vocab_size, "layer_norm_epsilon": 1e-5,
                  "activation_function": "gelu_new" if c.gelu_approximate == "tanh" else "gelu"}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(hub_config, f, indent=2)
    return folder


def main(argv=None):
    parser = argparse.ArgumentParser(description="Load OpenAI's GPT-2 weights into gpt.py and generate text.")
    parser.add_argument("--model", default="gpt2", choices=HUB_REPOS, help="which GPT-2 (its size, when no config.json)")
    parser.add_argument("--weights", help="local .safetensors file or Hugging Face folder (no network used)")
    parser.add_argument("--ckpt", help="a gpt checkpoint from train.py instead (e.g. to --export it)")
    parser.add_argument("--cache_dir", default=DEFAULT_CACHE, help="where downloads are kept")
    parser.add_argument("--timeout", type=float, default=30, help="seconds to wait for the server")
    parser.add_argument("--export", metavar="DIR", help="write the model as model.safetensors + config.json")
    parser.add_argument("--prompt", default="Hello, I'm a language model,")
    parser.add_argument("--max_new_tokens", type=int, default=50)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top_k", type=int, default=50)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--num_samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    try:
        if args.ckpt:
            model, tokenizer = gpt.load_checkpoint(args.ckpt, args.device)
        else:
            model = load_gpt2(args.model, args.weights, args.cache_dir, args.timeout, args.device)
            tokenizer = gpt.Tokenizer("gpt2")
        prompt = tokenizer.encode(args.prompt)
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: {err}")
    print(f"{args.ckpt or args.weights or args.model}: {model.param_counts()['total'] / 1e6:.2f}M parameters, {model.config}")
    if args.export:
        print(f"exported to {export_gpt2(model, args.export)}")
    if args.max_new_tokens:
        idx = torch.tensor([prompt] * args.num_samples, dtype=torch.long, device=args.device)
        out = model.generate(idx, args.max_new_tokens, args.temperature, args.top_k, args.top_p)
        for row in out.tolist():
            print(tokenizer.decode(row))
            print("-" * 40)


if __name__ == "__main__":
    main()
