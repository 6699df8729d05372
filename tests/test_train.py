"""train.py end to end, through subprocesses as a user runs it: training, logs and plots,
exact resume, Ctrl-C, torchrun with two CPU ranks, and one-line errors for bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import gpt
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--model_type", "gpt", "--tokenizer", "char", "--B", "4", "--T", "16", "--n_layer", "2", "--n_head", "2",
        "--n_embd", "32", "--eval_iters", "2", "--sample_tokens", "8", "--device", "cpu", "--log_interval", "1"]


def run_train(*args, check=True, **kw):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *TINY, *args],
                            capture_output=True, text=True, cwd=ROOT, timeout=300, **kw)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def step_losses(out_dir):
    return {r["step"]: r["loss"] for r in train.read_log(os.path.join(out_dir, "log.jsonl")) if "loss" in r}


def test_end_to_end_writes_log_plot_and_a_checkpoint_that_samples(tmp_path):
    out = str(tmp_path / "run")
    result = run_train("--max_steps", "6", "--eval_interval", "3", "--out_dir", out)
    assert "step     6/6 | loss" in result.stdout and "val loss" in result.stdout and "--- sample ---" in result.stdout
    records = train.read_log(os.path.join(out, "log.jsonl"))
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "val_loss" in r] == [3, 6]
    assert os.path.getsize(os.path.join(out, "loss.png")) > 1000
    model, tokenizer = gpt.load_checkpoint(os.path.join(out, "ckpt.pt"))
    assert tokenizer.kind == "char" and model.config.n_layer == 2
    sample = subprocess.run([sys.executable, "gpt.py", "--ckpt", os.path.join(out, "ckpt.pt"), "--prompt", "ROMEO:",
                             "--max_new_tokens", "10", "--device", "cpu"], capture_output=True, text=True, cwd=ROOT)
    assert sample.returncode == 0, sample.stderr
    assert "ROMEO:" in sample.stdout


def test_resume_repeats_the_uninterrupted_run_exactly(tmp_path):
    # dropout and gradient accumulation on, so RNG and data state both matter
    common = ["--max_steps", "8", "--eval_interval", "100", "--dropout", "0.1", "--total_batch_size", "128"]
    run_train(*common, "--out_dir", str(tmp_path / "whole"))
    first = run_train(*common, "--out_dir", str(tmp_path / "split"), "--stop_step", "3")
    assert "stopped after step 3" in first.stdout
    assert torch.load(tmp_path / "split" / "ckpt.pt", weights_only=True)["step"] == 3
    run_train(*common, "--out_dir", str(tmp_path / "split"), "--resume")
    whole, split = step_losses(tmp_path / "whole"), step_losses(tmp_path / "split")
    assert list(split) == list(range(1, 9))
    assert split == whole  # bit-for-bit equal losses at every step


def test_ctrl_c_saves_a_checkpoint_that_resumes_exactly(tmp_path):
    out = tmp_path / "interrupted"
    args = [sys.executable, os.path.join(ROOT, "train.py"), *TINY, "--max_steps", "100000",
            "--eval_interval", "100000", "--out_dir", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    log = out / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "continue with --resume" in stdout
    k = torch.load(out / "ckpt.pt", weights_only=True)["step"]
    assert k >= 3
    more = ["--max_steps", "100000", "--eval_interval", "100000", "--stop_step", str(k + 2)]
    run_train(*more, "--out_dir", str(out), "--resume")
    run_train(*more, "--out_dir", str(tmp_path / "reference"))
    resumed, reference = step_losses(out), step_losses(tmp_path / "reference")
    assert resumed[k + 1] == reference[k + 1] and resumed[k + 2] == reference[k + 2]


def test_torchrun_two_cpu_ranks_train_and_end_with_identical_weights(tmp_path):
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "train.py", *TINY, "--max_steps", "4", "--eval_interval", "2", "--out_dir", str(tmp_path)],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "x 2 ranks" in result.stdout
    assert "weights identical on all 2 ranks: yes" in result.stdout
    assert len(step_losses(tmp_path)) == 4


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    run_train("--max_steps", "20", "--eval_interval", "2", "--stop_step", "4", "--out_dir", str(tmp_path))
    good = (tmp_path / "ckpt.pt").read_bytes()
    # resuming with an absurd learning rate blows the weights up within a step or two
    result = run_train("--max_steps", "20", "--eval_interval", "1", "--max_lr", "1e30", "--min_lr", "1e30",
                       "--grad_clip", "0", "--resume", "--out_dir", str(tmp_path), check=False)
    line = one_line_error(result)
    assert " is nan at step " in line or " is inf at step " in line
    assert "the last good checkpoint is" in line
    assert (tmp_path / "ckpt.pt").read_bytes() == good


def one_line_error(result):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_missing_data_file(tmp_path):
    assert "not found" in one_line_error(run_train("--data", str(tmp_path / "nope.txt"), check=False))


def test_corpus_shorter_than_the_context(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("a tiny corpus")
    assert "fewer than T+1" in one_line_error(run_train("--data", str(short), "--out_dir", str(tmp_path), check=False))


def test_unknown_model_type():
    assert "unknown model type 'llama'" in one_line_error(run_train("--model_type", "llama", check=False))


def test_unknown_option_and_bad_value():
    assert "unknown option --n_layers" in one_line_error(run_train("--n_layers", "3", check=False))
    assert "--n_layer must be int, not 'three'" in one_line_error(run_train("--n_layer", "three", check=False))


def test_unknown_preset_and_non_positive_sizes():
    assert "unknown preset 'huge'" in one_line_error(run_train("--preset", "huge", check=False))
    assert "--eval_interval must be at least 1" in one_line_error(run_train("--eval_interval", "0", check=False))


def test_batch_size_that_does_not_divide():
    assert "not a multiple of B*T*ranks" in one_line_error(run_train("--total_batch_size", "100", check=False))


def test_checkpoint_of_another_model(tmp_path):
    torch.save({"model_type": "moegpt", "config": {}, "model": {}}, tmp_path / "ckpt.pt")
    line = one_line_error(run_train("--resume", "--out_dir", str(tmp_path), check=False))
    assert "holds a 'moegpt' model" in line


def test_resume_without_checkpoint(tmp_path):
    assert "no checkpoint to resume" in one_line_error(run_train("--resume", "--out_dir", str(tmp_path), check=False))


def test_resume_with_a_different_model_size(tmp_path):
    run_train("--max_steps", "2", "--out_dir", str(tmp_path))
    line = one_line_error(run_train("--resume", "--out_dir", str(tmp_path), "--n_embd", "64", check=False))
    assert "was trained with n_embd=32" in line


def test_learning_rate_schedule():
    args = train.parse_args(["--max_steps", "1000", "--warmup_steps", "100", "--max_lr", "1e-3", "--min_lr", "1e-4"])[0]
    assert train.lr_at(0, args) == pytest.approx(1e-3 / 101)
    assert train.lr_at(99, args) == pytest.approx(1e-3 * 100 / 101)
    assert train.lr_at(100, args) == pytest.approx(1e-3)
    assert train.lr_at(550, args) == pytest.approx(5.5e-4)
    assert train.lr_at(1000, args) == pytest.approx(1e-4)


def test_config_fields_are_options():
    _, module, overrides = train.parse_args(["--n_layer", "3", "--bias", "true", "--dropout=0.2"])
    assert module is gpt
    assert overrides == {"n_layer": 3, "bias": True, "dropout": 0.2}


def test_fp16_needs_a_cuda_gpu():
    assert "--dtype fp16 needs a CUDA GPU" in one_line_error(run_train("--dtype", "fp16", check=False))


def test_wandb_missing_gives_install_hint(tmp_path):
    # run train.py as __main__ in an interpreter where `import wandb` fails, whatever is installed
    code = ("import runpy, sys; sys.modules['wandb'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code, "train.py", *TINY, "--wandb", "--max_steps", "1",
                             "--out_dir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert "pip install wandb" in one_line_error(result)
