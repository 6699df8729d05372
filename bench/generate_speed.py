"""
bench/generate_speed.py - tokens per second of a model file's generate() (KV cache, eager and compile=True) against
transformers' generate on the same weights, beside the memory bound, in float32 and bfloat16.

    OMP_NUM_THREADS=1 python bench/generate_speed.py                  # GPT-2 124M, 8-token prompt, 200 new, 5 reps
    OMP_NUM_THREADS=1 python bench/generate_speed.py --recompute      # also the cache-less path (nanoGPT's generate)
    python bench/generate_speed.py --model_type moderngpt --dtypes float32 --new_tokens 50 --reps 1

Greedy decoding from random weights (speed does not depend on what the weights learned), batch 1. Decoding one
token reads every weight once, so it is bound by memory bandwidth: bound = read bandwidth / bytes of the weights a
step reads (all parameters, less the position table and an untied token table, which are looked up, not read
whole; the KV cache's few MB are left out, so the bound is an upper one). The bandwidth is measured here, before
every round, as the sum of a 1 GiB float32 tensor (nothing else is summed: DRAM's read speed at this thread count).
transformers' GPT2LMHeadModel (default sdpa attention) is built from GPT-2's config with random weights, and the
model file's model gets the same weights through load_hf.from_hf. Runs alternate (eager, compiled, transformers,
...) so that machine noise hits all alike; medians are printed, and whether the greedy tokens agree (bfloat16
rounds differently in each: random weights' near-ties can flip). generate(compile=True) is compiled once, before
the timed runs (its compile time is printed).
"""

import argparse
import importlib
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from train import MODEL_FILES

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def read_bandwidth(gib=1.0, reps=5):
    """DRAM read bandwidth in bytes/s: the median time of summing a float32 tensor far larger than the caches."""
    x = torch.ones(int(gib * 2**30) // 4)
    x.sum()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - t0)
    return x.numel() * 4 / statistics.median(times)


def bytes_per_token(model):
    """Bytes of the weights one decoding step reads: every parameter, less the tables it only looks rows up in."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    looked_up = [model.wpe.weight] if hasattr(model, "wpe") else []
    if model.lm_head.weight is not model.wte.weight:  # untied: the token table is looked up only
        looked_up.append(model.wte.weight)
    return total - sum(w.numel() * w.element_size() for w in looked_up)


def timed(generate, new_tokens):
    t0 = time.perf_counter()
    out = generate()
    return new_tokens / (time.perf_counter() - t0), out


def gpt2_pair(preset):
    """transformers' GPT2LMHeadModel of a gpt.py preset's shape with random weights, and gpt.py's copy of them."""
    import transformers

    import gpt
    import load_hf

    config = gpt.GPTConfig(**gpt.PRESETS[preset])
    hf_config = transformers.GPT2Config(n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                                        n_positions=config.block_size, vocab_size=config.vocab_size)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    hf.generation_config.eos_token_id = None
    ours = load_hf.from_hf(hf.config.to_dict(), {k: v.clone() for k, v in hf.state_dict().items()})
    return ours, hf


def hf_generate(hf, prompt, new_tokens):
    return hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, do_sample=False,
                       pad_token_id=0, eos_token_id=None, use_cache=True)


def recompute(model, prompt, new_tokens):
    """nanoGPT's generate: the last block_size tokens through the model again for every new token (no cache)."""
    idx = prompt
    with torch.no_grad():
        for _ in range(new_tokens):
            logits, _ = model(idx[:, -model.config.block_size:])
            idx = torch.cat((idx, logits[:, -1].argmax(dim=-1, keepdim=True)), dim=1)
    return idx


def bench(model, hf, prompt, args, dtype_name):
    """One dtype: the medians of every path's tok/s, the bound, and whether the greedy tokens agree."""
    new = args.new_tokens
    paths = {"eager": lambda: model.generate(prompt, new, temperature=0),
             "compiled": lambda: model.generate(prompt, new, temperature=0, compile=True)}
    if hf is not None:
        paths["transformers"] = lambda: hf_generate(hf, prompt, new)
    if args.recompute:
        paths["no cache"] = lambda: recompute(model, prompt, new)
    t0 = time.perf_counter()
    paths["compiled"]()
    compile_s = time.perf_counter() - t0
    speeds, outs, bandwidths = {name: [] for name in paths}, {}, []
    with torch.no_grad():
        for _ in range(args.reps):
            bandwidths.append(read_bandwidth())
            for name, generate in paths.items():
                speed, outs[name] = timed(generate, new)
                speeds[name].append(speed)
    medians = {name: statistics.median(s) for name, s in speeds.items()}
    bandwidth = statistics.median(bandwidths)
    bound = bandwidth / bytes_per_token(model)
    agree = {name: torch.equal(out, outs["eager"]) for name, out in outs.items() if name != "eager"}
    return {"dtype": dtype_name, "speeds": medians, "bound": bound, "bandwidth": bandwidth, "agree": agree,
            "compile_s": compile_s, "bytes": bytes_per_token(model)}


def print_table(rows):
    names = list(rows[0]["speeds"])
    ratios = ["compiled / bound", "compiled / eager"] + (["compiled / transformers"] if "transformers" in names else [])
    header = ["dtype", "weights read / token", "read bandwidth", "bound", *names, *ratios]
    print("\n| " + " | ".join(header) + " |\n" + "| --- " * len(header) + "|")
    for r in rows:
        s = r["speeds"]
        cells = [r["dtype"], f"{r['bytes'] / 1e6:.0f} MB", f"{r['bandwidth'] / 1e9:.1f} GB/s",
                 f"{r['bound']:.1f} tok/s"]
        cells += [f"{s[name]:.1f} tok/s" for name in names]
        cells += [f"**{s['compiled'] / r['bound']:.0%}**", f"{s['compiled'] / s['eager']:.2f}x"]
        if "transformers" in names:
            cells.append(f"**{s['compiled'] / s['transformers']:.2f}x**")
        print("| " + " | ".join(cells) + " |")
    for r in rows:
        agree = ", ".join(f"{name} {'agrees' if same else 'DIFFERS'}" for name, same in r["agree"].items())
        print(f"{r['dtype']}: greedy tokens against eager: {agree}; first compile {r['compile_s']:.0f} s")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_type", default="gpt", choices=MODEL_FILES)
    p.add_argument("--preset", default="gpt2")
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    p.add_argument("--prompt_len", type=int, default=8)
    p.add_argument("--new_tokens", type=int, default=200)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--recompute", action="store_true", help="also time the cache-less path (slow)")
    p.add_argument("--no_transformers", action="store_true", help="skip transformers (GPT-2 presets only have it)")
    args = p.parse_args()
    module = importlib.import_module(MODEL_FILES[args.model_type])
    if args.model_type == "gpt" and not args.no_transformers:
        model32, hf32 = gpt2_pair(args.preset)
    else:
        torch.manual_seed(0)
        model32, hf32 = module.Model(module.Config(**module.PRESETS[args.preset])).eval(), None
    prompt = torch.randint(0, model32.config.vocab_size, (1, args.prompt_len))
    print(f"{args.model_type} {args.preset}: {model32.param_counts()['total'] / 1e6:.1f}M parameters, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, batch 1, prompt {args.prompt_len}, "
          f"{args.new_tokens} new tokens, greedy, median of {args.reps}")
    rows = []
    for name in args.dtypes:
        dtype = DTYPES[name]
        model = model32.to(dtype)  # to() casts in place: one copy of each model, in --dtypes' order
        hf = None if hf32 is None else hf32.to(dtype)
        rows.append(bench(model, hf, prompt, args, name))
        speeds = {path: round(speed, 1) for path, speed in rows[-1]["speeds"].items()}
        print(name, speeds, f"bound {rows[-1]['bound']:.1f}", flush=True)
    print_table(rows)


if __name__ == "__main__":
    main()
