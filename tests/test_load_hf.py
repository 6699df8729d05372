"""load_hf.py against transformers: tiny random checkpoints of every architecture, saved with save_pretrained, load
to the same logits (1e-4, float32) and the same 20 greedy tokens; every model file exports back to transformers;
tokenizer.json round trips; each kind of unsupported setting is refused in one line. No network: the hub is a
local HTTP server. Weights are redrawn at std 0.2 (norms 1 + 0.1 N(0, 1), V3's correction bias random) so that a
RoPE, scaling or routing mistake moves the logits by far more than the tolerance."""
import codecs
import contextlib
import io
import json
import shutil
import threading
from http.server import ThreadingHTTPServer

import pytest
import torch
import transformers as T
from cli_checks import one_line_error, run_script
from safetensors.torch import load_file, save_file
from test_load_gpt2 import FileServer

import gpt
import load_gpt2
import load_hf
import mla_moe
import modern_gpt
import moe_gpt

VOCAB = 100
IDS = torch.tensor([[5, 17, 42, 9, 77, 3, 64, 21, 8, 99, 13, 50]])
SMALL = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "bos_token_id": 1,
         "eos_token_id": 2, "max_position_embeddings": 128}
YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0, "original_max_position_embeddings": 32,
        "beta_fast": 32, "beta_slow": 1}
MLA = dict(SMALL, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, moe_intermediate_size=16,
           num_key_value_heads=4, max_position_embeddings=256)


def configs():
    """name: (transformers config, what the case covers)."""
    return {
        "gpt2": T.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                             embd_pdrop=0.0, attn_pdrop=0.0),
        "llama": T.LlamaConfig(**SMALL, num_hidden_layers=2, num_key_value_heads=2, tie_word_embeddings=False,
                               rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
        # llama3 scaling with original length 64: wavelengths 6.3 (kept), 32.6 (blended) and >= 169 (slowed)
        "llama3": T.LlamaConfig(**dict(SMALL, max_position_embeddings=256), num_hidden_layers=2, num_key_value_heads=1,
                                head_dim=16, rms_norm_eps=1e-5, tie_word_embeddings=True,
                                rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                 "original_max_position_embeddings": 64}),
        "qwen3": T.Qwen3Config(**SMALL, num_hidden_layers=2, num_key_value_heads=2, head_dim=16,
                               tie_word_embeddings=True,
                               rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
        "qwen3_moe": T.Qwen3MoeConfig(**SMALL, num_hidden_layers=3, num_key_value_heads=2, head_dim=16,
                                      moe_intermediate_size=16, num_experts=8, num_experts_per_tok=2,
                                      norm_topk_prob=True, mlp_only_layers=[0], tie_word_embeddings=False,
                                      rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
        "deepseek_v3": T.DeepseekV3Config(**MLA, num_hidden_layers=3, q_lora_rank=24, v_head_dim=12, n_routed_experts=8,
                                          n_shared_experts=1, num_experts_per_tok=2, n_group=4, topk_group=2,
                                          first_k_dense_replace=1, routed_scaling_factor=2.5, rope_interleave=True,
                                          rope_parameters={**YARN, "mscale": 1.0, "mscale_all_dim": 1.0}),
        "deepseek_v3_halves": T.DeepseekV3Config(**MLA, num_hidden_layers=2, q_lora_rank=24, v_head_dim=8,
                                                 n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
                                                 n_group=2, topk_group=1, first_k_dense_replace=1,
                                                 rope_interleave=False,
                                                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
        "moonlight": T.DeepseekV3Config(**MLA, num_hidden_layers=2, q_lora_rank=None, v_head_dim=8, n_routed_experts=8,
                                        n_shared_experts=2, num_experts_per_tok=3, n_group=1, topk_group=1,
                                        first_k_dense_replace=1, routed_scaling_factor=2.446, rms_norm_eps=1e-2,
                                        rope_parameters={"rope_type": "default", "rope_theta": 50000.0}),
        "deepseek_v2_lite": T.DeepseekV2Config(**MLA, num_hidden_layers=2, q_lora_rank=None, v_head_dim=8,
                                               n_routed_experts=8, n_shared_experts=2, num_experts_per_tok=2,
                                               topk_method="greedy", routed_scaling_factor=1.5, first_k_dense_replace=1,
                                               rope_parameters={**YARN, "mscale": 0.707, "mscale_all_dim": 0.707}),
        # V2's group limit scores a group by its best expert, so it binds only with top_k > topk_group (4 > 2)
        "deepseek_v2_group": T.DeepseekV2Config(**MLA, num_hidden_layers=3, q_lora_rank=24, v_head_dim=12,
                                                n_routed_experts=12, n_shared_experts=1, num_experts_per_tok=4,
                                                topk_method="group_limited_greedy", n_group=4, topk_group=2,
                                                routed_scaling_factor=16.0, first_k_dense_replace=1, rms_norm_eps=1e-3,
                                                tie_word_embeddings=True,
                                                rope_parameters={**YARN, "mscale": 0.707, "mscale_all_dim": 0.707}),
    }


def redraw(module, seed=0):
    """Weights N(0, 0.2^2), norm gains 1 + 0.1 N(0, 1) (LayerNorm biases 0.1 N), routing biases 0.1 N (V3's)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            norm = p.dim() == 1 and any(s in name for s in ("norm", "ln_", "ln_f"))
            p.copy_((0.0 if name.endswith("bias") else 1.0) + 0.1 * torch.randn(p.shape, generator=g) if norm
                    else 0.2 * torch.randn(p.shape, generator=g))
        for name, b in module.named_buffers():
            sigmoid = getattr(getattr(module, "config", None), "gate", None) == "sigmoid"  # mla_moe's V3 gates
            if name.endswith("e_score_correction_bias") or (name.endswith("router.bias") and sigmoid):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
    return module


def hf_greedy(hf, ids, n=20):
    """transformers' n greedy tokens after ids, checked to be apart from a tie: at every step its best logit leads
    the second by more than 2e-4. Where our logits are within 1e-4 of its (float32 rounding), ours pick the same
    tokens on any CPU, so comparing the tokens tests the model, not how a CPU rounds."""
    hf.generation_config.eos_token_id = None
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, pad_token_id=0,
                      eos_token_id=None, use_cache=True)
    with torch.no_grad():
        best, second = hf(out).logits[0, ids.size(1) - 1:-1].topk(2).values.unbind(-1)
    assert (best - second).min() > 2e-4, "a near tie: choose other weights for this case"
    return out


def hub_style(folder, cfg_changes):
    """Rewrite config.json as a hub file written by transformers v4 would say the same (or apply changes)."""
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    if cfg_changes == "v4":
        rope = cfg.pop("rope_parameters")
        cfg["rope_theta"] = rope.pop("rope_theta")
        kind = rope.pop("rope_type")
        cfg["rope_scaling"] = None if kind == "default" else {"type" if "deepseek" in cfg["model_type"] else
                                                              "rope_type": kind, **rope}
        if "num_local_experts" in cfg:
            cfg["num_experts"] = cfg.pop("num_local_experts")
        if cfg["model_type"].startswith("deepseek"):
            del cfg["head_dim"], cfg["qk_head_dim"]  # v5 adds these (head_dim = the RoPE dim)
    else:
        cfg.update(cfg_changes)
    path.write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """saved(name) -> (folder, transformers model): each tiny checkpoint built and saved once per module."""
    cache = {}

    def get(name, shard=False):
        if (name, shard) not in cache:
            torch.manual_seed(0)
            hf = redraw(T.AutoModelForCausalLM.from_config(configs()[name], attn_implementation="eager")).eval()
            folder = tmp_path_factory.mktemp(name)
            hf.save_pretrained(folder, **({"max_shard_size": "20KB"} if shard else {}))
            cache[name, shard] = folder, hf
        return cache[name, shard]
    return get


def copy_of(saved, name, tmp_path, **kw):
    folder, hf = saved(name, **kw)
    shutil.copytree(folder, tmp_path / name)
    return tmp_path / name, hf


# ----------------------------------------------------------------------------- checkpoints in

@pytest.mark.parametrize("name, shard, form, limited", [
    ("gpt2", False, None, False),
    ("llama", False, None, False),  # untied, grouped-query
    ("llama3", False, "v4", False),  # llama3 scaling, head_dim 16 != 32 / 4, multi-query, tied; hub config form
    ("qwen3", False, None, False),  # QK-norm, head_dim apart, tied
    ("qwen3_moe", True, "v4", False),  # dense block 0, norm_topk_prob, sharded, hub's num_experts
    ("deepseek_v3", True, None, True),  # q latent, interleaved RoPE, YaRN mscale, groups, sigmoid + bias, sharded
    ("deepseek_v3_halves", False, None, True),  # rope_interleave false: no reordering
    ("moonlight", False, "v4", False),  # no q latent, latent norms' eps 1e-6 apart from rms_norm_eps 1e-2
    ("deepseek_v2_lite", False, "v4", False),  # interleaved RoPE, YaRN mscale 0.707, softmax greedy, not renormalised
    ("deepseek_v2_group", False, None, True),  # group_limited_greedy, q latent, tied head (copied: MLA never ties)
])
def test_checkpoint_loads_to_the_logits_and_greedy_tokens_of_transformers(saved, tmp_path, name, shard, form,
                                                                          limited):
    folder, hf = copy_of(saved, name, tmp_path, shard=shard)
    if shard:
        assert (folder / "model.safetensors.index.json").exists() and not (folder / "model.safetensors").exists()
    if form:
        hub_style(folder, form)
    model, tokenizer, _ = load_hf.load(str(folder))
    with torch.no_grad():
        expected = hf(IDS).logits
        greedy = hf_greedy(hf, IDS)
        assert (model(greedy)[0] - hf(greedy).logits).abs().max() < 1e-4  # along the whole greedy path
        assert torch.equal(model.generate(IDS, 20, temperature=0), greedy)
        if limited:  # the group limit binds: without it the routing, so the logits, differ
            model.config.n_group = 1
            assert (model(IDS)[0] - expected).abs().max() > 1e-2
    assert tokenizer is None  # no tokenizer.json here


def test_tied_config_with_its_own_head_on_disk_loads_untied_as_transformers_does(saved, tmp_path):
    folder, _ = copy_of(saved, "qwen3", tmp_path)
    state = load_file(folder / "model.safetensors")
    assert "lm_head.weight" not in state
    state["lm_head.weight"] = 0.2 * torch.randn(VOCAB, 32)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    hf = T.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    model = load_hf.load(str(folder))[0]
    assert not model.config.tie_embeddings and model.lm_head.weight is not model.wte.weight
    with torch.no_grad():
        assert (model(IDS)[0] - hf(IDS).logits).abs().max() < 1e-4
    folder, _ = copy_of(saved, "gpt2", tmp_path)  # gpt.py cannot untie: refused
    state = load_file(folder / "model.safetensors")
    state["lm_head.weight"] = 0.2 * torch.randn(VOCAB, 32)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ValueError, match="always ties"):
        load_hf.load(str(folder))


def test_fused_experts_and_mtp_layers_and_old_buffers_are_read(saved, tmp_path):
    _, hf = saved("qwen3_moe")
    hf.save_pretrained(tmp_path / "fused", save_original_format=False)  # transformers' in-memory expert layout
    assert any(k.endswith("experts.gate_up_proj") for k in load_file(tmp_path / "fused" / "model.safetensors"))
    with torch.no_grad():
        assert (load_hf.load(str(tmp_path / "fused"))[0](IDS)[0] - hf(IDS).logits).abs().max() < 1e-4
    folder, hf = copy_of(saved, "moonlight", tmp_path)
    state = load_file(folder / "model.safetensors")
    state["model.layers.2.eh_proj.weight"] = torch.randn(32, 64)  # V3's MTP layer, past num_hidden_layers
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)  # old files' RoPE buffer
    save_file(state, folder / "model.safetensors")
    with torch.no_grad():
        assert (load_hf.load(str(folder))[0](IDS)[0] - hf(IDS).logits).abs().max() < 1e-4


# ----------------------------------------------------------------------------- text in, text out

def byte_level_tokenizer(vocab_size=300):
    """A tiny GPT-2-style byte-level BPE learned offline from the Zen of Python: lossless on any UTF-8."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(codecs.decode(this.s, "rot13").splitlines(), trainer=trainer)
    return tokenizer


def test_tokenizer_json_round_trip_and_the_command_line_continues_the_prompt(tmp_path, capsys):
    tokenizer = byte_level_tokenizer()
    config = T.LlamaConfig(**dict(SMALL, vocab_size=300), num_hidden_layers=2, num_key_value_heads=2)
    hf = redraw(T.AutoModelForCausalLM.from_config(config, attn_implementation="eager")).eval()
    hf.save_pretrained(tmp_path)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    model, ours, _ = load_hf.load(str(tmp_path))
    text = "naïve café 🙂 Beautiful is better than ugly."
    assert ours.encode(text) == tokenizer.encode(text).ids and ours.decode(ours.encode(text)) == text
    prompt = "Beautiful is better than"
    ids = torch.tensor([tokenizer.encode(prompt).ids])
    greedy = hf_greedy(hf, ids)
    with torch.no_grad():
        assert (model(greedy)[0] - hf(greedy).logits).abs().max() < 1e-4
    expected = greedy[0, ids.size(1):].tolist()
    expected = expected[:expected.index(2)] if 2 in expected else expected  # eos_token_id 2 ends the text
    load_hf.main(["--weights", str(tmp_path), "--prompt", prompt, "--temperature", "0", "--max_new_tokens", "20"])
    out = capsys.readouterr().out
    assert out == tokenizer.decode(ids[0].tolist() + expected) + "\n" and out.startswith(prompt)
    assert ours.decode(model.generate(ids, 20, temperature=0)[0].tolist()).startswith(prompt)


def test_ids_in_and_out_without_a_tokenizer_and_bfloat16(saved, capsys):
    folder, _ = saved("moonlight")
    load_hf.main(["--weights", str(folder), "--prompt_ids", "5,17,42", "--temperature", "0", "--max_new_tokens", "5",
                  "--dtype", "bfloat16"])
    row = [int(i) for i in capsys.readouterr().out.strip().split(",")]
    assert row[:3] == [5, 17, 42] and len(row) <= 8 and all(0 <= i < VOCAB for i in row)


# ----------------------------------------------------------------------------- models out

def our_models():
    """One model of each file, random (std 0.2), in settings transformers can compute exactly."""
    return {
        "gpt": gpt.GPT(gpt.GPTConfig(**dict(gpt.PRESETS["cpu"], n_embd=32, n_head=4, n_layer=2, vocab_size=VOCAB))),
        "moderngpt-llama3": modern_gpt.ModernGPT(modern_gpt.ModernGPTConfig(
            block_size=64, vocab_size=VOCAB, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, tie_embeddings=False,
            rope_theta=500000.0, rope_scaling_factor=8.0, rope_original_len=64)),
        "moderngpt-qwen3": modern_gpt.ModernGPT(modern_gpt.ModernGPTConfig(
            block_size=64, vocab_size=VOCAB, n_layer=2, n_head=4, n_kv_head=1, n_embd=32, head_dim=16, qk_norm=True)),
        "moegpt": moe_gpt.MoEGPT(moe_gpt.MoEGPTConfig(
            block_size=64, vocab_size=VOCAB, n_layer=3, n_head=4, n_kv_head=2, n_embd=32, qk_norm=True, top_k=2,
            n_shared_experts=0, granularity=1, moe_hidden=16, first_dense_layers=1, renormalize=False)),
        "mlamoe-v3": mla_moe.MLAMoE(mla_moe.MLAMoEConfig(
            block_size=64, vocab_size=VOCAB, n_layer=3, n_head=4, n_embd=32, q_lora_rank=24, kv_lora_rank=16,
            qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=12, latent_norm_eps=1e-6, rope_scaling_factor=8.0,
            rope_original_len=32, rope_mscale=0.707, mlp_hidden=64, n_routed_experts=8, top_k=2, moe_hidden=16,
            n_group=4, topk_group=2)),
        "mlamoe-v2": mla_moe.MLAMoE(mla_moe.MLAMoEConfig(
            block_size=64, vocab_size=VOCAB, n_layer=2, n_head=4, n_embd=32, kv_lora_rank=16, qk_nope_head_dim=8,
            qk_rope_head_dim=8, v_head_dim=8, latent_norm_eps=1e-6, mlp_hidden=64, n_routed_experts=8, top_k=2,
            moe_hidden=16, gate="softmax", renormalize=False, routed_scaling_factor=1.0, n_group=2, topk_group=1)),
    }


@pytest.mark.parametrize("name", list(our_models()))
def test_every_model_file_exports_to_the_logits_of_transformers(tmp_path, name):
    torch.manual_seed(0)
    model = our_models()[name].eval()
    redraw(model)  # mlamoe-v3's routing bias too: it is V3's e_score_correction_bias
    load_hf.export(model, tmp_path)
    hf = T.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, attn_implementation="eager").eval()
    ids = IDS[:, :8]
    config = json.loads((tmp_path / "config.json").read_text())
    with torch.no_grad():
        assert (model(ids)[0] - hf(ids).logits).abs().max() < 1e-4
        # and back: with the same block_size the same computation (the same weights, layouts and rotary tables), so
        # bit for bit on any CPU; with config.json's context (a scaled RoPE states the context it scales to, so
        # longer tables) cos/sin of the same angles computed in longer vectors may differ by a float32 ulp
        same = load_hf.load(str(tmp_path), block_size=model.config.block_size)[0]
        assert torch.equal(same(ids)[0], model(ids)[0])
        longer = load_hf.load(str(tmp_path))[0]
        assert longer.config.block_size == min(config.get("max_position_embeddings", 64), 4096)
        assert (longer(ids)[0] - model(ids)[0]).abs().max() < 1e-5


def test_a_train_py_checkpoint_exports_by_its_model_type(tmp_path, capsys):
    model = redraw(our_models()["moderngpt-qwen3"]).eval()
    torch.save({"model_type": "moderngpt", "config": vars(model.config), "model": model.state_dict(),
                "tokenizer": {"kind": "char", "chars": "abcdefgh"}}, tmp_path / "ckpt.pt")
    load_hf.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--export", str(tmp_path / "hf")])
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["Qwen3ForCausalLM"]
    hf = T.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        assert (model(IDS)[0] - hf(IDS).logits).abs().max() < 1e-4


@pytest.mark.parametrize("model, message", [
    (lambda: moe_gpt.MoEGPT(moe_gpt.MoEGPTConfig(**moe_gpt.PRESETS["cpu"], qk_norm=True)), "n_shared_experts=1"),
    (lambda: moe_gpt.MoEGPT(moe_gpt.MoEGPTConfig(**moe_gpt.PRESETS["cpu"])), "qk_norm=False"),
    (lambda: mla_moe.MLAMoE(mla_moe.MLAMoEConfig(**mla_moe.PRESETS["cpu"], latent_norm_eps=1e-5)),
     "latent_norm_eps=1e-05"),
    (lambda: mla_moe.MLAMoE(mla_moe.MLAMoEConfig(**mla_moe.PRESETS["cpu"], latent_norm_eps=1e-6, gate="softmax")),
     "renormalize=True"),
])
def test_what_transformers_cannot_compute_is_not_exported(tmp_path, model, message):
    with pytest.raises(ValueError, match=message):
        load_hf.export(model(), tmp_path)


# ----------------------------------------------------------------------------- refusals and bad input

@pytest.mark.parametrize("name, change, message", [
    ("llama", {"attention_bias": True}, "attention_bias=True: modern_gpt.py has no biases"),
    ("qwen3", {"use_sliding_window": True}, "use_sliding_window=True"),
    ("deepseek_v3", {"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}},
     "quant_method='fp8'"),
    ("llama", {"architectures": ["MistralForCausalLM"], "model_type": "mistral"}, "'MistralForCausalLM' is not supp"),
    ("llama", {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}}, "rope_type='dynamic'"),
    ("deepseek_v2_lite", {"rope_parameters": {**YARN, "mscale": 1.0, "mscale_all_dim": 0.707}},
     r"yarn attention_factor=1\.05"),
    ("qwen3_moe", {"decoder_sparse_step": 2}, "decoder_sparse_step=2"),
    ("deepseek_v2_lite", {"norm_topk_prob": True}, "norm_topk_prob=True"),
    ("qwen3", {"hidden_act": "gelu"}, "hidden_act='gelu'"),
])
def test_settings_the_model_file_cannot_compute_are_refused(saved, tmp_path, name, change, message):
    folder, _ = copy_of(saved, name, tmp_path)
    hub_style(folder, change)
    with pytest.raises(ValueError, match=message) as err:
        load_hf.load(str(folder))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("change, message", [
    (lambda sd: sd.update({"model.layers.1.self_attn.q_proj.weight": torch.zeros(40, 32)}),
     r"'model.layers.1.self_attn.q_proj.weight' has shape \(40, 32\), config.json's sizes give \(32, 32\)"),
    (lambda sd: sd.pop("model.layers.0.mlp.up_proj.weight"), r"lack 'model.layers.0.mlp.up_proj.weight'"),
    (lambda sd: sd.update({"model.layers.2.input_layernorm.weight": torch.ones(32)}),
     r"unexpected weight 'model.layers.2.input_layernorm.weight'"),
])
def test_tensor_names_and_shapes_are_checked(saved, tmp_path, change, message):
    folder, _ = copy_of(saved, "llama", tmp_path)
    state = load_file(folder / "model.safetensors")
    change(state)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ValueError, match=message):
        load_hf.load(str(folder))


def bad_inputs(tmp_path, saved):
    (tmp_path / "notes.txt").write_text("not weights\n")
    (tmp_path / "random.safetensors").write_bytes(torch.randint(0, 256, (4000,), dtype=torch.uint8).numpy().tobytes())
    model = gpt.GPT(gpt.GPTConfig(**gpt.PRESETS["cpu"], vocab_size=8))
    torch.save({"model_type": "gpt", "config": vars(model.config), "model": model.state_dict(),
                "tokenizer": {"kind": "char", "chars": "abcdefgh"}}, tmp_path / "ckpt.pt")
    mistral, _ = copy_of(saved, "llama", tmp_path)
    hub_style(mistral, {"architectures": ["MistralForCausalLM"]})
    return {"missing": (str(tmp_path / "nothing"), "no such file or folder"),
            "text": (str(tmp_path / "notes.txt"), "neither safetensors nor a PyTorch file"),
            "random bytes": (str(tmp_path / "random.safetensors"), "not a readable safetensors file"),
            "train.py checkpoint": (str(tmp_path / "ckpt.pt"), "written by train.py: pass it as --ckpt"),
            "unsupported": (str(mistral), "'MistralForCausalLM' is not supported")}


def test_bad_input_is_one_line_on_stderr_and_exit_code_2(saved, tmp_path, capsys):
    inputs = bad_inputs(tmp_path, saved)
    capsys.readouterr()  # what saving the checkpoints printed (transformers' progress), when this test made them
    for what, (weights, message) in inputs.items():
        for main in (load_hf.main, load_gpt2.main):
            with pytest.raises(SystemExit) as exit_:
                main(["--weights", weights, "--max_new_tokens", "2"])
            err = capsys.readouterr().err
            assert exit_.value.code == 2 and err.startswith("error: ") and message in err, (what, main, err)
            assert err.count("\n") == 1, err
    assert "neither safetensors" in one_line_error(run_script("load_hf.py", "--weights", str(tmp_path / "notes.txt")))


@pytest.mark.parametrize("script, args, message", [
    ("load_hf.py", ["--max_new_tokens", "-1"], "argument --max_new_tokens: -1 is not an integer >= 0"),  # counts
    ("load_hf.py", ["--temperature", "-0.5"], "argument --temperature: -0.5 is not a finite number >= 0"),  # 0: greedy
    ("load_hf.py", ["--temperature", "inf"], "argument --temperature: inf is not a finite number >= 0"),
    ("load_hf.py", ["--top_k", "-1"], "argument --top_k: -1 is not an integer >= 0"),  # 0: off
    ("load_hf.py", ["--top_k", "three"], "argument --top_k: invalid int value: 'three'"),
    ("load_hf.py", ["--top_p", "1.5"], "argument --top_p: 1.5 is not a finite number in (0, 1]"),
    ("load_hf.py", ["--top_p", "0"], "argument --top_p: 0 is not a finite number in (0, 1]"),
    ("load_hf.py", ["--num_samples", "0"], "argument --num_samples: 0 is not an integer >= 1"),  # sizes
    ("load_hf.py", ["--block_size", "0"], "argument --block_size: 0 is not an integer >= 1"),
    ("load_hf.py", ["--timeout", "0"], "argument --timeout: 0 is not a finite number > 0"),
    ("load_hf.py", ["--timeout", "nan"], "argument --timeout: nan is not a finite number > 0"),
    ("load_hf.py", ["--prompt_ids", "5,x"], ("argument --prompt_ids: '5,x' is not a comma-separated list of token "
                                             "ids >= 0")),
    ("load_hf.py", ["--dtype", "float8"], ("argument --dtype: invalid choice: 'float8' (choose from 'float32', "
                                           "'bfloat16', 'float16')")),
    ("load_hf.py", ["--model", "a/b", "--weights", "c"], "argument --weights: not allowed with argument --model"),
    ("load_hf.py", ["--bogus"], "unrecognized arguments: --bogus"),
    ("load_hf.py", ["--device", "gpu"], "argument --device: 'gpu' is no device: use cuda, cpu or mps"),
    ("load_gpt2.py", ["--max_new_tokens", "-3"], "argument --max_new_tokens: -3 is not an integer >= 0"),
    ("load_gpt2.py", ["--temperature", "-1"], "argument --temperature: -1 is not a finite number >= 0"),
    ("load_gpt2.py", ["--top_k", "-2"], "argument --top_k: -2 is not an integer >= 0"),
    ("load_gpt2.py", ["--top_p", "2"], "argument --top_p: 2 is not a finite number in (0, 1]"),
    ("load_gpt2.py", ["--num_samples", "0"], "argument --num_samples: 0 is not an integer >= 1"),
    ("load_gpt2.py", ["--timeout", "-5"], "argument --timeout: -5 is not a finite number > 0"),
    ("load_gpt2.py", ["--model", "gpt5"], ("argument --model: invalid choice: 'gpt5' (choose from 'gpt2', "
                                           "'gpt2-medium', 'gpt2-large', 'gpt2-xl')")),
])
def test_each_bad_option_is_one_line_naming_it_and_its_range(script, args, message):
    assert one_line_error(run_script(script, *args)) == f"error: {message} (python {script} --help lists the options)"


# ----------------------------------------------------------------------------- the hub

@pytest.fixture
def hub():
    """A local stand-in for huggingface.co: test_load_gpt2's file server, which also notes Authorization headers."""
    handler = type("Handler", (FileServer,), {"files": {}, "seen": [], "tokens": []})
    handler.do_GET = lambda self: (self.tokens.append(self.headers.get("Authorization")), FileServer.do_GET(self))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_hub_repository_is_fetched_once_with_its_shards_and_token(saved, tmp_path, hub, monkeypatch):
    handler, base = hub
    folder, hf = saved("qwen3_moe", shard=True)
    repo = "someone/tiny-moe"
    for path in folder.iterdir():
        handler.files[f"/{repo}/resolve/main/{path.name}"] = path.read_bytes()
    monkeypatch.setattr(load_hf, "HUB_URL", base + "/{repo}/resolve/main/{filename}")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    model, tokenizer, _ = load_hf.load(repo, cache_dir=str(tmp_path / "cache"))
    with torch.no_grad():
        assert (model(IDS)[0] - hf(IDS).logits).abs().max() < 1e-4
    shards = len(set(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"].values()))
    assert len(handler.seen) == 1 + 3 + 1 + shards  # config, 3 optional files (404: absent), index, the shards
    assert set(handler.tokens) == {"Bearer hf_secret"} and tokenizer is None
    load_hf.load(repo, cache_dir=str(tmp_path / "cache"))
    assert len(handler.seen) == 1 + 3 + 1 + shards  # the second load stayed offline
    with pytest.raises(ValueError, match="neither a local folder nor a hub name"):
        load_hf.load("no such thing", cache_dir=str(tmp_path / "cache"))
