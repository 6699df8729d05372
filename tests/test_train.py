"""train.py as a user runs it: training, logs, plots and summary, exact resume (also on another number of
ranks), Ctrl-C, torchrun with two CPU ranks, no lost work, and one-line errors for bad input."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from cli_checks import one_line_error, run_script

import gpt
import moe_gpt
import parallel
import plot
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--model_type",
    "gpt",
    "--B",
    "4",
    "--T",
    "16",
    "--n_layer",
    "2",
    "--n_head",
    "2",
    "--n_embd",
    "32",
    "--eval_iters",
    "2",
    "--sample_tokens",
    "8",
    "--device",
    "cpu",
]


def run_train(*args, check=True, tiny=True, **kw):
    """python train.py as a subprocess, from the repository root."""
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), *(TINY if tiny else []), *args],
        capture_output=True,
        check=False,
        text=True,
        cwd=ROOT,
        timeout=300,
        **kw,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def train_here(*args, tiny=True):
    """train.main in this process (faster than a subprocess); returns its exit code."""
    with pytest.raises(SystemExit) as exit_info:
        train.main([*(TINY if tiny else []), *args])
    return exit_info.value.code


def usage_error(*args, tiny=True):
    """The one-line message train.py gives for a bad command line or input."""
    with pytest.raises(train.UsageError) as error:
        train.main([*(TINY if tiny else []), *args])
    return str(error.value)


def step_losses(out_dir):
    return {r["step"]: r["loss"] for r in plot.read_log(os.path.join(out_dir, "log.jsonl"))[0] if "loss" in r}


# ----------------------------------------------------------------------------- a run you can follow


def test_end_to_end_log_plots_summary_and_a_checkpoint_that_samples(tmp_path):
    out = str(tmp_path / "run")
    result = run_train("--max_steps", "6", "--eval_interval", "3", "--out_dir", out)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("tokenizer: char, 65 tokens (the cpu preset's, nanoGPT's char-level recipe")
    step_lines = [line for line in lines if line.startswith("step ") and "| loss" in line]
    assert len(step_lines) == 6 and all(len(line) <= 120 and "| ETA " in line for line in step_lines)
    assert "val loss" in result.stdout and "bits/char" in result.stdout and "--- sample ---" in result.stdout
    summary = next(line for line in lines if line.startswith("finished after 6 steps in "))
    assert "best val" in summary and "final val" in summary and "384 tokens seen" in summary  # 6 steps x B 4 x T 16
    assert f"checkpoint {out}/ckpt.pt | log {out}/log.jsonl | plots {out}/loss.png" in result.stdout
    records = plot.read_log(os.path.join(out, "log.jsonl"))[0]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [3, 6] and all(r["val_bpc"] == r["val_loss"] / np.log(2) for r in evals)
    assert os.path.getsize(os.path.join(out, "loss.png")) > 1000
    model, tokenizer, _ = gpt.load_checkpoint(os.path.join(out, "ckpt.pt"))
    assert tokenizer.kind == "char" and model.config.n_layer == 2
    sample = subprocess.run(
        [
            sys.executable,
            "gpt.py",
            "--ckpt",
            os.path.join(out, "ckpt.pt"),
            "--prompt",
            "ROMEO:",
            "--max_new_tokens",
            "10",
            "--device",
            "cpu",
        ],
        capture_output=True,
        check=False,
        text=True,
        cwd=ROOT,
    )
    assert sample.returncode == 0 and "ROMEO:" in sample.stdout, sample.stderr


def test_tokenizer_follows_the_preset_and_the_data(tmp_path, capsys):
    args = ["--max_steps", "1", "--eval_interval", "1", "--sample_tokens", "0"]
    assert train_here(*args, "--preset", "gpt2", "--n_layer", "1", "--out_dir", str(tmp_path / "a")) == 0
    assert "tokenizer: gpt2, 50,257 tokens (the gpt2 preset's" in capsys.readouterr().out
    np.arange(1000, dtype=np.uint16).tofile(tmp_path / "train.bin")
    np.arange(500, dtype=np.uint16).tofile(tmp_path / "val.bin")
    assert train_here(*args, "--data", str(tmp_path), "--out_dir", str(tmp_path / "b")) == 0
    assert "tokenizer: gpt2, 50,257 tokens (train.bin/val.bin hold GPT-2 ids)" in capsys.readouterr().out
    assert "--tokenizer char" in usage_error(
        *args, "--data", str(tmp_path), "--tokenizer", "char", "--out_dir", str(tmp_path / "c")
    )


def test_help_shows_every_default_and_the_model_config_fields():
    result = run_train("--model_type", "moegpt", "--help", tiny=False)
    assert "--max_lr MAX_LR" in result.stdout and "(default: 0.001)" in result.stdout
    assert "MoEGPTConfig fields" in result.stdout
    assert "--z_loss_weight Z_LOSS_WEIGHT" in result.stdout and "ST-MoE router z-loss" in result.stdout


def test_moe_runs_log_expert_load_idle_experts_and_plot_them(tmp_path, capsys):
    out = tmp_path / "moe"
    args = ["--model_type", "moegpt", "--n_kv_head", "1", "--multiple_of", "16", "--max_steps", "20",  # on TINY:
            "--eval_interval", "10", "--eval_iters", "1", "--sample_tokens", "0", "--log_interval", "1",  # the last
            "--aux_loss_weight", "0"]  # value given wins
    assert train_here(*args, "--out_dir", str(out)) == 0
    stdout = capsys.readouterr().out
    assert "moe: aux_loss" in stdout and "max/mean expert load" in stdout
    records = plot.read_log(out / "log.jsonl")[0]
    loads = [r["expert_load"] for r in records if "expert_load" in r]
    assert len(loads) == 20 and np.allclose(np.sum(loads, axis=2), 1.0)
    assert os.path.getsize(out / "expert_load.png") > 1000
    for record in (r for r in records if "idle_experts" in r):  # what was reported, checked against the log
        since_last_eval = range(record["step"] - 9, record["step"] + 1)
        mean = np.mean([r["expert_load"] for r in records if "expert_load" in r and r["step"] in since_last_eval], 0)
        for layer, experts in record["idle_experts"].items():
            assert all(mean[int(layer)][e] < 1 / (10 * mean.shape[1]) for e in experts)


# ----------------------------------------------------------------------------- exact resume


def test_resume_repeats_the_uninterrupted_run_exactly(tmp_path):
    # dropout and gradient accumulation on, so RNG and data state both matter
    common = ["--max_steps", "8", "--eval_interval", "100", "--dropout", "0.1", "--total_batch_size", "128"]
    assert train_here(*common, "--out_dir", str(tmp_path / "whole")) == 0
    assert train_here(*common, "--out_dir", str(tmp_path / "split"), "--stop_step", "3") == 0
    assert torch.load(tmp_path / "split" / "ckpt.pt", weights_only=True)["step"] == 3
    assert (
        train_here("--max_steps", "8", "--eval_interval", "100", "--out_dir", str(tmp_path / "split"), "--resume") == 0
    )  # B, T, the global batch and the config come from the checkpoint
    whole, split = step_losses(tmp_path / "whole"), step_losses(tmp_path / "split")
    assert list(split) == list(range(1, 9))
    assert split == whole  # bit-for-bit equal losses at every step


def test_resume_on_another_number_of_ranks_repeats_the_run(tmp_path):
    # stopped on 2 torchrun ranks (accumulation 2 each), resumed on 1 process (accumulation 4), dropout on
    common = [*TINY, "--max_steps", "6", "--eval_interval", "100", "--dropout", "0.1", "--total_batch_size", "256"]
    assert train_here(*common[len(TINY) :], "--out_dir", str(tmp_path / "whole")) == 0
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "train.py",
            *common,
            "--stop_step",
            "3",
            "--out_dir",
            str(tmp_path / "split"),
        ],
        capture_output=True,
        check=False,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0 and "2 accum x 2 ranks" in result.stdout, result.stderr[-2000:]
    resume = ["--max_steps", "6", "--eval_interval", "100", "--resume", "--out_dir", str(tmp_path / "split")]
    assert train_here(*resume) == 0
    whole, split = step_losses(tmp_path / "whole"), step_losses(tmp_path / "split")
    assert list(split) == list(range(1, 7))
    assert all(abs(split[s] - whole[s]) < 1e-5 for s in whole), (split, whole)


def test_resume_keeps_the_global_batch_or_says_why_it_cannot(tmp_path):
    assert train_here("--max_steps", "2", "--total_batch_size", "192", "--B", "3", "--out_dir", str(tmp_path)) == 0
    assert "drop --total_batch_size" in usage_error("--resume", "--total_batch_size", "128", "--out_dir", str(tmp_path))
    assert "not a multiple of B*T*ranks" in usage_error("--resume", "--B", "5", "--out_dir", str(tmp_path))


def test_ctrl_c_saves_a_checkpoint_that_resumes_exactly_and_a_second_ctrl_c_stops_quietly(tmp_path):
    out = tmp_path / "interrupted"
    args = [
        sys.executable,
        os.path.join(ROOT, "train.py"),
        *TINY,
        "--max_steps",
        "100000",
        "--eval_interval",
        "100000",
        "--out_dir",
        str(out),
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    log = out / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "continue with --resume" in stdout and "Traceback" not in stderr
    k = torch.load(out / "ckpt.pt", weights_only=True)["step"]
    assert k >= 3
    more = ["--max_steps", "100000", "--eval_interval", "100000", "--stop_step", str(k + 2)]
    assert train_here(*more, "--out_dir", str(out), "--resume") == 0
    assert train_here(*more, "--out_dir", str(tmp_path / "reference")) == 0
    resumed, reference = step_losses(out), step_losses(tmp_path / "reference")
    assert resumed[k + 1] == reference[k + 1] and resumed[k + 2] == reference[k + 2]
    # Ctrl-C twice: at once, without a traceback, the checkpoint whole
    proc = subprocess.Popen(
        args[:-1] + [str(tmp_path / "twice")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    while time.time() < deadline + 60 and not (tmp_path / "twice" / "log.jsonl").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr


def catches_sigint(pid):
    """Whether process pid has installed a handler for SIGINT (Linux's /proc/PID/status, SigCgt bit 2)."""
    with open(f"/proc/{pid}/status") as status:
        caught = next(line for line in status if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGINT - 1)))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the handler from Linux's /proc")
def test_ctrl_c_during_start_up_exits_quietly(tmp_path):
    # The child starts with SIGINT ignored, as a job started in the background by a shell (CI) does: a signal
    # sent before train.py's own handler is in place would be lost, so the test waits for that handler.
    inherited = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a child inherits an ignored signal
    try:
        proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "train.py"), *TINY, "--out_dir", str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
    finally:
        signal.signal(signal.SIGINT, inherited)
    deadline = time.monotonic() + 30
    while not catches_sigint(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)  # train.py is now importing torch (seconds)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr
    assert "interrupted while starting" in stderr and not os.path.exists(tmp_path / "ckpt.pt")


def test_torchrun_two_cpu_ranks_train_and_end_with_identical_weights(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "train.py",
            *TINY,
            "--max_steps",
            "4",
            "--eval_interval",
            "2",
            "--out_dir",
            str(tmp_path),
        ],
        capture_output=True,
        check=False,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "x 2 ranks" in result.stdout
    assert "weights identical on all 2 ranks: yes" in result.stdout
    assert len(step_losses(tmp_path)) == 4


def test_gradient_checkpointing_gives_the_same_gradients_and_moe_stats():
    config = moe_gpt.MoEGPTConfig(
        block_size=16,
        vocab_size=50,
        n_layer=2,
        n_head=2,
        n_kv_head=2,
        n_embd=32,
        multiple_of=16,
        dropout=0.1,
        router_noise=0.1,
        bias_update_rate=1e-3,
    )
    grads, stats = [], []
    for flag in (False, True):
        torch.manual_seed(0)
        model = moe_gpt.MoEGPT(config)
        if flag:
            parallel.checkpoint_blocks(model)
        torch.manual_seed(1)
        idx = torch.randint(0, 50, (2, 16))
        _, loss = model(idx, idx)
        loss.backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
        stats.append(plot.moe_stats(model, model.moe_layers()))
    assert stats[0] == stats[1]
    assert all(torch.equal(grads[0][name], grads[1][name]) for name in grads[0])


# ----------------------------------------------------------------------------- no lost work


def test_a_new_run_never_touches_another_runs_files(tmp_path):
    assert train_here("--max_steps", "2", "--eval_interval", "2", "--out_dir", str(tmp_path)) == 0
    before = {name: (tmp_path / name).read_bytes() for name in ("ckpt.pt", "log.jsonl")}
    line = usage_error("--max_steps", "3", "--out_dir", str(tmp_path))
    assert "holds another run" in line and "--resume" in line and "--overwrite" in line
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert "--resume continues" in usage_error("--resume", "--overwrite", "--out_dir", str(tmp_path))
    assert train_here("--max_steps", "3", "--eval_interval", "3", "--overwrite", "--out_dir", str(tmp_path)) == 0
    assert list(step_losses(tmp_path)) == [1, 2, 3]


def test_a_stale_temporary_checkpoint_is_removed(tmp_path):
    (tmp_path / "ckpt.pt.tmp").write_bytes(b"half a checkpoint")
    assert train_here("--max_steps", "1", "--eval_interval", "1", "--out_dir", str(tmp_path)) == 0
    assert not (tmp_path / "ckpt.pt.tmp").exists()


def test_failures_while_sampling_or_plotting_never_end_the_run(tmp_path, monkeypatch, capsys):
    def broken(*args):
        raise RuntimeError("a bug while sampling")

    monkeypatch.setattr(train, "sample", broken)
    monkeypatch.setattr(plot, "plot_loss", broken)
    assert train_here("--max_steps", "4", "--eval_interval", "2", "--out_dir", str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "sampling failed (training goes on)" in out and "a bug while sampling" in out  # its traceback shown
    assert "plotting failed" in out and "finished after 4 steps" in out
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"] == 4


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    assert train_here("--max_steps", "20", "--eval_interval", "2", "--stop_step", "4", "--out_dir", str(tmp_path)) == 0
    good = (tmp_path / "ckpt.pt").read_bytes()
    # resuming with an absurd learning rate blows the weights up within a step or two
    line = usage_error(
        "--max_steps",
        "20",
        "--eval_interval",
        "1",
        "--max_lr",
        "1e30",
        "--min_lr",
        "1e30",
        "--grad_clip",
        "0",
        "--resume",
        "--out_dir",
        str(tmp_path),
    )
    assert (" is nan at step " in line or " is inf at step " in line) and "the last good checkpoint is" in line
    assert (tmp_path / "ckpt.pt").read_bytes() == good


# ----------------------------------------------------------------------------- one line for every bad input


def bad_inputs(tmp_path):
    """(command line, what the message must say) for each bad input; the files are made here."""
    np.arange(1000, dtype=np.uint16).tofile(tmp_path / "train.bin")
    for name, val in (("beyond", np.array([1, 2, 60000])), ("odd", b"abc"), ("empty", b"")):
        folder = tmp_path / name
        folder.mkdir()
        shutil.copy(tmp_path / "train.bin", folder / "train.bin")
        (folder / "val.bin").write_bytes(val.astype(np.uint16).tobytes() if isinstance(val, np.ndarray) else val)
    (tmp_path / "binary.txt").write_bytes(b"abc\xff\xfe\x00")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("a tiny corpus")
    (tmp_path / "a_file").write_text("not a folder")
    for name, content in (("empty_ckpt", b""), ("random_ckpt", os.urandom(5000))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "ckpt.pt").write_bytes(content)
    out = ["--out_dir", str(tmp_path / "out")]
    return [
        (["--data", str(tmp_path / "beyond"), *out], "val.bin holds token id 60000, outside GPT-2's vocabulary"),
        (["--data", str(tmp_path / "odd"), *out], "val.bin has 3 bytes"),
        (["--data", str(tmp_path / "empty"), *out], "val.bin has 0 bytes"),
        (["--data", str(tmp_path / "binary.txt"), *out], "binary.txt is not UTF-8 text (byte 3 is 0xff)"),
        (["--data", str(tmp_path / "empty.txt"), "--tokenizer", "char", *out], "empty.txt is empty"),
        (["--data", str(tmp_path / "nope.txt"), *out], "nope.txt not found"),
        (["--data", str(tmp_path / "short.txt"), *out], "fewer than T+1"),
        (["--device", "tpu", *out], "--device tpu: use auto, cpu, cuda"),
        (["--resume", "--out_dir", str(tmp_path / "empty_ckpt")], "ckpt.pt is no readable checkpoint"),
        (["--resume", "--out_dir", str(tmp_path / "random_ckpt")], "ckpt.pt is no readable checkpoint"),
        (["--resume", "--out_dir", str(tmp_path / "nowhere")], "no checkpoint to resume"),
        (["--out_dir", str(tmp_path / "a_file")], "a_file is a file"),
        (["--sample_prompt", "", *out], "--sample_prompt is empty"),
        (["--sample_prompt", "héllo €", *out], "characters 'é€' are not in this char vocabulary"),
        (["--model_type", "llama", *out], "unknown --model_type 'llama'"),
        (["--n_layers", "3", *out], "unrecognized arguments: --n_layers 3"),
        (["--n_layer", "three", *out], "argument --n_layer: invalid int value: 'three'"),
        (["--preset", "huge", *out], "unknown preset 'huge'"),
        (["--eval_interval", "0", *out], "argument --eval_interval: 0 is not an integer >= 1"),
        (["--B", "0", *out], "argument --B: 0 is not an integer >= 1"),
        (["--max_steps", "-3", *out], "argument --max_steps: -3 is not an integer >= 1"),
        (["--warmup_steps", "-1", *out], "argument --warmup_steps: -1 is not an integer >= 0"),
        (["--sample_tokens", "-1", *out], "argument --sample_tokens: -1 is not an integer >= 0"),
        (["--max_lr", "nan", *out], "argument --max_lr: nan is not a finite number > 0"),
        (["--max_lr", "0", *out], "argument --max_lr: 0 is not a finite number > 0"),
        (["--min_lr", "inf", *out], "argument --min_lr: inf is not a finite number > 0"),
        (["--min_lr", "0.01", *out], "--min_lr 0.01 is above --max_lr 0.001"),
        (["--beta2", "1", *out], "argument --beta2: 1 is not a finite number in [0, 1)"),
        (["--weight_decay", "-0.1", *out], "argument --weight_decay: -0.1 is not a finite number >= 0"),
        (["--grad_clip", "-1", *out], "argument --grad_clip: -1 is not a finite number >= 0"),
        (["--bpe_vocab_size", "256", *out], "argument --bpe_vocab_size: 256 is not an integer >= 257"),
        (["--n_layer", "0", *out], "argument --n_layer: 0 is not an integer >= 1"),
        (["--n_embd", "-32", *out], "argument --n_embd: -32 is not an integer >= 1"),
        (["--dropout", "1.5", *out], "argument --dropout: 1.5 is not a finite number in [0, 1)"),
        (["--total_batch_size", "100", *out], "not a multiple of B*T*ranks"),
        (["--dtype", "fp16", *out], "--dtype fp16 needs a CUDA GPU"),
        (["--n_head", "3", *out], "gpt config: n_embd 32 must be a multiple of n_head 3"),
        (["--tokenizer", "bpe", "--bpe_vocab_size", "100", *out], "vocab"),
    ]


def test_every_bad_input_is_one_line_before_any_work(tmp_path):
    for argv, message in bad_inputs(tmp_path):
        line = usage_error(*argv)
        assert message in line, (argv, line)
    assert not (tmp_path / "out" / "log.jsonl").exists() and not (tmp_path / "out" / "ckpt.pt").exists()


def test_bad_input_through_the_command_line_is_one_line_with_exit_code_2(tmp_path):
    cases = [case for case in bad_inputs(tmp_path) if case[1].startswith(("binary.txt", "unrecognized", "ckpt.pt"))]
    for argv, message in cases[:3]:
        assert message in one_line_error(run_train(*argv, check=False))


def test_resume_refuses_what_would_change_the_run(tmp_path):
    assert train_here("--max_steps", "2", "--out_dir", str(tmp_path)) == 0
    assert "trained with --tokenizer char: drop --tokenizer gpt2" in usage_error(
        "--resume", "--tokenizer", "gpt2", "--out_dir", str(tmp_path)
    )
    assert "was trained with n_embd=32" in usage_error("--resume", "--n_embd", "64", "--out_dir", str(tmp_path))
    assert "holds a 'gpt' model, not 'moegpt'" in usage_error(
        "--resume", "--model_type", "moegpt", "--out_dir", str(tmp_path)
    )


def test_wandb_missing_gives_install_hint(tmp_path):
    # run train.py as __main__ in an interpreter where `import wandb` fails, whatever is installed
    code = (
        "import runpy, sys; sys.modules['wandb'] = None; sys.argv = sys.argv[1:]; "
        "runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "train.py", *TINY, "--wandb", "--max_steps", "1", "--out_dir", str(tmp_path)],
        capture_output=True,
        check=False,
        text=True,
        cwd=ROOT,
    )
    assert "pip install wandb" in one_line_error(result)


# ----------------------------------------------------------------------------- pieces


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


# ----------------------------------------------------------------------------- a tokenizer learned from the corpus


def test_bpe_end_to_end_resume_and_a_model_file_copied_alone_samples_with_it(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    with open(os.path.join(ROOT, "input.txt"), encoding="utf-8") as f:
        corpus.write_text(f.read(60_000), encoding="utf-8")
    common = [
        "--model_type",
        "moegpt",
        "--B",
        "4",
        "--T",
        "16",
        "--n_layer",
        "1",
        "--n_head",
        "2",
        "--n_kv_head",
        "1",
        "--n_embd",
        "32",
        "--multiple_of",
        "16",
        "--eval_iters",
        "1",
        "--sample_tokens",
        "4",
        "--data",
        str(corpus),
        "--out_dir",
        str(tmp_path / "run"),
    ]
    assert (
        train_here(
            *common,
            "--tokenizer",
            "bpe",
            "--bpe_vocab_size",
            "300",
            "--max_steps",
            "4",
            "--eval_interval",
            "2",
            "--stop_step",
            "2",
            tiny=False,
        )
        == 0
    )
    assert "tokenizer: bpe, 300 tokens (--tokenizer)" in capsys.readouterr().out
    assert (tmp_path / "corpus.txt.bpe300.json").exists()  # learned once, next to the corpus
    assert train_here(*common, "--max_steps", "4", "--eval_interval", "2", "--resume", tiny=False) == 0
    ckpt = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 4 and ckpt["tokenizer"]["kind"] == "bpe" and len(ckpt["tokenizer"]["merges"]) == 43
    alone = tmp_path / "alone"  # the model file and its checkpoint, nothing else
    alone.mkdir()
    shutil.copy(os.path.join(ROOT, "moe_gpt.py"), alone)
    shutil.copy(tmp_path / "run" / "ckpt.pt", alone)
    sample = subprocess.run(
        [sys.executable, "moe_gpt.py", "--ckpt", "ckpt.pt", "--prompt", "KING Ω:", "--max_new_tokens", "5"],
        capture_output=True,
        check=False,
        text=True,
        cwd=alone,
        timeout=120,
    )
    assert sample.returncode == 0 and "KING Ω:" in sample.stdout, sample.stderr


def test_a_model_file_copied_alone_says_where_gpt2_tiktoken_must_be(tmp_path):
    shutil.copy(os.path.join(ROOT, "gpt.py"), tmp_path)
    result = subprocess.run(
        [sys.executable, "gpt.py"], capture_output=True, check=False, text=True, cwd=tmp_path, timeout=120
    )
    line = one_line_error(result)
    assert f"{tmp_path}/data/gpt2.tiktoken not found" in line and "beside this file" in line


# ----------------------------------------------------------------------------- a log cut by a crash


def test_a_log_cut_anywhere_in_its_last_line_never_stops_a_resume(tmp_path, capsys):
    common = ["--max_steps", "4", "--eval_interval", "2", "--sample_tokens", "0"]
    assert train_here(*common, "--out_dir", str(tmp_path / "whole")) == 0
    assert train_here(*common, "--stop_step", "2", "--out_dir", str(tmp_path / "split")) == 0
    log = (tmp_path / "split" / "log.jsonl").read_bytes()
    last = log.rstrip(b"\n").rfind(b"\n") + 1  # where the last record begins
    records = plot.read_log(tmp_path / "split" / "log.jsonl")[0]
    for cut in range(last, len(log) - 1):  # cut before every byte of the last record
        (tmp_path / "cut.jsonl").write_bytes(log[:cut])
        kept, was_cut = plot.read_log(tmp_path / "cut.jsonl")
        assert kept == records[:-1] and was_cut == (cut > last), cut
    (tmp_path / "cut.jsonl").write_bytes(log[: len(log) - 1])  # only the newline lost: the record is whole
    assert plot.read_log(tmp_path / "cut.jsonl") == (records, False)
    capsys.readouterr()
    for cut in (last + 1, (last + len(log)) // 2, len(log) - 2):  # resumed: the run goes on, the records stay
        run = tmp_path / f"cut{cut}"
        shutil.copytree(tmp_path / "split", run)
        (run / "log.jsonl").write_bytes(log[:cut])
        assert train_here(*common, "--resume", "--out_dir", str(run)) == 0
        assert "its last line was cut (a crash while writing it): dropped" in capsys.readouterr().out
        assert step_losses(run) == step_losses(tmp_path / "whole")
        assert plot.read_log(run / "log.jsonl")[0][: len(records) - 1] == records[:-1]
    (tmp_path / "split" / "log.jsonl").write_bytes(b"{not json\n" + log)  # damage elsewhere is no crash's cut
    assert "line 1 is no JSON record" in usage_error(*common, "--resume", "--out_dir", str(tmp_path / "split"))


# ----------------------------------------------------------------------------- plot.py


def test_plot_redraws_a_run_and_compares_runs_in_bits_per_character(tmp_path):
    common = ["--max_steps", "4", "--eval_interval", "2", "--sample_tokens", "0"]
    assert train_here(*common, "--out_dir", str(tmp_path / "char")) == 0
    assert train_here(*common, "--tokenizer", "gpt2", "--out_dir", str(tmp_path / "gpt2")) == 0
    (tmp_path / "char" / "loss.png").unlink()
    result = run_script("plot.py", str(tmp_path / "char"))
    assert result.returncode == 0 and os.path.getsize(tmp_path / "char" / "loss.png") > 1000, result.stderr
    drawn = plot.compare([str(tmp_path / "char"), str(tmp_path / "gpt2")], str(tmp_path / "both.png"), x="tokens")
    assert os.path.getsize(tmp_path / "both.png") > 1000
    for run, curves in drawn.items():
        records = plot.read_log(os.path.join(run, "log.jsonl"))[0]
        evals = [r for r in records if "val_loss" in r]
        assert curves["val"] == ([2 * 64, 4 * 64], [r["val_bpc"] for r in evals])  # B 4 x T 16 tokens a step
        start = next(r for r in records if "run" in r)
        bits = start["tokens_per_char"] / np.log(2)  # nats per token -> bits per character
        assert curves["train"][1] == pytest.approx([r["loss"] * bits for r in records if "loss" in r], rel=1e-12)
    assert curves["val"][1] != drawn[str(tmp_path / "char")]["val"][1]
    missing = run_script("plot.py", str(tmp_path / "char"), str(tmp_path / "nowhere"))
    assert "nowhere/log.jsonl not found" in one_line_error(missing)
    assert "invalid choice" in one_line_error(run_script("plot.py", str(tmp_path / "char"), "--x", "days"))


# ----------------------------------------------------------------------------- FSDP2


def torchrun(*args):
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args],
        capture_output=True,
        check=False,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def test_fsdp_trains_every_model_file_as_ddp_does_with_half_the_optimizer_state_per_rank():  # AdamW and Muon
    result = torchrun(os.path.join("tests", "fsdp_check.py"))
    assert result.returncode == 0, result.stderr[-3000:]
    shards, *rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert shards == {"muon_on_shards": 0.0}  # Muon on a sharded weight: the same computation as on the whole one
    assert [row["model"] for row in rows] == ["gpt", "moderngpt", "moegpt", "mlamoe", "fgram", "gpt", "moegpt"]
    for row in rows:
        # AdamW: the same sums in another order (reduce-scatter vs all-reduce), float32 rounding only. Muon rounds
        # each update to bf16 for Newton-Schulz, so a last-bit difference of a gradient can move a weight by a
        # bf16 step (0.4% of the update): the runs agree to 1e-3
        tolerance = 1e-5 if row["optimizer"] == "adamw" else 1e-3
        assert np.allclose(row["fsdp"], row["ddp"], rtol=0, atol=tolerance), row
        assert row["keys_equal"] and row["weights"] < (1e-5 if row["optimizer"] == "adamw" else 1e-2), row
        assert row["fsdp_optimizer_bytes"] == pytest.approx(row["ddp_optimizer_bytes"] / 2, rel=0.05), row


def test_an_fsdp_checkpoint_resumes_as_ddp_and_in_one_process(tmp_path):
    common = [*TINY, "--max_steps", "5", "--eval_interval", "100", "--dropout", "0.1", "--total_batch_size", "256"]
    assert train_here(*common[len(TINY) :], "--out_dir", str(tmp_path / "whole")) == 0
    result = torchrun("train.py", *common, "--fsdp", "--stop_step", "2", "--out_dir", str(tmp_path / "fsdp"))
    assert result.returncode == 0 and "1/2 of each on each rank" in result.stdout, result.stderr[-3000:]
    shutil.copytree(tmp_path / "fsdp", tmp_path / "one")
    result = torchrun("train.py", *common, "--stop_step", "4", "--resume", "--out_dir", str(tmp_path / "fsdp"))
    assert result.returncode == 0 and "a whole copy on each rank" in result.stdout, result.stderr[-3000:]
    for run in ("fsdp", "one"):
        out = str(tmp_path / run)
        assert train_here("--max_steps", "5", "--eval_interval", "100", "--resume", "--out_dir", out) == 0
    whole = step_losses(tmp_path / "whole")
    for run in ("fsdp", "one"):  # FSDP -> DDP -> one process, and FSDP -> one process
        resumed = step_losses(tmp_path / run)
        assert list(resumed) == [1, 2, 3, 4, 5] and all(abs(resumed[s] - whole[s]) < 1e-5 for s in whole), resumed
    assert "--fsdp shards the model over torchrun's ranks" in usage_error("--fsdp", "--out_dir", str(tmp_path / "x"))


def test_a_muon_run_resumes_exactly_and_keeps_its_optimizer(tmp_path):
    common = ["--max_steps", "6", "--eval_interval", "100", "--sample_tokens", "0"]
    assert train_here(*common, "--optimizer", "muon", "--out_dir", str(tmp_path / "whole")) == 0
    assert train_here(*common, "--optimizer", "muon", "--stop_step", "3", "--out_dir", str(tmp_path / "split")) == 0
    assert train_here(*common, "--resume", "--out_dir", str(tmp_path / "split")) == 0  # Muon from the checkpoint
    assert step_losses(tmp_path / "split") == step_losses(tmp_path / "whole")
    adamw = step_losses(tmp_path / "split")
    assert train_here(*common, "--out_dir", str(tmp_path / "adamw")) == 0
    assert step_losses(tmp_path / "adamw")[6] != adamw[6]  # Muon really took part
    line = usage_error(*common, "--optimizer", "adamw", "--resume", "--out_dir", str(tmp_path / "split"))
    assert "was trained with --optimizer muon" in line


def test_two_nodes_on_this_machine_train_as_one_process_does(tmp_path):
    # two torchrun agents meeting at a c10d rendezvous, as two machines would; one process per "node"
    common = [*TINY, "--max_steps", "3", "--eval_interval", "3", "--sample_tokens", "0"]
    assert train_here(*common[len(TINY) :], "--total_batch_size", "128", "--out_dir", str(tmp_path / "one")) == 0
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
              "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "two-nodes", "train.py",
              *common, "--fsdp", "--out_dir", str(tmp_path / "two")]
    nodes = [subprocess.Popen(launch, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for _ in range(2)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert all(node.returncode == 0 for node in nodes), outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert sum("x 2 ranks = 128 tokens/step" in out for out, _ in outputs) == 1  # rank 0 alone prints
    one, two = step_losses(tmp_path / "one"), step_losses(tmp_path / "two")
    assert list(two) == [1, 2, 3] and all(abs(two[s] - one[s]) < 1e-5 for s in one), (one, two)


# ----------------------------------------------------------------------------- shards and HellaSwag


def prepare_shards(tmp_path):
    """Tiny Shakespeare's first 200,000 characters as fineweb.py shards of 20,000 GPT-2 tokens (val first)."""
    with open(os.path.join(ROOT, "input.txt"), encoding="utf-8") as f:
        (tmp_path / "a.txt").write_text(f.read(200_000), encoding="utf-8")
    result = run_script("fineweb.py", "--input", str(tmp_path / "a.txt"), "--out", str(tmp_path / "shards"),
                        "--shard_size", "20000", "--workers", "1")
    assert result.returncode == 0, result.stderr
    return str(tmp_path / "shards")


def test_shards_train_in_order_and_resume_exactly_on_another_number_of_ranks(tmp_path, capsys):
    shards = prepare_shards(tmp_path)
    common = [*TINY, "--data", shards, "--max_steps", "6", "--eval_interval", "100", "--total_batch_size", "256",
              "--dropout", "0.1", "--sample_tokens", "0"]
    assert train_here(*common[len(TINY) :], "--out_dir", str(tmp_path / "whole")) == 0
    assert "tokenizer: gpt2, 50,257 tokens (gpt2: meta.json's)" in capsys.readouterr().out
    result = torchrun("train.py", *common, "--stop_step", "3", "--out_dir", str(tmp_path / "split"))
    assert result.returncode == 0, result.stderr[-3000:]
    resume = ["--max_steps", "6", "--eval_interval", "100", "--resume", "--out_dir", str(tmp_path / "split")]
    assert train_here(*resume) == 0  # on the checkpoint's shards
    whole, split = step_losses(tmp_path / "whole"), step_losses(tmp_path / "split")
    assert list(split) == list(range(1, 7)) and all(abs(split[s] - whole[s]) < 1e-5 for s in whole), (split, whole)
    # in order: micro-batch n of the run reads the stream's tokens n*B*T .. (n+1)*B*T, so step s is tokens 256 s ..
    import shards as shard_format

    stream = shard_format.TokenStream(shard_format.shard_paths(shards, "train"))
    x, y = train.data.micro_batch(gpt, train.data.Corpus(stream, stream, None, 1.0, "", True), 4, 16, 1, 2, 1, 4,
                                  "cpu")
    assert torch.equal(x.flatten(), torch.from_numpy(stream.window((2 * 4 + 1) * 64, 64)))
    assert torch.equal(y.flatten(), torch.from_numpy(stream.window((2 * 4 + 1) * 64 + 1, 64)))
    assert "--tokenizer char" in usage_error("--data", shards, "--tokenizer", "char", "--out_dir", str(tmp_path / "c"))


def test_hellaswag_during_training_in_the_log_the_summary_and_the_plot(tmp_path, capsys):
    import json as json_module

    examples = [{"ind": i, "activity_label": "Speaking", "ctx_a": "the king is dead and", "ctx_b": "the queen",
                 "ctx": "the king is dead and the queen", "endings": ["will rule", "is here", "and the", "of love"],
                 "label": i % 4, "split": "val"} for i in range(6)]
    (tmp_path / "hs.jsonl").write_text("".join(json_module.dumps(e) + "\n" for e in examples))
    args = ["--max_steps", "4", "--eval_interval", "2", "--hellaswag_interval", "2", "--hellaswag_data",
            str(tmp_path / "hs.jsonl"), "--sample_tokens", "0", "--out_dir", str(tmp_path / "run")]
    assert train_here(*args) == 0
    out = capsys.readouterr().out
    assert "step 2: HellaSwag acc_norm " in out and "(6 of 6 scored)" in out and "| HellaSwag acc_norm " in out
    scores = [r for r in plot.read_log(tmp_path / "run" / "log.jsonl")[0] if "hellaswag_acc_norm" in r]
    assert [r["step"] for r in scores] == [2, 4] and all(r["hellaswag_scored"] == 6 for r in scores)
    assert os.path.getsize(tmp_path / "run" / "loss.png") > 1000
    (tmp_path / "bad.jsonl").write_text('{"ctx": "no endings"}\n')
    line = usage_error("--hellaswag_interval", "2", "--hellaswag_data", str(tmp_path / "bad.jsonl"), "--out_dir",
                       str(tmp_path / "bad"))
    assert line.startswith("--hellaswag_data: ") and "bad.jsonl" in line
