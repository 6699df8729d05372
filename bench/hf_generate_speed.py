"""
bench/hf_generate_speed.py - generation speed of the model files' generate (KV cache; eager and compile=True)
against transformers' generate, on the same random weights: batch 1, greedy, --new_tokens after an 8-token
prompt, on the CPU, beside the memory bound (as bench/generate_speed.py computes it).

    python bench/hf_generate_speed.py                           # both shapes, 200 new tokens, 5 reps, float32
    python bench/hf_generate_speed.py --shapes smollm2-135m --dtype bfloat16
    python bench/hf_generate_speed.py --new_tokens 5 --reps 1   # a quick check that it runs

Shapes (random weights: speed does not depend on what they learned):
  smollm2-135m         LlamaForCausalLM as SmolLM2-135M: 30 layers, 576 wide, 9/3 heads, 1536 MLP, 49152 vocab, tied
  deepseek-v2-lite-4l  DeepseekV2ForCausalLM as DeepSeek-V2-Lite, cut to 4 of its 27 layers and 16 of its 64 experts
                       so both copies fit in memory (~4 GiB each); per layer the same: 2048 wide, 16 heads, kv_lora 512,
                       nope 128, rope 64, v 128, 2 shared + top-6 routed experts of 1408, first layer dense (10944),
                       vocab 102400, YaRN factor 40 with mscale 0.707
transformers' model is built with from_config (default attention, sdpa) and moved into the model file by
load_hf.from_hf. Runs alternate (ours, transformers, ours, ...) so that machine noise hits both alike; the medians
and their ratio are printed, and whether the greedy outputs agree (random weights can flip near-ties). The
compiled path is compiled once before the timed runs; mla_moe.py's MoE layers break its graph at the expert
dispatch (data-dependent), so there only the rest is compiled.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from generate_speed import DTYPES, bytes_per_token, read_bandwidth

import load_hf

SHAPES = {
    "smollm2-135m": ("LlamaConfig", {
        "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True, "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0}}),
    "deepseek-v2-lite-4l": ("DeepseekV2Config", {
        "vocab_size": 102400, "hidden_size": 2048, "intermediate_size": 10944, "moe_intermediate_size": 1408,
        "num_hidden_layers": 4, "num_attention_heads": 16, "num_key_value_heads": 16, "q_lora_rank": None,
        "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
        "n_routed_experts": 16, "n_shared_experts": 2, "num_experts_per_tok": 6, "topk_method": "greedy",
        "norm_topk_prob": False, "routed_scaling_factor": 1.0, "first_k_dense_replace": 1,
        "max_position_embeddings": 163840, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0,
                            "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1,
                            "mscale": 0.707, "mscale_all_dim": 0.707}}),
}


def timed(generate):
    t0 = time.perf_counter()
    out = generate()
    return time.perf_counter() - t0, out


def bench(name, args):
    import transformers
    config_class, fields = SHAPES[name]
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(getattr(transformers, config_class)(**fields),
                                                       dtype=torch.float32).eval().to(DTYPES[args.dtype])
    hf.generation_config.eos_token_id = None
    config = {**hf.config.to_dict(), "architectures": [type(hf).__name__]}
    ours = load_hf.from_hf(config, {k: v.clone() for k, v in hf.state_dict().items()}, dtype=DTYPES[args.dtype],
                           block_size=args.prompt_len + args.new_tokens)
    prompt = torch.randint(0, fields["vocab_size"], (1, args.prompt_len))
    print(f"{name}: {ours.param_counts()['total'] / 1e6:.0f}M parameters ({ours.param_counts()['active'] / 1e6:.0f}M "
          f"active), {torch.get_num_threads()} threads, prompt {args.prompt_len}, {args.new_tokens} new tokens")
    paths = {"model file": lambda: ours.generate(prompt, args.new_tokens, temperature=0),
             "model file compiled": lambda: ours.generate(prompt, args.new_tokens, temperature=0, compile=True),
             "transformers": lambda: hf.generate(prompt, attention_mask=torch.ones_like(prompt),
                                                 max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0,
                                                 eos_token_id=None, use_cache=True)}
    seconds, _ = timed(paths["model file compiled"])
    print(f"  first compiled call: {seconds:.0f} s")
    runs, outputs, bandwidths = {path: [] for path in paths}, {}, []
    with torch.no_grad():
        for _ in range(args.reps):
            bandwidths.append(read_bandwidth())
            for path, generate in paths.items():
                seconds, outputs[path] = timed(generate)
                runs[path].append(args.new_tokens / seconds)
    speed = {path: statistics.median(r) for path, r in runs.items()}
    bound = statistics.median(bandwidths) / bytes_per_token(ours)
    for path in paths:
        same = "" if path == "model file" else "   greedy tokens " + (
            "agree" if torch.equal(outputs[path], outputs["model file"]) else "DIFFER")
        print(f"  {path + ':':21s}{speed[path]:7.1f} tok/s (median of {args.reps}), {speed[path] / bound:4.0%} of the "
              f"bound{same}")
    print(f"  bound:               {bound:7.1f} tok/s ({bytes_per_token(ours) / 1e6:.0f} MB of weights a token at "
          f"{statistics.median(bandwidths) / 1e9:.1f} GB/s)")
    print(f"  ratios to transformers: eager {speed['model file'] / speed['transformers']:.2f}x, compiled "
          f"{speed['model file compiled'] / speed['transformers']:.2f}x")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=SHAPES)
    p.add_argument("--prompt_len", type=int, default=8)
    p.add_argument("--new_tokens", type=int, default=200)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="of both models' weights")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {args.dtype}, CPU")
    for name in args.shapes:
        bench(name, args)


if __name__ == "__main__":
    main()
