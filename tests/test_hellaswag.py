"""hellaswag.py against a reference written here: each ending scored alone through transformers (GPT2LMHeadModel,
LlamaForCausalLM) on the same weights, one forward per window of the model's context, each text and normalisation
applied here from the harness's and build-nanogpt's descriptions. Also: both texts on hand-written expectations
(WikiHow's brackets, str.capitalize), batch 1 against batch 64 on every model file, char-level and BPE checkpoints,
a tokenizer.json that adds a BOS, two torchrun ranks against one process, the download, and one-line errors."""
import json
import os
import re
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer

import pytest
import torch
import transformers as T
from cli_checks import ROOT, one_line_error, run_script
from model_checks import save_checkpoint
from test_load_gpt2 import FileServer

import bpe
import fgram_moe
import gpt
import hellaswag
import load_hf
import mla_moe
import modern_gpt
import moe_gpt


def example(ind, activity, ctx_a, ctx_b, endings, label, ctx=None):
    """An example as HellaSwag's files hold it: ctx is ctx_a, a space and ctx_b when ctx_b is not empty."""
    return {"ind": ind, "activity_label": activity, "ctx_a": ctx_a, "ctx_b": ctx_b,
            "ctx": ctx if ctx is not None else (ctx_a + " " + ctx_b if ctx_b else ctx_a), "split": "val",
            "split_type": "indomain", "label": label, "endings": endings, "source_id": f"test~{ind}"}


EXAMPLES = [
    example(24, "Roof shingle removal", "A man is sitting on a roof.", "he",
            ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.", "is holding a rubik's cube.",
             "starts pulling up roofing on a roof."], 3),
    example(7, "Home and Garden",
            "[header] How to grow tomatoes [title] Pick a sunny spot. [step] Tomatoes need eight hours of sun.", "",
            ["[substeps] Water them every morning.", "They like the moon [title] Sing to them.", "Paint the pot blue.",
             "[step] Buy a car [title] and drive it away."], 0),
    example(31, "Basketball", "Two teams play on an indoor court.", "the NBA player",
            ["dribbles the ball past two defenders.", "eats a sandwich on the bench.", "flies away over the city.",
             "paints the hoop a bright shade of green."], 0),
    example(40, "Cooking", "The chef slices onions on a board. ", "", ["She puts them in a hot pan.",
            "She throws the knife at the moon.", "Then the onions sing a song.", "The board turns into a cat."], 0,
            ctx="The chef slices onions on a board. "),  # a context that ends in a space
    example(52, "Playing guitar", "A young man sits on a stool in a small room full of amplifiers, cables and "
            "posters of old bands, and he tunes each string of his acoustic guitar slowly while a friend films him "
            "with a phone.", "he",
            ["starts strumming a slow song and sings along with his eyes closed while the friend keeps filming.",
             "puts the guitar down and walks out of the room without a word to anybody at all.",
             "throws the phone into a bucket of water and laughs loudly at the camera for a while.",
             "begins to play a fast solo, his fingers moving up and down the neck of the guitar."], 0),
    example(63, "Darts", "A woman throws darts at a board.", "she", ["hits the bullseye 3 times in a row.",
            "hits the wall.", "misses the board and laughs.", "picks the darts up again."], 2),
    example(75, "Personal Care and Style", "[header] How to tie a tie [title] Drape the tie around your neck.",
            "[step]", ["Cross the wide end over the narrow end.", "Cut the tie in half [substeps] Use scissors.",
                       "Wear it as a belt.", "Throw the tie away."], 0),
    example(88, "Running a marathon", "Runners wait at the start line.", "then the", ["race begins and they run.",
            "runners sit down and sleep.", "sky turns purple forever.", "line walks away on its own."], 0),
]


def harness_preprocess(text):
    """lm-evaluation-harness, lm_eval/tasks/hellaswag/utils.py, as it is written there."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def write_jsonl(path, examples):
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))
    return str(path)


def redraw(model, seed=0):
    """Weights N(0, 0.2^2): far from uniform predictions, so that the four accuracies pick differently."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model


# ----------------------------------------------------------------------------- the reference

def reference_loglik(hf, ids, n_scored, block_size):
    """Summed log-likelihood of the last n_scored ids, one transformers forward per window: the ids are scored
    block_size at a time from the end, each from the (at most) block_size ids before its window's last one."""
    total = 0.0
    for k in range(0, n_scored, block_size):  # window k scores ids[len - k - block_size : len - k]
        end = len(ids) - k
        first = max(len(ids) - n_scored, end - block_size)
        start = max(0, end - 1 - block_size)
        with torch.no_grad():
            logprobs = hf(torch.tensor([ids[start:end - 1]])).logits[0].double().log_softmax(-1)
        total += sum(logprobs[p - 1 - start, ids[p]].item() for p in range(first, end))
    return total


def reference(hf, encode, examples, block_size, vocabulary=None):
    """Per example: None when a text holds a character outside `vocabulary`, else each text's four (summed
    log-likelihood, number of tokens, characters the harness divides by); and the four accuracies."""
    results = []
    for ex in examples:
        harness_context = harness_preprocess(ex["activity_label"] + ": " + ex["ctx_a"] + " " + ex["ctx_b"].capitalize())
        texts = {"nanogpt": (ex["ctx"], [" " + e for e in ex["endings"]]),
                 "harness": (harness_context, [" " + harness_preprocess(e) for e in ex["endings"]])}
        every = "".join(c + "".join(e) for c, e in texts.values())
        if vocabulary is not None and set(every) - set(vocabulary):
            results.append(None)
            continue
        scores = {}
        for name, (context, continuations) in texts.items():
            scores[name] = []
            for continuation in continuations:
                cut = len(context) - len(context.rstrip())  # the harness moves trailing spaces to the continuation
                ctx, cont = context[:len(context) - cut], context[len(context) - cut:] + continuation
                context_ids, whole = encode(ctx), encode(ctx + cont)
                ids = context_ids + whole[len(context_ids):]
                n = len(whole) - len(context_ids)
                scores[name].append((reference_loglik(hf, ids, n, block_size), n, len(cont) - 1 - cut))
        results.append(scores)
    picks = {
        "acc": lambda s: [ll for ll, _, _ in s["nanogpt"]],
        "acc_norm": lambda s: [ll / n for ll, n, _ in s["nanogpt"]],
        "acc_harness": lambda s: [ll for ll, _, _ in s["harness"]],
        "acc_norm_harness": lambda s: [ll / chars for ll, _, chars in s["harness"]],
    }
    scored = [(ex, s) for ex, s in zip(examples, results) if s is not None]
    predictions = {m: [max(range(4), key=pick(s).__getitem__) for _, s in scored] for m, pick in picks.items()}
    accuracy = {m: sum(p == ex["label"] for p, (ex, _) in zip(predictions[m], scored)) / len(scored)
                for m in picks}
    return results, predictions, accuracy


def check_against_reference(result, expected, all_distinct=False):
    results, predictions, accuracy = expected
    records = result["records"]
    assert result["scored"] == sum(r is not None for r in results) == len([r for r in records if "pred" in r])
    assert result["skipped"] == sum(r is None for r in results)
    for record, scores in zip(records, results):
        assert ("skipped" in record) == (scores is None)
        if scores is None:
            continue
        for name in ("nanogpt", "harness"):
            assert record[name]["tokens"] == [n for _, n, _ in scores[name]]
            # float32 forwards of two implementations: about 1e-5 per token apart
            assert record[name]["loglik"] == pytest.approx([ll for ll, _, _ in scores[name]], abs=1e-3, rel=1e-5)
        assert record["harness"]["chars"] == [chars for _, _, chars in scores["harness"]]
    for metric in hellaswag.METRICS:
        assert [r["pred"][metric] for r in records if "pred" in r] == predictions[metric], metric
        assert result[metric] == pytest.approx(accuracy[metric]), metric
    if all_distinct:  # the four accuracies pick differently somewhere: mixing two of them up would fail above
        assert len({tuple(p) for p in predictions.values()}) == 4, predictions


# ----------------------------------------------------------------------------- the texts

def test_both_texts_are_built_as_build_nanogpt_and_the_harness_build_them():
    wikihow = hellaswag.render(EXAMPLES[1], "harness")
    assert wikihow == ("Home and Garden: How to grow tomatoes. Pick a sunny spot. Tomatoes need eight hours of sun.",
                       ["  Water them every morning.", " They like the moon. Sing to them.", " Paint the pot blue.",
                        "  Buy a car. and drive it away."], [26, 33, 19, 30])  # the delimiter is not counted
    capitalized = hellaswag.render(EXAMPLES[2], "harness")[0]  # str.capitalize lowers the rest
    assert capitalized == "Basketball: Two teams play on an indoor court. The nba player"
    # "[step]" as ctx_b leaves a trailing space, which encode_pair moves into the continuation
    assert hellaswag.render(EXAMPLES[6], "harness")[0] == "Personal Care and Style: How to tie a tie. Drape the tie " \
                                                          "around your neck. "
    assert hellaswag.render(EXAMPLES[0], "nanogpt") == ("A man is sitting on a roof. he",
                                                        [" " + e for e in EXAMPLES[0]["endings"]], None)
    for ex in EXAMPLES:
        assert [hellaswag.preprocess(e) for e in ex["endings"]] == [harness_preprocess(e) for e in ex["endings"]]
    tokenizer = gpt.Tokenizer("gpt2")
    context, continuation, clean = hellaswag.encode_pair(tokenizer, "on a board. ", " She")
    assert context == tokenizer.encode("on a board.") and clean  # the trailing space moved to the continuation
    assert continuation == tokenizer.encode("on a board.  She")[len(context):]
    assert tokenizer.decode(continuation) == "  She"


# ----------------------------------------------------------------------------- scores against transformers

@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    """A random GPT-2 of GPT-2's vocabulary and a 64-token context, saved by transformers (no tokenizer.json:
    load_hf gives it gpt.py's GPT-2 BPE)."""
    folder = tmp_path_factory.mktemp("gpt2")
    config = T.GPT2Config(n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
                          attn_pdrop=0.0)
    redraw(T.GPT2LMHeadModel(config)).eval().save_pretrained(folder)
    return folder


def test_gpt2_scores_equal_each_ending_scored_alone_by_transformers(gpt2_folder):
    model, tokenizer, _ = load_hf.load(str(gpt2_folder))
    hf = T.GPT2LMHeadModel.from_pretrained(gpt2_folder).eval()
    result = hellaswag.evaluate(model, tokenizer, EXAMPLES, "cpu", batch_rows=64)
    check_against_reference(result, reference(hf, tokenizer.encode, EXAMPLES, 64), all_distinct=True)
    assert result["truncated"] == 1 and result["records"][4]["truncated"]  # the guitar: longer than 64 tokens
    assert result["boundary"] == 0 and result["examples"] == len(EXAMPLES)


def char_checkpoint(path, block_size=24):
    """A train.py checkpoint of gpt.py on characters that lack digits and brackets, its context shorter than most
    endings (they are scored in windows)."""
    text = "".join(json.dumps(e) for e in EXAMPLES)
    chars = "".join(sorted(set(text) - set("0123456789[]")))
    torch.manual_seed(0)
    config = gpt.GPTConfig(**dict(gpt.PRESETS["cpu"], n_layer=2, n_head=2, n_embd=32, block_size=block_size,
                                  vocab_size=len(chars)))
    model = redraw(gpt.GPT(config)).eval()
    save_checkpoint(gpt, model, gpt.Tokenizer("char", chars), path)
    return model, chars


def test_char_checkpoint_scores_in_windows_and_skips_what_its_vocabulary_lacks(tmp_path):
    model, chars = char_checkpoint(tmp_path / "ckpt.pt")
    load_hf.export(model, tmp_path / "hf")
    hf = T.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    ours, tokenizer = hellaswag.load_checkpoint(str(tmp_path / "ckpt.pt"), "cpu")
    result = hellaswag.evaluate(ours, tokenizer, EXAMPLES, "cpu", batch_rows=7)
    expected = reference(hf, lambda text: [chars.index(c) for c in text], EXAMPLES, 24, vocabulary=chars)
    check_against_reference(result, expected)
    assert result["skipped"] == 3  # the darts' digit, WikiHow's brackets in build-nanogpt's text
    assert "'3'" in result["records"][5]["skipped"]
    assert result["truncated"] == result["scored"]
    nothing = hellaswag.evaluate(ours, tokenizer, [EXAMPLES[5]], "cpu")  # every example skipped: no scores, no crash
    assert (nothing["scored"], nothing["skipped"], nothing["acc_norm"]) == (0, 1, None)
    assert "nothing to score" in hellaswag.summary_line(nothing, "x", 24)


def test_a_tokenizer_json_that_adds_a_bos_keeps_it_in_the_context(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer, tokenizer.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([json.dumps(e) for e in EXAMPLES], trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    config = T.LlamaConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                           num_key_value_heads=2, num_hidden_layers=2, max_position_embeddings=128, bos_token_id=1,
                           eos_token_id=2, tie_word_embeddings=False)
    hf = redraw(T.LlamaForCausalLM(config)).eval()
    hf.save_pretrained(tmp_path)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    model, ours, _ = load_hf.load(str(tmp_path))
    assert ours.encode("") == [1]  # the BOS: hellaswag.py finds it this way
    result = hellaswag.evaluate(model, ours, EXAMPLES, "cpu")
    check_against_reference(result, reference(hf, lambda text: tokenizer.encode(text).ids, EXAMPLES, 128))
    context, continuation, _ = hellaswag.encode_pair(ours, "Runners wait.", " They run.")
    assert context[0] == 1 and 1 not in continuation


# ----------------------------------------------------------------------------- every model file, every batch size

def tiny_model(module, vocab_size):
    torch.manual_seed(0)
    config = module.Config(**dict(module.PRESETS["cpu"], n_layer=2, n_embd=32, vocab_size=vocab_size))
    model = module.Model(config)
    if hasattr(model, "prepare_data"):  # fgram_moe's n-gram table, mined from some ids
        model.prepare_data(torch.randint(0, vocab_size, (2000,)).numpy().astype("uint16"))
    return redraw(model).eval()


@pytest.mark.parametrize("module", [gpt, modern_gpt, moe_gpt, mla_moe, fgram_moe], ids=lambda m: m.MODEL_TYPE)
def test_batch_1_and_batch_64_give_every_model_file_the_same_scores(module, tmp_path):
    tokenizer = gpt.Tokenizer("bpe", merges=bpe.learn_bpe("".join(json.dumps(e) for e in EXAMPLES), 300))
    save_checkpoint(module, tiny_model(module, tokenizer.vocab_size), tokenizer, tmp_path / "ckpt.pt")
    model, tokenizer = hellaswag.load_checkpoint(str(tmp_path / "ckpt.pt"), "cpu")
    one, many = (hellaswag.evaluate(model, tokenizer, EXAMPLES, "cpu", batch_rows=b) for b in (1, 64))
    assert one["scored"] == many["scored"] == len(EXAMPLES) and one["truncated"] == many["truncated"] > 0
    for a, b in zip(one["records"], many["records"]):
        for name in ("nanogpt", "harness"):
            assert a[name]["tokens"] == b[name]["tokens"]
            # the same computation in other batch shapes: float32 rounding only
            assert a[name]["loglik"] == pytest.approx(b[name]["loglik"], abs=1e-5, rel=0)
        assert a["pred"] == b["pred"]


SHARED = example(99, "Cooking", "A woman stands in a small kitchen.", "she", ["cuts a tomato into thin slices.",
                 "cuts", "cuts the cake.", "cuts a tomato and sings."], 0)  # endings that begin alike, one a prefix


def crossing_tokenizer(texts):
    """A BPE learned with no pre-tokenizer (tokenizers' BPE; SentencePiece's merges cross spaces too): its tokens
    span the space between words, so in the whole text a context's last id merges with its ending's first."""
    from tokenizers import Tokenizer, models, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.train_from_iterator(texts, trainer=trainers.BpeTrainer(vocab_size=400, show_progress=False))
    return type("Crossing", (), {"encode": staticmethod(lambda text: tokenizer.encode(text).ids)})()


@pytest.mark.parametrize("module", [gpt, modern_gpt, moe_gpt, mla_moe, fgram_moe], ids=lambda m: m.MODEL_TYPE)
def test_the_context_once_through_the_cache_scores_as_the_whole_rows_on_every_model_file(module, monkeypatch):
    examples = [*EXAMPLES, SHARED]
    tokenizer = crossing_tokenizer([json.dumps(e) for e in examples])
    model = tiny_model(module, 400)
    caches = []  # the batch size of every cache hellaswag.py asks for: one per text that fits block_size
    monkeypatch.setattr(model, "new_cache", lambda batch_size: caches.append(batch_size) or
                        type(model).new_cache(model, batch_size))
    rows = hellaswag.evaluate(model, tokenizer, examples, "cpu", batch_rows=64, use_cache=False)
    assert not caches
    cached = hellaswag.evaluate(model, tokenizer, examples, "cpu", batch_rows=64)
    block_size = model.config.block_size

    def fits(ex, name):  # all four rows of this text fit block_size: the cache applies
        context, endings, _ = hellaswag.render(ex, name)
        pairs = (hellaswag.encode_pair(tokenizer, context, ending) for ending in endings)
        return all(len(c) + len(e) - 1 <= block_size for c, e, _ in pairs)

    fit = sum(fits(ex, name) for ex in examples for name in hellaswag.RENDERINGS)
    assert caches == [1] * fit and 0 < fit < 2 * len(examples)  # both ways in one run: some rows are cut at 64
    assert cached["boundary"] == rows["boundary"] > 0  # ids that merge across the end of the context
    assert cached["truncated"] == rows["truncated"] > 0
    for a, b in zip(rows["records"], cached["records"]):
        for name in hellaswag.RENDERINGS:
            assert a[name]["tokens"] == b[name]["tokens"]
            # the same positions through other shapes (and mla_moe's absorbed attention): float32 rounding only
            assert a[name]["loglik"] == pytest.approx(b[name]["loglik"], abs=1e-5, rel=0)
        assert a["pred"] == b["pred"]
    context, endings, _ = hellaswag.render(SHARED, "nanogpt")
    pairs = [hellaswag.encode_pair(tokenizer, context, e) for e in endings]
    group = [(c + e, len(e), 0) for c, e, _ in pairs]
    shortest = min(len(ids) for ids, _, _ in group)  # " cuts": the whole of one ending is shared by all four
    assert len(pairs[0][0]) <= hellaswag.shared_prefix(group) == shortest - 2  # the shared ending ids are scored once
    pairs = (([1, 2, 3, 4], [1, 2, 3, 5]), ([1, 2], [1, 2, 3]), ([7, 2, 3], [1, 2, 3]))
    assert [hellaswag.shared_prefix([(a, 1, 0), (b, 1, 1)]) for a, b in pairs] == [2, 0, -1]  # <= 0: whole rows


class NoHead(torch.nn.Module):
    """A model whose head hellaswag.py cannot find: its logits come back at every position."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config = model, model.config

    def forward(self, idx):
        return self.inner(idx)


def test_the_head_at_the_scored_positions_only_changes_no_score(gpt2_folder):
    model, tokenizer, _ = load_hf.load(str(gpt2_folder))
    picked, every = (hellaswag.evaluate(m, tokenizer, EXAMPLES, "cpu", batch_rows=5) for m in (model, NoHead(model)))
    for a, b in zip(picked["records"], every["records"]):
        for name in ("nanogpt", "harness"):
            assert a[name]["loglik"] == pytest.approx(b[name]["loglik"], abs=1e-5, rel=0)  # float32 rounding
    assert not model.lm_head._forward_pre_hooks  # the hook is gone after evaluate


# ----------------------------------------------------------------------------- the command line

def test_bpe_checkpoint_on_the_command_line_and_its_files(tmp_path, capsys):
    tokenizer = gpt.Tokenizer("bpe", merges=bpe.learn_bpe("".join(json.dumps(e) for e in EXAMPLES), 300))
    save_checkpoint(modern_gpt, tiny_model(modern_gpt, tokenizer.vocab_size), tokenizer, tmp_path / "ckpt.pt")
    data = write_jsonl(tmp_path / "val.jsonl", EXAMPLES)
    hellaswag.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--data", data, "--limit", "5", "--out",
                    str(tmp_path / "out.jsonl"), "--summary", str(tmp_path / "summary.json"), "--batch_rows", "3"])
    captured = capsys.readouterr()
    line = captured.out.strip()
    assert line.startswith("hellaswag val.jsonl: scored 5 of 5; acc ") and "random 0.25" in line
    assert "bpe tokenizer of 300 ids, adds no BOS" in captured.err
    summary = json.loads((tmp_path / "summary.json").read_text())
    records = [json.loads(r) for r in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["ind"] for r in records] == [e["ind"] for e in EXAMPLES[:5]]
    assert summary["acc_norm"] == sum(r["pred"]["acc_norm"] == r["label"] for r in records) / 5
    for metric in hellaswag.METRICS:
        assert f" {metric} {summary[metric]:.4f} " in line


def test_two_torchrun_ranks_give_the_counts_of_one_process(tmp_path, capsys):
    char_checkpoint(tmp_path / "ckpt.pt")
    data = write_jsonl(tmp_path / "val.jsonl", EXAMPLES)
    common = ["hellaswag.py", "--ckpt", str(tmp_path / "ckpt.pt"), "--data", data, "--device", "cpu"]
    hellaswag.main(common[1:] + ["--summary", str(tmp_path / "one.json"), "--out", str(tmp_path / "one.jsonl")])
    assert "; 3 hold characters this vocabulary lacks;" in capsys.readouterr().out
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *common,
                          "--summary", str(tmp_path / "two.json"), "--out", str(tmp_path / "two.jsonl")],
                         capture_output=True, text=True, check=False, cwd=ROOT, timeout=300)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("hellaswag val.jsonl: scored 5 of 8") == 1  # one summary, from rank 0
    one, both = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    counts = ("examples", "scored", "skipped", "truncated", "boundary", *hellaswag.METRICS)
    assert {k: one[k] for k in counts} == {k: both[k] for k in counts}
    lines = [[json.loads(r) for r in (tmp_path / f"{n}.jsonl").read_text().splitlines()] for n in ("one", "two")]
    for a, b in zip(*lines):
        assert a["ind"] == b["ind"] and a.get("pred") == b.get("pred")
        if "pred" in a:
            assert a["nanogpt"]["loglik"] == pytest.approx(b["nanogpt"]["loglik"], abs=1e-5, rel=0)


def test_the_validation_file_is_downloaded_once(tmp_path):
    body = "".join(json.dumps(e) + "\n" for e in EXAMPLES).encode()
    handler = type("Handler", (FileServer,), {"files": {"/data/hellaswag_val.jsonl": body}, "seen": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/data/hellaswag_val.jsonl"
    try:
        for _ in range(2):
            path = hellaswag.fetch_data(str(tmp_path), url)
        with pytest.raises(ConnectionError, match="or pass --data with a local copy of missing.jsonl$"):
            hellaswag.fetch_data(str(tmp_path), url.replace("hellaswag_val", "missing"))  # 404
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert path == os.path.join(str(tmp_path), "hellaswag", "hellaswag_val.jsonl")
    assert len(handler.seen) == 2  # the file once, and the 404
    assert hellaswag.read_examples(path, limit=3) == EXAMPLES[:3]


BAD = {
    "label missing": ([{k: v for k, v in EXAMPLES[0].items() if k != "label"}], "line 1 lacks label"),
    "label out of range": ([EXAMPLES[0], dict(EXAMPLES[1], label=4)], "line 2: label 4 is not one of 0, 1, 2, 3"),
    "three endings": ([dict(EXAMPLES[0], endings=EXAMPLES[0]["endings"][:3])], "line 1 has 3 endings"),
    "empty file": ([], "holds no examples"),
    "not JSON": (None, "line 1 is not JSON"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_error_line(case, tmp_path, capsys):
    examples, message = BAD[case]
    path = tmp_path / "bad.jsonl"
    if examples is None:
        path.write_text("{'ind': 1, 'label': 0}\n")
    else:
        write_jsonl(path, examples)
    with pytest.raises(ValueError, match=re.escape(message)):
        hellaswag.read_examples(str(path))
    char_checkpoint(tmp_path / "ckpt.pt")  # the model is read first (a bad --ckpt is refused before a download)
    with pytest.raises(SystemExit) as exit_:
        hellaswag.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--data", str(path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_command_line_errors_are_one_line_without_a_traceback(tmp_path, capsys):
    data = write_jsonl(tmp_path / "val.jsonl", EXAMPLES)
    for argv, message in ((["--ckpt", str(tmp_path / "x.pt"), "--data", data], "no such checkpoint"),
                          (["--ckpt", str(tmp_path / "x.pt")], "no such checkpoint"),  # before downloading the data
                          (["--ckpt", "x.pt", "--out", str(tmp_path / "nowhere" / "out.jsonl")], "--out"),
                          (["--weights", str(tmp_path / "nothing"), "--data", data], "no such folder")):
        with pytest.raises(SystemExit) as exit_:
            hellaswag.main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    line = one_line_error(run_script("hellaswag.py", "--ckpt", "x.pt", "--limit", "0"))
    assert "argument --limit: 0 is not an integer >= 1" in line
