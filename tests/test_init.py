"""train.py --init: fine-tuning a released model's weights. Tiny random models of every family, saved by transformers
with a tokenizer.json: train.py's first loss on its first batch is transformers' loss on that batch; a few steps
later the checkpoint exports to a folder transformers loads, with our logits; options that would change the
architecture are refused, those that do not apply; ids past 65,535 are kept whole."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers as T
from test_load_hf import byte_level_tokenizer, configs, redraw

import data
import gpt
import load_hf
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# family: (model type, options that switch off the balancing terms, which transformers' loss leaves out)
FAMILIES = {
    "gpt2": ("gpt", []),
    "qwen3": ("moderngpt", []),
    "qwen3_moe": ("moegpt", ["--aux_loss_weight", "0", "--z_loss_weight", "0"]),
    "deepseek_v3": ("mlamoe", ["--seq_aux_loss_weight", "0"]),
    "deepseek_v2_lite": ("mlamoe", ["--seq_aux_loss_weight", "0"]),
}
B, T_ = 2, 16


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    with open(os.path.join(ROOT, "input.txt"), encoding="utf-8") as f:
        path.write_text(f.read(20_000), encoding="utf-8")
    return path


def released(tmp_path, family):
    """A tiny random model of `family` and a 300-token byte-level BPE, saved as a hub folder."""
    config = configs()[family]
    config.vocab_size = 300
    hf = redraw(T.AutoModelForCausalLM.from_config(config, attn_implementation="eager")).eval()
    folder = tmp_path / family
    hf.save_pretrained(folder)
    byte_level_tokenizer().save(str(folder / "tokenizer.json"))
    return folder, hf


@pytest.mark.parametrize("family", FAMILIES)
def test_fine_tuning_starts_at_transformers_loss_and_exports_back(tmp_path, corpus, family, capsys):
    folder, hf = released(tmp_path, family)
    model_type, options = FAMILIES[family]
    out = tmp_path / "run"
    argv = ["--init", str(folder), "--data", str(corpus), "--B", str(B), "--T", str(T_), "--max_steps", "3",
            "--eval_interval", "3", "--eval_iters", "1", "--sample_tokens", "4", "--max_lr", "1e-3",
            "--warmup_steps", "0", "--out_dir", str(out), *options]
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    assert exit_info.value.code == 0
    stdout = capsys.readouterr().out
    assert f"tokenizer: tokenizer.json, 300 tokens (--init {folder}'s)" in stdout and f"{model_type}:" in stdout
    # the first step's batch, drawn again, through transformers
    tokenizer = load_hf.HFTokenizer(str(folder / "tokenizer.json"))
    train_ids, _ = data.hf_token_ids(str(corpus), corpus.read_text(encoding="utf-8"), tokenizer)
    loaded = data.Corpus(train_ids, train_ids, tokenizer, 1.0, "")
    x, y = data.micro_batch(gpt, loaded, B, T_, 1337, 0, 0, 1, "cpu")  # get_batch: a twin in every model file
    with torch.no_grad():
        expected = F.cross_entropy(hf(x).logits.flatten(0, 1), y.flatten()).item()
    records = [r for r in train.plot.read_log(str(out / "log.jsonl"))[0] if "loss" in r]
    assert abs(records[0]["loss"] - expected) < 1e-5  # float32 rounding of the same computation
    # after three steps: export the checkpoint, load it in transformers, compare the logits
    model, _ = load_hf.load_train_checkpoint(str(out / "ckpt.pt"))
    assert not torch.equal(model.wte.weight, load_hf.load(str(folder))[0].wte.weight)  # it was trained
    load_hf.main(["--ckpt", str(out / "ckpt.pt"), "--export", str(tmp_path / "exported")])
    back = T.AutoModelForCausalLM.from_pretrained(tmp_path / "exported", attn_implementation="eager").eval()
    assert (tmp_path / "exported" / "tokenizer.json").read_text() == (folder / "tokenizer.json").read_text()
    with torch.no_grad():
        assert (back(x).logits - model(x)[0]).abs().max() < 1e-4


def test_options_that_change_the_architecture_are_refused_the_others_apply(tmp_path, corpus, capsys):
    folder, _ = released(tmp_path, "qwen3")
    common = ["--init", str(folder), "--data", str(corpus), "--B", "2", "--T", "16", "--max_steps", "1",
              "--eval_interval", "1", "--eval_iters", "1", "--sample_tokens", "0"]
    with pytest.raises(train.UsageError) as error:
        train.main([*common, "--n_layer", "3", "--out_dir", str(tmp_path / "a")])
    assert "--n_layer would change the architecture of" in str(error.value)
    for bad, message in ((["--preset", "cpu"], "the model comes from --init"),
                         (["--model_type", "gpt"], "holds a 'moderngpt' model, not 'gpt'"),
                         (["--tokenizer", "char"], "--tokenizer char: the model reads tokenizer.json ids")):
        with pytest.raises(train.UsageError) as error:
            train.main([*common, *bad, "--out_dir", str(tmp_path / "b")])
        assert message in str(error.value), error.value
    with pytest.raises(SystemExit):
        train.main([*common, "--dropout", "0.1", "--out_dir", str(tmp_path / "c")])
    assert torch.load(tmp_path / "c" / "ckpt.pt", weights_only=True)["config"]["dropout"] == 0.1


def test_ids_past_65535_are_cached_whole(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = [f"w{i}" for i in range(70_000)]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    text = " ".join(words[-1000:])  # ids 69,000 .. 69,999
    (tmp_path / "big.txt").write_text(text)
    ours = load_hf.HFTokenizer(str(tmp_path / "tokenizer.json"))
    train_ids, val_ids = data.hf_token_ids(str(tmp_path / "big.txt"), text, ours)
    assert train_ids.dtype == val_ids.dtype == np.uint32 and train_ids.max() > 65_535
    assert np.array_equal(val_ids[-5:], np.arange(69_995, 70_000))  # not cut to 16 bits
    again = data.hf_token_ids(str(tmp_path / "big.txt"), text, ours)  # from the cache
    assert np.array_equal(again[0], train_ids) and os.path.exists(next(iter(tmp_path.glob("big.txt.tokenizer-*"))))
