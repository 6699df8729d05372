"""
load_gpt2.py - OpenAI's GPT-2 weights (gpt2, gpt2-medium, gpt2-large, gpt2-xl) in gpt.py's GPT, and the
starting point of the two fine-tunes (LLMs-from-scratch ch05's path).

A thin front to load_hf.py, which holds the download (streamed, resumable, size-checked), the reading of
safetensors or PyTorch files and the mapping of GPT-2's names: OpenAI's GPT-2 (Radford et al. 2019) stores its
four Linear layers per block as "Conv1D" with weights of shape (in, out), the transpose of nn.Linear's (out, in);
everything else maps name for name (gpt.py uses OpenAI's names), and the output head is tied to wte. Without a
config.json beside a bare weights file, --model names the size.

    python load_gpt2.py --model gpt2 --prompt "Hello, I'm a language model,"
    python load_gpt2.py --weights path/to/gpt2 --prompt "Hello"    # offline
    python load_gpt2.py --ckpt out/ckpt.pt --export out/hf-gpt2     # a train.py model, in GPT-2's layout
"""
import argparse
import os
import sys

import torch

import gpt
import load_hf
from load_hf import (  # noqa: F401 (load_gpt2's names, used by the fine-tunes and tests)
    DEFAULT_CACHE,
    HUB_REPOS,
    config_from_hub,
    download,
    export_gpt2,
    fetch_gpt2,
    gpt_from_hub,
    read_weights,
)


def load_gpt2(name="gpt2", weights=None, cache_dir=DEFAULT_CACHE, timeout=30, device="cpu"):
    """GPT-2 `name` as a gpt.GPT in eval mode: from `weights` (a file or folder, no network),
    else downloaded from the hub into cache_dir."""
    path = weights if weights else fetch_gpt2(name, cache_dir, timeout)
    hub_state, hub_config = read_weights(path)
    if hub_config is not None and load_hf.architecture(hub_config) != "GPT2LMHeadModel":
        raise ValueError(f"{path} holds a {load_hf.architecture(hub_config)}, not GPT-2: use python load_hf.py "
                         f"--weights {path}")
    return load_hf.from_hf(hub_config, hub_state, name=name).to(device).eval()


def gpt_state_dict(hub_state, model):
    """Map a Hugging Face GPT-2 state dict onto `model`'s names (no "transformer." prefix, no mask buffers,
    Conv1D weights transposed), every name and shape checked. model.load_state_dict(strict=True) accepts it."""
    state = load_hf.normalize(dict(hub_state), "GPT2LMHeadModel", model.config.n_layer)
    head = state.pop("lm_head.weight", None)
    if head is not None and not torch.equal(head, state.get("wte.weight")):
        raise ValueError("the weights hold an lm_head.weight apart from wte.weight: gpt.py always ties the two")
    load_hf.check_tensors(state, {k: t.shape for k, t in load_hf.gpt_to_hub(model).items()}, "GPT2LMHeadModel")
    return gpt_from_hub(model, lambda name: state.pop(name).to(model.wte.weight.dtype))


def load_pretrained(init, weights=None, cache_dir=DEFAULT_CACHE, device="cpu"):
    """The starting point of a fine-tune: (model, tokenizer) for a GPT-2 name (gpt2, ...,
    read from `weights` when given) or the path of a gpt checkpoint written by train.py.
    A fine-tune needs GPT-2 BPE ids (50256 is its padding), so a char-level model is refused."""
    if init in HUB_REPOS:
        return load_gpt2(init, weights, cache_dir, device=device), gpt.Tokenizer("gpt2")
    if not os.path.exists(init):
        raise FileNotFoundError(f"--init {init}: no such checkpoint; use {', '.join(HUB_REPOS)}, "
                                f"a gpt checkpoint from train.py, or scratch")
    model, tokenizer, _ = gpt.load_checkpoint(init, device)
    if tokenizer.kind != "gpt2":
        raise ValueError(f"{init} uses the {tokenizer.kind} tokenizer; fine-tuning needs GPT-2 BPE: "
                         f"train it with python train.py --model_type gpt --tokenizer gpt2")
    return model, tokenizer


def main(argv=None):
    parser = argparse.ArgumentParser(description="Load OpenAI's GPT-2 weights into gpt.py and generate text.")
    parser.add_argument("--model", default="gpt2", choices=HUB_REPOS,
                        help="which GPT-2 (its size, when no config.json)")
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
            model, tokenizer, _ = gpt.load_checkpoint(args.ckpt, args.device)
        else:
            model = load_gpt2(args.model, args.weights, args.cache_dir, args.timeout, args.device)
            tokenizer = gpt.Tokenizer("gpt2")
        prompt = tokenizer.encode(args.prompt)
        print(f"{args.ckpt or args.weights or args.model}: {model.param_counts()['total'] / 1e6:.2f}M parameters, "
              f"{model.config}")
        if args.export:
            print(f"exported to {export_gpt2(model, args.export)}")
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if args.max_new_tokens:
        idx = torch.tensor([prompt] * args.num_samples, dtype=torch.long, device=args.device)
        out = model.generate(idx, args.max_new_tokens, args.temperature, args.top_k, args.top_p)
        for row in out.tolist():
            print(tokenizer.decode(row))
            print("-" * 40)


if __name__ == "__main__":
    main()
