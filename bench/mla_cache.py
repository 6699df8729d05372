"""
bench/mla_cache.py - how much KV cache Multi-head Latent Attention keeps per token, against multi-head,
grouped-query and multi-query attention of the same width.

    python bench/mla_cache.py                 # mla_moe.py's default config (GPT-2 small's shape) and its cpu preset

MLA caches the latent c_KV (kv_lora_rank values) and one RoPE key shared by all heads (qk_rope_head_dim
values) per token and layer, whatever the number of heads (DeepSeek-V2 §2.1.4, Table 1); MHA caches a key
and a value per head.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mla_moe


def cache_size_table(config):
    """KV-cache values and bytes per token per layer: MLA against MHA, GQA and MQA of the same width."""
    head_dim, n_kv_head = config.n_embd // config.n_head, max(2, config.n_head // 4)  # GQA as Llama 3 8B's 32/8
    r, dr = config.kv_lora_rank, config.qk_rope_head_dim
    rows = [
        ("MHA", 2 * config.n_head * head_dim),
        (f"GQA, {n_kv_head} KV heads", 2 * n_kv_head * head_dim),
        ("MQA, 1 KV head", 2 * head_dim),
        (f"MLA, r {r} + dr {dr}", r + dr),
    ]
    lines = [
        f"KV cache per token per layer, {config.n_layer} layers x {config.n_head} heads x {config.n_embd} wide:",
        f"{'attention':<22}{'values':>8}{'bf16 bytes':>12}{'fp32 bytes':>12}{'/ MHA':>8}",
    ]
    for name, values in rows:
        lines.append(f"{name:<22}{values:>8}{2 * values:>12}{4 * values:>12}{values / rows[0][1]:>8.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(cache_size_table(mla_moe.MLAMoEConfig()))
    print()
    print(cache_size_table(mla_moe.MLAMoEConfig(**mla_moe.PRESETS["cpu"])))
