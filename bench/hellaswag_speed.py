"""
bench/hellaswag_speed.py - HellaSwag examples per second: hellaswag.py's scoring against build-nanogpt's way (one
example at a time: its four rows padded to the longest, one forward, the cross-entropy at every position, the
ending's positions masked in), on the same model and the same examples.

    flock /tmp/nanodecoder-bench.lock python bench/hellaswag_speed.py             # GPT-2 BPE, 4 x 256, 120 examples
    python bench/hellaswag_speed.py --n_layer 12 --n_embd 768 --n_head 12 --n 24  # GPT-2 124M's shape
    python bench/hellaswag_speed.py --write /tmp/shakespeare_hellaswag.jsonl      # only write the examples

Four ways run in turn, --reps times each, and the medians are printed:
    build-nanogpt     its evaluate loop, written out here from its description: acc and acc_norm
    whole rows        evaluate(renderings=("nanogpt",), use_cache=False): the same texts and scores, the rows of many
                      examples per forward (hellaswag.py's way before the cache, and where the cache does not apply)
    hellaswag.py (1)  evaluate(renderings=("nanogpt",)): each context once with the KV cache, then its four endings
    hellaswag.py (2)  evaluate(): both texts, all four scores (what python hellaswag.py runs)
The acc_norm prediction of every example is checked to be the same in all four, and the mean log-likelihoods
per token to agree to float32 rounding. build-nanogpt encodes the context and " " + ending apart, hellaswag.py the
whole text (the harness's way): for GPT-2's BPE the tokens are the same here, which the script checks too.

The weights are random (speed does not depend on what they learned); HellaSwag itself cannot be downloaded on an
offline machine, so the examples are HellaSwag-shaped passages of Tiny Shakespeare (input.txt): a context of 20-40
words, its true continuation and three passages from elsewhere, 10-25 words each; every other one carries WikiHow's
"[header] ... [title] ... [step]" artifacts, as half of HellaSwag does.
"""
import argparse
import json
import os
import random
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gpt
import hellaswag
from data import bounded

INPUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "input.txt")


def shakespeare_examples(n, seed=0, path=INPUT):
    """n HellaSwag-shaped examples (its fields) cut from a text: label's ending is the text's continuation."""
    with open(path, encoding="utf-8") as f:
        words = f.read().split()
    rng = random.Random(seed)

    def passage(start, length):
        return " ".join(words[start:start + length])

    examples = []
    for ind in range(n):
        start, n_ctx, n_end = rng.randrange(len(words) - 100), rng.randint(20, 40), rng.randint(10, 25)
        ctx_a, ctx_b = passage(start, n_ctx - 2), passage(start + n_ctx - 2, 2).lower()
        true = passage(start + n_ctx, n_end)
        endings = [passage(rng.randrange(len(words) - 100), rng.randint(10, 25)) for _ in range(3)]
        label = rng.randrange(4)
        endings.insert(label, true)
        if ind % 2:  # WikiHow's form: a header, a title and steps in brackets, a sub-step in an ending
            cut = len(ctx_a.split()) // 2
            ctx_a = "[header] " + " ".join(ctx_a.split()[:3]) + " [title] " + " ".join(ctx_a.split()[3:cut]) + \
                " [step] " + " ".join(ctx_a.split()[cut:])
            endings[rng.randrange(4)] = "[substeps] " + endings[label]
            ctx_b = ""
        examples.append({"ind": ind, "activity_label": "Tiny Shakespeare", "ctx_a": ctx_a, "ctx_b": ctx_b,
                         "ctx": ctx_a + " " + ctx_b if ctx_b else ctx_a, "split": "val", "split_type": "synthetic",
                         "label": label, "endings": endings, "source_id": f"input.txt~{start}"})
    return examples


@torch.no_grad()
def nanogpt_way(model, tokenizer, examples):
    """build-nanogpt's hellaswag.py loop: per example the rows ctx tokens + encode(" " + ending), zero-padded to the
    longest of the four, one forward, cross-entropy at every position, the ending's positions averaged."""
    correct, correct_norm, mean_loglik, rows_tokens = 0, 0, [], []
    for example in examples:
        ctx_tokens = tokenizer.encode(example["ctx"])
        rows = [ctx_tokens + tokenizer.encode(" " + ending) for ending in example["endings"]]
        tokens = torch.zeros(4, max(map(len, rows)), dtype=torch.long)
        mask = torch.zeros_like(tokens)
        for i, row in enumerate(rows):
            tokens[i, :len(row)] = torch.tensor(row)
            mask[i, len(ctx_tokens):len(row)] = 1
        logits, _ = model(tokens)
        losses = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
        shift_mask = mask[:, 1:]
        sum_loss = (losses.view(4, -1) * shift_mask).sum(1)
        avg_loss = sum_loss / shift_mask.sum(1)
        correct += int(sum_loss.argmin().item() == example["label"])
        correct_norm += int(avg_loss.argmin().item() == example["label"])
        mean_loglik.append((-avg_loss).tolist())
        rows_tokens.append([len(row) - len(ctx_tokens) for row in rows])
    return {"acc": correct / len(examples), "acc_norm": correct_norm / len(examples), "mean_loglik": mean_loglik,
            "tokens": rows_tokens}


def compare(base, result):
    """(examples whose acc_norm pick differs, largest difference of a mean log-likelihood per token, examples whose
    ending tokens differ)."""
    picks, largest, tokens = 0, 0.0, 0
    for record, mean, counts in zip(result["records"], base["mean_loglik"], base["tokens"]):
        ours = [ll / n for ll, n in zip(record["nanogpt"]["loglik"], record["nanogpt"]["tokens"])]
        picks += hellaswag.first_max(ours) != hellaswag.first_max(mean)
        largest = max(largest, max(abs(a - b) for a, b in zip(ours, mean)))
        tokens += record["nanogpt"]["tokens"] != counts
    return picks, largest, tokens


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n", type=bounded(int, 1), default=120, help="examples")
    p.add_argument("--reps", type=bounded(int, 1), default=3, help="runs of each way, interleaved")
    p.add_argument("--n_layer", type=bounded(int, 1), default=4)
    p.add_argument("--n_head", type=bounded(int, 1), default=4)
    p.add_argument("--n_embd", type=bounded(int, 1), default=256)
    p.add_argument("--batch_rows", type=bounded(int, 1), default=32, help="hellaswag.py's rows per forward")
    p.add_argument("--seed", type=int, default=0, help="of the examples and the weights")
    p.add_argument("--write", metavar="FILE", help="write the examples as JSON lines and stop")
    args = p.parse_args()
    examples = shakespeare_examples(args.n, args.seed)
    if args.write:
        hellaswag.write_atomically(args.write, [json.dumps(e) for e in examples])
        print(f"wrote {len(examples)} examples to {args.write}")
        return
    torch.manual_seed(args.seed)
    config = gpt.GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)  # GPT-2's BPE, block 1024
    model, tokenizer = gpt.GPT(config).eval(), gpt.Tokenizer("gpt2")
    print(f"gpt.py {args.n_layer} layers x {args.n_embd}, {model.param_counts()['total'] / 1e6:.1f}M parameters, "
          f"GPT-2 BPE; {args.n} Shakespeare examples; {torch.get_num_threads()} thread(s); batch_rows "
          f"{args.batch_rows}")
    ways = {
        "build-nanogpt": lambda: nanogpt_way(model, tokenizer, examples),
        "whole rows, build-nanogpt's text": lambda: hellaswag.evaluate(
            model, tokenizer, examples, "cpu", batch_rows=args.batch_rows, renderings=("nanogpt",), use_cache=False),
        "hellaswag.py, build-nanogpt's text": lambda: hellaswag.evaluate(
            model, tokenizer, examples, "cpu", batch_rows=args.batch_rows, renderings=("nanogpt",)),
        "hellaswag.py, both texts": lambda: hellaswag.evaluate(model, tokenizer, examples, "cpu",
                                                               batch_rows=args.batch_rows),
    }
    speeds, last = {name: [] for name in ways}, {}
    for _ in range(args.reps):
        for name, way in ways.items():
            start = time.perf_counter()
            last[name] = way()
            speeds[name].append(args.n / (time.perf_counter() - start))
    base = speeds["build-nanogpt"]
    print(f"{'way':36s} {'examples/s':>10s} {'speed-up':>8s}  acc_norm  acc_norm_harness  (median of {args.reps})")
    for name in ways:
        harness = last[name].get("acc_norm_harness")
        print(f"{name:36s} {statistics.median(speeds[name]):10.2f} "
              f"{statistics.median(speeds[name]) / statistics.median(base):7.2f}x  {last[name]['acc_norm']:.4f}    "
              f"{'' if harness is None else f'{harness:.4f}'}")
    for name in list(ways)[1:]:
        picks, largest, tokens = compare(last["build-nanogpt"], last[name])
        print(f"{name}: acc_norm picks that differ from build-nanogpt's {picks} of {args.n}, largest difference of a "
              f"mean log-likelihood {largest:.1e}, examples with other ending tokens {tokens}")


if __name__ == "__main__":
    main()
