"""
plot.py - the pictures of a train.py run, drawn from its log.jsonl; several runs on one plot to compare them.

    python plot.py out/run                          # redraw out/run/loss.png (and expert_load.png for MoE runs)
    python plot.py out/a out/b out/c --out ab.png   # the runs' validation (and smoothed training) loss on one plot
    python plot.py out/a out/b --x tokens           # against tokens seen instead of steps (also: time)

One run: train loss per step (raw and smoothed), val loss at each evaluation, and the val text's bits per
character on the right axis; an MoE run also gets expert_load.png, each layer's share of the tokens per expert
per step. Several runs: bits per character on the y axis, so runs with different tokenizers (characters, a
learned BPE, GPT-2's) compare: bits/char = nats per token x tokens per character / ln 2. train.py draws a run's
plots at every evaluation; a failure here is reported and never ends a run.
"""
import argparse
import json
import math
import os
import sys
import traceback

import numpy as np


def read_log(path):
    """log.jsonl's records, and whether its last line was cut (a crash while writing it: power loss, a full
    disk). A cut line is no JSON object, since no proper prefix of one is; it is left out. A damaged line
    elsewhere is a ValueError."""
    if not os.path.exists(path):
        return [], False
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise ValueError(f"{path}: line {number} is no JSON record (edited or damaged?)") from None
            return records, True
    return records, False


def start_log(path, resumed_step, run):
    """Begin a run's log: a resumed run's records up to resumed_step stay (None: a new run, an empty log), then a
    record of the run (its title, tokens per step and per character, which run_curves reads). Returns whether
    the old log's last line had been cut."""
    kept, cut = read_log(path) if resumed_step is not None else ([], False)
    kept = [r for r in kept if r["step"] <= resumed_step] if resumed_step is not None else []
    with open(path + ".tmp", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in [*kept, {"step": resumed_step or 0, **run}]))
    os.replace(path + ".tmp", path)  # atomic: a crash now leaves the old log whole
    return cut


def append_log(path, record, wandb_run=None):
    """One record at the end of log.jsonl (and its numbers to Weights & Biases, when on)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    if wandb_run:
        wandb_run.log({k: v for k, v in record.items() if not isinstance(v, (list, dict))}, step=record["step"])


def format_time(seconds):
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"


def step_line(record, max_steps, eta):
    line = (f"step {record['step']:5d}/{max_steps} | loss {record['loss']:.4f} | lr {record['lr']:.2e} | "
            f"norm {record['grad_norm']:.3f} | {record['ms']:.1f} ms | {record['tok_per_s']:,.0f} tok/s")
    if "mfu" in record:
        line += f" | MFU {100 * record['mfu']:.1f}%"
    return line + f" | {format_time(record['elapsed'])} | ETA {format_time(eta)}"


def moe_line(record):
    """The MoE terms, on a line of their own: balancing losses, dropped share, worst layer's max/mean load."""
    names = [name for name in record if name.endswith("_loss")] + (["dropped"] if "dropped" in record else [])
    terms = [f"{name} {record[name]:.4g}" for name in names]
    if "expert_load" in record:
        imbalance = max(max(layer) * len(layer) for layer in record["expert_load"])  # max / mean load
        terms.append(f"max/mean expert load {imbalance:.2f}")
    return "      moe: " + " | ".join(terms)


def moe_stats(model, moe_layers):
    """The last batch's routing: each balancing loss and the dropped share, averaged over MoE layers, the
    expert load (MoE layers x experts, share of assignments), and the MTP loss where there is one."""
    stats = {}
    if getattr(model, "mtp_loss", None) is not None:
        stats["mtp_loss"] = model.mtp_loss.item()
    layers = [moe.stats for moe in moe_layers if moe.stats]
    if layers:
        for name in (name for name in layers[0] if name != "load"):
            stats[name] = sum(float(s[name]) for s in layers) / len(layers)
        stats["expert_load"] = [s["load"].tolist() for s in layers]
    return stats


def idle_experts(loads):
    """{MoE layer: experts} given less than 1/(10 E) of the tokens over `loads` (steps, layers, experts)."""
    if not loads:
        return {}
    load = np.mean(loads, axis=0)
    idle = {layer: np.flatnonzero(row < 1 / (10 * len(row))).tolist() for layer, row in enumerate(load)}
    return {layer: experts for layer, experts in idle.items() if experts}


def pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files, no window
    import matplotlib.pyplot as plt
    return plt


def smoothed(values, points=50):
    """Running mean over len / points steps, and that window."""
    window = max(1, len(values) // points)
    return np.convolve(values, np.ones(window) / window, mode="valid"), window


def plot_run(out_dir, title=None):
    """loss.png and, for MoE runs, expert_load.png in out_dir; the paths written. A failure is printed with its
    traceback and returns no paths: plotting never ends a run."""
    try:
        plt, records = pyplot(), read_log(os.path.join(out_dir, "log.jsonl"))[0]
        title = title or next((r["run"] for r in reversed(records) if "run" in r), os.path.basename(out_dir))
        written = [plot_loss(plt, records, title, os.path.join(out_dir, "loss.png"))]
        loads = [r["expert_load"] for r in records if "expert_load" in r]
        if loads:
            written.append(plot_expert_load(plt, np.array(loads), os.path.join(out_dir, "expert_load.png")))
        return written
    except Exception:  # noqa: BLE001 (any failure: plots never end the run)
        print(f"plotting failed (the run and its checkpoint are fine):\n{traceback.format_exc()}", flush=True)
        return []


def plot_loss(plt, records, title, path):
    """Train loss per step (raw and smoothed) and val loss at each evaluation, the y-range on the part of the
    curve after the first steps' plunge; bits per character of the val text on the right axis. Runs that score
    HellaSwag get a second panel: its accuracies against the 0.25 of guessing."""
    steps = np.array([r["step"] for r in records if "loss" in r])
    loss = np.array([r["loss"] for r in records if "loss" in r])
    evals = [r for r in records if "val_loss" in r]
    hellaswag = [r for r in records if "hellaswag_acc_norm" in r]
    fig, axes = plt.subplots(2 if hellaswag else 1, 1, figsize=(9, 8 if hellaswag else 5), squeeze=False,
                             sharex=True, gridspec_kw={"height_ratios": [2, 1] if hellaswag else [1]})
    ax = axes[0, 0]
    ax.plot(steps, loss, lw=0.6, alpha=0.35, color="tab:blue", label="train (per step)")
    smooth, window = smoothed(loss)
    ax.plot(steps[window - 1:], smooth, lw=1.6, color="tab:blue",
            label=f"train (mean of {window} steps)" if window > 1 else None)
    if evals:
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", color="tab:orange", label="val")
        nats_to_bits = evals[-1]["val_bpc"] / evals[-1]["val_loss"]
        right = ax.secondary_yaxis("right", functions=(lambda x: x * nats_to_bits, lambda x: x / nats_to_bits))
        right.set_ylabel("val bits per character")
    later = smooth[len(smooth) // 20:] if len(smooth) > 20 else smooth
    values = np.concatenate([later, [r["val_loss"] for r in evals]])
    low, high = values.min(), np.percentile(later, 99) if len(later) else values.max()
    high = max(high, max((r["val_loss"] for r in evals), default=high))
    ax.set_ylim(low - 0.05 * (high - low + 1e-3), high + 0.1 * (high - low + 1e-3))
    ax.set(title=title, xlabel="step", ylabel="cross-entropy loss (nats per token)")
    ax.legend()
    if hellaswag:
        for key, label in (("acc_norm", "acc_norm (build-nanogpt's)"), ("acc_norm_harness", "acc_norm_harness")):
            axes[1, 0].plot([r["step"] for r in hellaswag], [r[f"hellaswag_{key}"] for r in hellaswag], "o-",
                            label=label)
        axes[1, 0].axhline(0.25, color="gray", lw=0.8, ls="--", label="random guess")
        axes[1, 0].set(xlabel="step", ylabel="HellaSwag accuracy")
        axes[1, 0].legend(fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_expert_load(plt, load, path):
    """load (steps, layers, experts): one heatmap per MoE layer on one colour scale centred on the uniform
    share 1/E (white: uniform, red: over-, blue: under-loaded), and each layer's max/mean load over the run."""
    from matplotlib.colors import TwoSlopeNorm
    n_steps, n_layers, n_experts = load.shape
    uniform = 1 / n_experts
    norm = TwoSlopeNorm(vcenter=uniform, vmin=0, vmax=max(load.max(), 2 * uniform))
    fig, axes = plt.subplots(n_layers + 1, 1, figsize=(9, 2 + 1.4 * (n_layers + 1)), squeeze=False)
    for layer in range(n_layers):
        image = axes[layer, 0].imshow(load[:, layer].T, aspect="auto", cmap="RdBu_r", norm=norm,
                                      interpolation="nearest", extent=(0.5, n_steps + 0.5, n_experts - 0.5, -0.5))
        axes[layer, 0].set_ylabel(f"MoE layer {layer}\nexpert")
    bar = fig.colorbar(image, ax=axes[:n_layers, 0].tolist(), label="share of tokens")
    bar.set_ticks(sorted({0, uniform, norm.vmax}))
    bar.set_ticklabels(["0", f"uniform 1/{n_experts}", f"{norm.vmax:.2f}"])
    imbalance = load.max(axis=2) * n_experts  # (steps, layers): max / mean load
    for layer in range(n_layers):
        axes[-1, 0].plot(np.arange(1, n_steps + 1), imbalance[:, layer], lw=0.8, label=f"layer {layer}")
    axes[-1, 0].axhline(1.0, color="gray", lw=0.8, ls="--")
    axes[-1, 0].set(xlabel="step", ylabel="max / mean load", xlim=(0.5, n_steps + 0.5))
    axes[-1, 0].legend(fontsize=7, ncol=min(n_layers, 6))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def run_curves(records, x="step"):
    """A run's curves in bits per character: {"train": (xs, bpc), "val": (xs, bpc)}, x in steps, tokens seen or
    seconds. The val text's tokens per character convert nats per token to bits per character for both."""
    starts = [r for r in records if "run" in r]
    if not starts:
        raise ValueError("its log.jsonl has no run record: it was written by an older train.py; retrain to compare")
    tokens_per_step, bits = starts[-1]["tokens_per_step"], starts[-1]["tokens_per_char"] / math.log(2)
    steps = [r for r in records if "loss" in r]
    seconds = {r["step"]: r["elapsed"] for r in steps}
    position = {"step": lambda s: s, "tokens": lambda s: s * tokens_per_step, "time": lambda s: seconds.get(s, 0)}[x]
    evals = [r for r in records if "val_loss" in r]
    return {"train": ([position(r["step"]) for r in steps], [r["loss"] * bits for r in steps]),
            "val": ([position(r["step"]) for r in evals], [r["val_bpc"] for r in evals])}


def compare(out_dirs, path, x="step"):
    """Several runs on one plot: each run's smoothed train curve (thin) and val curve (dots), in bits per
    character. Returns the curves drawn, {out_dir: run_curves(...)}."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5))
    drawn = {}
    for i, out_dir in enumerate(out_dirs):
        try:
            curves = drawn[out_dir] = run_curves(read_log(os.path.join(out_dir, "log.jsonl"))[0], x)
        except ValueError as err:
            raise ValueError(f"{out_dir}: {err}") from None
        color, name = f"C{i % 10}", os.path.basename(os.path.normpath(out_dir))
        xs, train = curves["train"]
        smooth, window = smoothed(np.array(train))
        ax.plot(xs[window - 1:], smooth, lw=0.9, alpha=0.6, color=color)
        ax.plot(*curves["val"], "o-", ms=3, color=color, label=f"{name} (val; thin: train)")
    vals = [v for curves in drawn.values() for v in curves["val"][1]]
    if vals:
        ax.set_ylim(min(vals) - 0.1, max(vals) + 0.5)
    xlabel = {"step": "step", "tokens": "tokens seen", "time": "seconds of training"}[x]
    ax.set(title="bits per character of each run's validation text", xlabel=xlabel, ylabel="bits per character")
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return drawn


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2, as every script here
        fail(f"{message} (python plot.py --help)")


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv=None):
    p = ArgumentParser(description="Redraw a train.py run's plots, or compare several runs on one.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("runs", nargs="+", help="out_dir folders of train.py runs (each holds log.jsonl)")
    p.add_argument("--out", default="compare.png", help="with several runs: the comparison plot's file")
    p.add_argument("--x", choices=["step", "tokens", "time"], default="step", help="with several runs: the x axis")
    args = p.parse_args(argv)
    missing = [d for d in args.runs if not os.path.isfile(os.path.join(d, "log.jsonl"))]
    if missing:
        fail(f"{os.path.join(missing[0], 'log.jsonl')} not found: give the out_dir of a train.py run")
    if len(args.runs) == 1:
        written = plot_run(args.runs[0])
        print("\n".join(written) if written else "nothing written")
        sys.exit(0 if written else 1)
    try:
        compare(args.runs, args.out, args.x)
    except ValueError as err:
        fail(str(err))
    print(args.out)


if __name__ == "__main__":
    main()
