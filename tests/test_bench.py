"""bench/val_loss.py, the script behind the README's whole-split figures: its loss against a direct
computation, a checkpoint in nanoGPT's format scored through gpt.py, and a train.py checkpoint through its file."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_checks import run_script
from model_checks import save_checkpoint

import gpt
import modern_gpt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import val_loss


def score_checkpoint(ckpt, data):
    """python bench/val_loss.py CKPT --data DATA, which must succeed."""
    result = subprocess.run([sys.executable, "bench/val_loss.py", str(ckpt), "--data", str(data)],
                            capture_output=True, check=False, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result


def test_whole_split_loss_is_the_mean_over_every_window():
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(block_size=8, vocab_size=20, n_layer=1, n_head=2, n_embd=16)).eval()
    ids = np.random.default_rng(0).integers(0, 20, 8 * 11 + 5).astype(np.uint16)  # 11 windows and a rest
    loss, count = val_loss.whole_split_loss(model, ids, block_size=8, batch_size=4)
    windows = torch.from_numpy(ids[: 8 * 11 + 1].astype(np.int64))
    x, y = windows[:-1].view(11, 8), windows[1:].view(11, 8)
    with torch.no_grad():
        expected = F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten()).item()
    assert count == 88 and abs(loss - expected) < 1e-5


def test_a_nanogpt_checkpoint_is_scored_through_gpt_py(tmp_path):
    text = "".join(np.random.default_rng(1).choice(list("abcdefgh \n"), 3000))
    data = tmp_path / "corpus.txt"
    data.write_text(text)
    _, val_ids, tokenizer = gpt.load_dataset(str(data))  # char-level: the characters of the text
    args = {
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 32,
        "block_size": 16,
        "bias": False,
        "vocab_size": tokenizer.vocab_size,
        "dropout": 0.0,
    }
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(**{k: v for k, v in args.items() if k != "dropout"}, gelu_approximate="none")).eval()
    # nanoGPT's names: "transformer." before GPT-2's, "_orig_mod." when it was compiled
    state = {
        ("_orig_mod." + name if name.startswith("lm_head") else "_orig_mod.transformer." + name): tensor
        for name, tensor in model.state_dict().items()
    }
    torch.save({"model": state, "model_args": args, "iter_num": 5, "config": {"dataset": "x"}}, tmp_path / "ckpt.pt")
    expected, _ = val_loss.whole_split_loss(model, val_ids, 16)
    result = score_checkpoint(tmp_path / "ckpt.pt", data)
    assert "nanoGPT" in result.stdout and f"loss {expected:.4f}" in result.stdout


def test_a_train_py_checkpoint_is_scored_through_its_model_file(tmp_path):
    text = "".join(np.random.default_rng(2).choice(list("abcdefgh \n"), 3000))
    data = tmp_path / "corpus.txt"
    data.write_text(text)
    tokenizer = modern_gpt.Tokenizer("bpe", merges=[(97, 98), (99, 100), (256, 257)])  # "ab", "cd", "abcd"
    _, val_ids, _ = modern_gpt.load_dataset(str(data), tokenizer)  # the checkpoint's tokenizer, not the default
    torch.manual_seed(0)
    model = modern_gpt.ModernGPT(
        modern_gpt.ModernGPTConfig(
            block_size=16, vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_kv_head=1, n_embd=16, multiple_of=16
        )
    ).eval()
    save_checkpoint(modern_gpt, model, tokenizer, tmp_path / "ckpt.pt")
    expected, count = val_loss.whole_split_loss(model, val_ids, 16)
    result = score_checkpoint(tmp_path / "ckpt.pt", data)
    bpc = expected * len(val_ids) / (len(text) - int(0.9 * len(text))) / np.log(2)  # per character of the val text
    assert f"moderngpt, whole validation split ({count:,} tokens): loss {expected:.4f}, {bpc:.4f} bits/char" in (
        result.stdout
    )


def test_mla_cache_table_default_config_is_under_a_fifth_of_mha():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import mla_cache

    import mla_moe

    table = mla_cache.cache_size_table(mla_moe.MLAMoEConfig())
    mha = next(line for line in table.splitlines() if line.startswith("MHA")).split()
    mla = next(line for line in table.splitlines() if line.startswith("MLA")).split()
    assert int(mha[1]) == 2 * 768 and int(mla[-4]) == 256 + 32  # values per token per layer
    assert float(mla[-1]) == round(288 / 1536, 3)


def test_speedrun_plan_sizes_the_steps_from_the_timing_run():
    import speedrun

    records = [{"step": s, "ms": 500.0 if s <= 5 else 100.0 + s % 3} for s in range(1, 11)]
    records.append({"step": 10, "val_loss": 2.0})
    # median step after the fifth (100, 101, 102, 100, 101): 101 ms; 6.01 s of wall less 10 steps of 101 ms: 5 s
    # besides (the five slow first steps' excess among them); (15.11 - 5) s / 101 ms: 100 steps
    steps, ms, besides = speedrun.plan(15.11, 6.01, records)
    assert (steps, ms) == (100, 101.0) and abs(besides - 5.0) < 1e-9
    assert speedrun.plan(1.0, 6.01, records)[0] == 1  # a budget under the start-up still trains one step


def test_speedrun_trains_scores_the_whole_split_and_ends_with_its_line(tmp_path):
    import speedrun

    data = tmp_path / "corpus.txt"
    with open(os.path.join(ROOT, "input.txt")) as f:
        data.write_text(f.read(20000))
    # the record's options but its --compile (a compilation would be most of a test's time), at a tiny size
    tiny = ["--no_recipe", *[o for o in speedrun.RECIPE if o != "--compile"], "--n_layer", "1", "--n_embd", "32",
            "--n_head", "2", "--n_kv_head", "1", "--bpe_vocab_size", "300"]
    result = subprocess.run(
        [sys.executable, "bench/speedrun.py", "--budget", "4", "--timing_steps", "8", "--data", str(data),
         "--out_dir", str(tmp_path / "run"), *tiny],
        capture_output=True, check=False, text=True, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    planned = int(next(line for line in lines if line.startswith("timing: ")).split(" => ")[1].split()[0])
    last = lines[-1].split()  # whole-split val: B bits/char in W s (budget 4.0 s, N steps)
    assert last[:2] == ["whole-split", "val:"] and last[3:5] == ["bits/char", "in"] and last[-1] == "steps)"
    assert int(last[-2]) == planned and float(last[5]) > 0
    ckpt = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == planned and ckpt["config"]["n_embd"] == 32 and ckpt["tokenizer"]["kind"] == "bpe"
    _, _, _, bpc = val_loss.score(str(tmp_path / "run" / "ckpt.pt"), str(data))  # the score is the whole split's
    assert last[2] == f"{bpc:.4f}"


def test_the_speedrun_recipe_is_train_py_options():
    import speedrun

    import train

    args, _, _ = train.parse_args([*speedrun.RECIPE, "--max_steps", "3"])
    assert args.model_type == "moderngpt" and args.tokenizer == "bpe" and args.compile


def test_speedrun_leaves_the_steps_to_the_budget_and_passes_train_py_errors_on():
    for options, message in ((["--max_steps", "5"], "error: --max_steps is set by the speedrun"),
                             (["--n_layer", "0"], "error: argument --n_layer: 0 is not an integer >= 1")):
        result = subprocess.run([sys.executable, "bench/speedrun.py", *options], capture_output=True, check=False,
                                text=True, cwd=ROOT)
        assert result.returncode == 2 and result.stderr.startswith(message), result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


BENCH_SCRIPTS = sorted(name for name in os.listdir(os.path.join(ROOT, "bench")) if name.endswith(".py"))


@pytest.mark.parametrize("script", BENCH_SCRIPTS)
def test_every_bench_script_starts(script):
    """Each script behind a README figure starts and parses its options (--help; mla_cache.py takes none and just
    prints its small table): a name it takes from a project file that moved or went away (gpt.bounded, gpt.DATA_DIR
    once) fails here, not in the hands of whoever reruns a figure."""
    result = run_script(os.path.join("bench", script), "--help")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
