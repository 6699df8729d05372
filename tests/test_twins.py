"""The twins: blocks whose logic is the same in several model files are identical copies (DESIGN.md), so a
reader can diff two files and see only what a model changes. Also: the shared tail (tokenizers, data,
checkpoints, the sampling CLI) works from every file."""

import importlib
import inspect
import os
import re
import subprocess
import sys

import pytest
import torch
from cli_checks import one_line_error, run_script
from model_checks import main_error, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ["gpt", "modern_gpt", "moe_gpt", "mla_moe", "fgram_moe"]
MODULES = {name: importlib.import_module(name) for name in FILES}
ROTARY = ["modern_gpt", "moe_gpt", "mla_moe", "fgram_moe"]  # the files with RMSNorm, RoPE and SwiGLU
GQA = ["modern_gpt", "moe_gpt", "fgram_moe"]  # the files with modern_gpt's attention

TWINS = {  # top-level function or class: the files that carry it
    "causal_attention": FILES,
    "KVCache": ["gpt", "modern_gpt", "moe_gpt", "fgram_moe"],  # mla_moe caches the latent instead
    "RMSNorm": ROTARY,
    "RotaryEmbedding": ROTARY,
    "SwiGLU": ROTARY,
    "swiglu_hidden": GQA,
    "CausalSelfAttention": GQA,
}
TWIN_METHODS = {  # method of each file's Model: the files whose copies are the same
    "generate": FILES,
    "configure_optimizers": ROTARY,  # gpt.py's docstring also names its biases
}


def source_text(name):
    with open(os.path.join(ROOT, f"{name}.py"), encoding="utf-8") as f:
        return f.read()


def section(text, start, end=None):
    """The text from the line that begins with `start` up to the line that begins with `end` (or the end)."""
    begin = text.index("\n" + start) + 1
    return text[begin : text.index("\n" + end, begin) + 1] if end else text[begin:]


def assert_same(sources, what):
    """sources: {file: source}; every copy equals the first file's, with the first differing line named."""
    (first, reference), *others = sources.items()
    for name, source in others:
        if source != reference:
            lines = zip(reference.splitlines() + [""], source.splitlines() + [""])
            diff = next(((a, b) for a, b in lines if a != b), ("(line ends)", ""))
            pytest.fail(f"{what} differs between {first}.py and {name}.py:\n  {diff[0]!r}\n  {diff[1]!r}")


@pytest.mark.parametrize("name", TWINS)
def test_twin_blocks_are_identical(name):
    assert_same({f: inspect.getsource(getattr(MODULES[f], name)) for f in TWINS[name]}, name)


@pytest.mark.parametrize("name", TWIN_METHODS)
def test_twin_methods_are_identical(name):
    assert_same({f: inspect.getsource(getattr(MODULES[f].Model, name)) for f in TWIN_METHODS[name]}, f"Model.{name}")


def test_tail_is_identical_in_every_file():
    # sampler, tokenizers, data and checkpoints: everything from sample_next_token up to main()
    tails = {f: section(source_text(f), "def sample_next_token", "def main(") for f in FILES}
    assert_same(tails, "the tail")
    for needle in ("GPT2_PATTERN = ", "class Tokenizer", "def load_dataset", "def get_batch", "def load_checkpoint"):
        assert needle in tails["gpt"]  # the section really is the tail, not an empty match


def test_main_is_identical_except_where_a_model_needs_its_data():
    # fgram_moe.py's random-weights demo mines its n-grams from input.txt first: its own main()
    assert_same({f: section(source_text(f), "def main(") for f in FILES if f != "fgram_moe"}, "main()")


def test_each_file_names_its_config_model_and_type():
    types = {name: module.MODEL_TYPE for name, module in MODULES.items()}
    assert types == {
        "gpt": "gpt",
        "modern_gpt": "moderngpt",
        "moe_gpt": "moegpt",
        "mla_moe": "mlamoe",
        "fgram_moe": "fgram",
    }
    for module in MODULES.values():
        assert module.Config.__module__ == module.Model.__module__ == module.__name__


# ----------------------------------------------------------------------------- the tail, from every file

TINY = {  # the smallest configs each Model accepts
    "gpt": {"n_layer": 1, "n_head": 2, "n_embd": 16},
    "modern_gpt": {"n_layer": 1, "n_head": 2, "n_kv_head": 1, "n_embd": 16, "multiple_of": 16},
    "moe_gpt": {"n_layer": 1, "n_head": 2, "n_kv_head": 1, "n_embd": 16, "multiple_of": 16, "n_routed_experts": 4},
    "mla_moe": {
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 16,
        "kv_lora_rank": 8,
        "qk_nope_head_dim": 4,
        "qk_rope_head_dim": 4,
        "v_head_dim": 4,
        "mlp_hidden": 32,
        "moe_hidden": 8,
        "n_routed_experts": 4,
    },
    "fgram_moe": {"n_layer": 1, "n_head": 2, "n_kv_head": 1, "n_embd": 16, "multiple_of": 16, "fgram_vocab_size": 16},
}


def tiny_checkpoint(name, path, chars="abcdefgh \n"):
    """A char-level checkpoint of file `name`'s model, saved as train.py saves one."""
    module = MODULES[name]
    torch.manual_seed(0)
    model = module.Model(module.Config(**TINY[name], block_size=16, vocab_size=len(chars)))
    save_checkpoint(module, model, module.Tokenizer("char", chars), path)
    return model


@pytest.mark.parametrize("name", FILES)
def test_checkpoint_loads_back_in_every_file(name, tmp_path):
    model = tiny_checkpoint(name, tmp_path / "ckpt.pt").eval()
    loaded, tokenizer, ckpt = MODULES[name].load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert not loaded.training and tokenizer.kind == "char" and tokenizer.chars == "abcdefgh \n"
    assert ckpt["model_type"] == MODULES[name].MODEL_TYPE and loaded.config == model.config
    idx = torch.randint(0, 10, (2, 16))
    with torch.no_grad():
        assert torch.equal(loaded(idx)[0], model(idx)[0])


@pytest.mark.parametrize("name", FILES)
def test_cli_empty_prompt_is_a_one_line_error(name, tmp_path):
    tiny_checkpoint(name, tmp_path / "ckpt.pt")
    result = subprocess.run(
        [sys.executable, f"{name}.py", "--ckpt", str(tmp_path / "ckpt.pt"), "--prompt", "", "--device", "cpu"],
        capture_output=True,
        check=False,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "--prompt is empty" in result.stderr and "Traceback" not in result.stderr and result.stdout == ""


# ----------------------------------------------------------------------------- the sampling CLI's options

CLI_ERRORS = {  # option and a value out of its range -> the one line every model file's CLI prints
    ("--max_new_tokens", "-1"): "argument --max_new_tokens: -1 is not an integer >= 0",
    ("--temperature", "-0.5"): "argument --temperature: -0.5 is not a finite number >= 0",
    ("--temperature", "nan"): "argument --temperature: nan is not a finite number >= 0",
    ("--top_k", "-1"): "argument --top_k: -1 is not an integer >= 0",
    ("--top_p", "0"): "argument --top_p: 0.0 is not a finite number in (0, 1]",
    ("--top_p", "1.5"): "argument --top_p: 1.5 is not a finite number in (0, 1]",
    ("--seed", "-1"): "argument --seed: -1 is not an integer in [0, 2**64)",
    ("--top_k", "three"): "argument --top_k: invalid int value: 'three'",  # argparse's own, in one line too
    ("--temprature", "0.5"): "unrecognized arguments: --temprature 0.5",
}


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("option, value", CLI_ERRORS)
def test_cli_options_out_of_range_are_one_line_errors(name, option, value, capsys):
    assert main_error(MODULES[name].main, [option, value], capsys) == "error: " + CLI_ERRORS[option, value]


@pytest.mark.parametrize("name", ["gpt", "fgram_moe"])  # the twin main() and fgram_moe.py's own
def test_cli_refuses_a_bad_value_as_a_user_runs_it(name):
    line = one_line_error(run_script(f"{name}.py", "--top_p", "1.5", "--prompt", "To be"))
    assert line == "error: argument --top_p: 1.5 is not a finite number in (0, 1]"


@pytest.mark.parametrize("name", ["gpt", "fgram_moe"])
def test_cli_help_says_what_each_option_means_and_its_default(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        MODULES[name].main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    for option, default in [("--ckpt", "None"), ("--prompt", "'\\n'"), ("--max_new_tokens", "200"),
                            ("--temperature", "0.8"), ("--top_k", "200"), ("--top_p", "1.0"), ("--seed", "1337")]:
        upper = option[2:].upper()
        meaning = text.split(f"{option} {upper} ")[-1].split(f"(default: {default})")[0]
        assert 3 <= len(meaning.split()) <= 20, (option, meaning)  # a few words of help, then its default
    assert "0: greedy" in text and re.search(r"--device DEVICE [^(]+\(default: (cpu|cuda)\)", text), text
