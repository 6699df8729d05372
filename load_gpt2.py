"""
load_gpt2.py - OpenAI's GPT-2 weights (gpt2, gpt2-medium, gpt2-large, gpt2-xl) in gpt.py's GPT, and the
starting point of the two fine-tunes (LLMs-from-scratch ch05's path).

A thin front to load_hf.py, which holds the download (streamed, resumable, size-checked) and the reading of
safetensors or PyTorch files, and to hf_families.py, which maps GPT-2's names: OpenAI's GPT-2 (Radford et al.
2019) stores its four Linear layers per block as "Conv1D" with weights of shape (in, out), the transpose of
nn.Linear's (out, in); everything else maps name for name (gpt.py uses OpenAI's names), and the output head is
tied to wte. Without a config.json beside a bare weights file, --model names the size.

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
from load_hf import DEFAULT_CACHE, HUB_REPOS, config_from_hub, download, fetch_gpt2, read_weights  # noqa: F401


def load_gpt2(name="gpt2", weights=None, cache_dir=DEFAULT_CACHE, timeout=30, device="cpu"):
    """GPT-2 `name` as a gpt.GPT in eval mode: from `weights` (a file or folder, no network),
    else downloaded from the hub into cache_dir."""
    path = weights if weights else fetch_gpt2(name, cache_dir, timeout)
    hub_state, hub_config = read_weights(path)
    if hub_config is not None and load_hf.architecture(hub_config) != "GPT2LMHeadModel":
        raise ValueError(f"{path} holds a {load_hf.architecture(hub_config)}, not GPT-2: use python load_hf.py "
                         f"--weights {path}")
    return load_hf.from_hf(hub_config, hub_state, name=name).to(device).eval()


def export_gpt2(model, folder):
    """Write gpt.py's `model` as Hugging Face GPT-2 files (Conv1D layout, no head: it is tied)."""
    if not isinstance(model, gpt.GPT):
        raise TypeError(f"export_gpt2 writes gpt.py's GPT, not {type(model).__name__}: use load_hf.export")
    return load_hf.export(model, folder)


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


def fine_tune_parser(description):
    """The fine-tunes' command line: argparse's errors in one line (exit status 2), and the GPT they start from."""
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False)
    parser.error = lambda message: parser.exit(2, f"error: {message}\n")  # one line, without the usage block
    parser.add_argument("--init", default="scratch",
                        help="scratch, gpt2 (or gpt2-medium, ...), or a train.py gpt checkpoint")
    parser.add_argument("--weights", help="local GPT-2 safetensors file or folder for --init gpt2 (no network)")
    parser.add_argument("--cache_dir", default=DEFAULT_CACHE, help="where GPT-2 downloads are kept")
    return parser


def main(argv=None):
    parser = load_hf.ArgumentParser(prog="load_gpt2.py", description="Load OpenAI's GPT-2 weights into gpt.py and "
                                    "generate text.")
    parser.add_argument("--model", default="gpt2", choices=HUB_REPOS,
                        help="which GPT-2 (its size, when no config.json)")
    parser.add_argument("--weights", help="local .safetensors file or Hugging Face folder (no network used)")
    parser.add_argument("--ckpt", help="a gpt checkpoint from train.py instead (e.g. to --export it)")
    parser.add_argument("--export", metavar="DIR", help="write the model as model.safetensors + config.json")
    parser.add_argument("--prompt", default="Hello, I'm a language model,", help="text to continue")
    load_hf.add_common_options(parser)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    try:
        if args.ckpt:
            model, tokenizer, _ = gpt.load_checkpoint(args.ckpt, args.device)
        else:
            model = load_gpt2(args.model, args.weights, args.cache_dir, args.timeout, args.device)
            tokenizer = gpt.Tokenizer("gpt2")
        prompt = tokenizer.encode(args.prompt)
        if not prompt:
            raise ValueError("--prompt is empty: give text to continue")
        print(f"{args.ckpt or args.weights or args.model}: {model.param_counts()['total'] / 1e6:.2f}M parameters, "
              f"{model.config}")
        if args.export:
            print(f"exported to {export_gpt2(model, args.export)}")
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if args.max_new_tokens:
        idx = torch.tensor([prompt] * args.num_samples, dtype=torch.long, device=args.device)
        out = model.generate(idx, args.max_new_tokens, args.temperature, args.top_k, args.top_p, compile=args.compile)
        for row in out.tolist():
            print(tokenizer.decode(row))
            print("-" * 40)


if __name__ == "__main__":
    main()
