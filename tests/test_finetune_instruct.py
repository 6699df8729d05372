"""finetune_instruct.py: the prompt, the collate masks, LoRA, ROUGE-L, stopping, an end-to-end run."""

import itertools
import json
import math
import os

import pytest
import torch
from cli_checks import one_line_error, run_script
from model_checks import main_error

import finetune_instruct as instruct
import gpt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "data", "instruction-data.json")
E = 50256  # <|endoftext|>
I = -100  # ignored target


def entries(n, **changes):
    """n valid entries (input empty); changes={"3": {"output": None}} alters entry 3."""
    made = [{"instruction": f"Repeat {i}.", "input": "", "output": f"{i}"} for i in range(n)]
    for number, change in changes.items():
        made[int(number)].update(change)
    return json.dumps(made)


@pytest.mark.parametrize(
    "content, expected",
    [
        pytest.param(
            "[1, 2, 3]", ": entry 0 is a number, not an object with instruction, input, output", id="not-objects"
        ),
        pytest.param(
            entries(12, **{"3": {"output": None}}),
            ": entry 3 has null as 'output': instruction, input and output must be strings (input may be \"\")",
            id="null-output",
        ),
        pytest.param(
            entries(12, **{"0": {"instruction": None}}), ": entry 0 has null as 'instruction'", id="null-instruction"
        ),
        pytest.param(
            "[]",
            " holds 0 entries: the 85/10/5 split needs at least 10 to leave one in each of train, validation and test",
            id="empty-list",
        ),
        pytest.param(entries(5), " holds 5 entries: the 85/10/5 split needs at least 10", id="five-entries"),
        pytest.param('[{"instruction": "Say hi.",', " is not UTF-8 JSON (Expecting property name", id="invalid-json"),
        pytest.param(
            '{"instruction": "Say hi.", "input": "", "output": "Hi."}',
            " holds an object: expected a list of entries",
            id="object",
        ),
    ],
)
def test_unusable_data_is_refused_in_one_line_before_training(tmp_path, content, expected):
    data = tmp_path / "bad.json"
    data.write_text(content, encoding="utf-8")
    out = tmp_path / "out"
    result = run_script(
        "finetune_instruct.py", "--data", str(data), "--epochs", "1", "--max_new_tokens", "1", "--out_dir", str(out)
    )
    line = one_line_error(result)
    assert line.startswith(f"error: {data}") and expected in line, line
    assert result.stdout == "" and not out.exists()  # nothing trained, nothing written


@pytest.mark.parametrize("option, value, expected", [
    ("--epochs", "0", "argument --epochs: 0 is not an integer >= 1"),
    ("--batch_size", "-2", "argument --batch_size: -2 is not an integer >= 1"),
    ("--lr", "-0.0001", "argument --lr: -0.0001 is not a finite number > 0"),
    ("--lr", "nan", "argument --lr: nan is not a finite number > 0"),
    ("--weight_decay", "-1", "argument --weight_decay: -1 is not a finite number >= 0"),
    ("--dropout", "-0.1", "argument --dropout: -0.1 is not a finite number in [0, 1)"),
    ("--lora_rank", "-1", "argument --lora_rank: -1 is not an integer >= 0"),
    ("--lora_alpha", "0", "argument --lora_alpha: 0 is not a finite number > 0"),
    ("--max_new_tokens", "-1", "argument --max_new_tokens: -1 is not an integer >= 0"),
    ("--seed", "2e3", "argument --seed: invalid int value: '2e3'"),  # argparse's own, in one line too
    ("--lora", "2", "unrecognized arguments: --lora 2"),  # no abbreviations: --lora is not --lora_rank
])
def test_numeric_options_are_checked_for_their_range_before_anything_runs(option, value, expected, capsys):
    assert main_error(instruct.main, [option, value], capsys) == "error: " + expected


def test_entries_are_checked_where_they_are_read(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(entries(10, **{"2": {"input": ""}}))
    assert [len(part) for part in instruct.split(instruct.read_entries(str(path)))] == [8, 1, 1]  # the fewest
    path.write_text(entries(10, **{"2": {"input": None}}))
    with pytest.raises(ValueError, match="entry 2 has null as 'input'"):
        instruct.read_entries(str(path))
    path.write_text(entries(10, **{"9": {"output": ["a"]}}))
    with pytest.raises(ValueError, match="entry 9 has a list as 'output'"):
        instruct.read_entries(str(path))
    path.write_text(entries(9))
    with pytest.raises(ValueError, match="holds 9 entries"):
        instruct.read_entries(str(path))
    path.write_bytes(b"\xff[]")
    with pytest.raises(ValueError, match=f"^{path} is not UTF-8 JSON"):
        instruct.read_entries(str(path))
    for n in range(10, 5000):  # from 10 entries on every split is non-empty
        assert all(instruct.split(list(range(n)))), n


def test_alpaca_prompt_with_and_without_input():
    entry = {"instruction": "Convert to passive voice.", "input": "The cat chased the mouse.", "output": "x"}
    assert instruct.format_prompt(entry) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nConvert to passive voice.\n\n### Input:\nThe cat chased the mouse.\n\n### Response:\n"
    )
    entry["input"] = ""
    assert instruct.format_prompt(entry) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nConvert to passive voice.\n\n### Response:\n"
    )


def test_collate_pads_keeps_the_first_endoftext_and_masks_the_rest():
    batch = [([1, 2, 3, 4, 5], 3), ([6, 7], 1)]  # (ids, prompt length)
    x, y = instruct.collate(batch, max_length=100)
    assert x.tolist() == [[1, 2, 3, 4, 5], [6, 7, E, E, E]]
    assert y.tolist() == [[2, 3, 4, 5, E], [7, E, I, I, I]]
    x, y = instruct.collate(batch, max_length=100, mask_prompt=True)
    # row 0: targets 2 and 3 are prompt tokens; row 1: a 1-token prompt has no prompt target
    assert y.tolist() == [[I, I, 4, 5, E], [7, E, I, I, I]]
    x, y = instruct.collate(batch, max_length=3)
    assert x.tolist() == [[1, 2, 3], [6, 7, E]] and y.tolist() == [[2, 3, 4], [7, E, I]]


def test_masked_targets_are_left_out_of_the_loss():
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(block_size=8, vocab_size=E + 1, n_layer=1, n_head=2, n_embd=8))
    x, y = instruct.collate([([1, 2, 3, 4, 5], 3), ([6, 7], 1)], max_length=8, mask_prompt=True)
    logits, loss = model(x, y)
    kept = [(row, col) for row in range(2) for col in range(5) if y[row, col] != I]
    expected = torch.stack([-torch.log_softmax(logits[r, c], -1)[y[r, c]] for r, c in kept]).mean()
    assert len(kept) == 5 and torch.allclose(loss, expected, atol=1e-5)


def test_split_85_10_5_of_the_real_file():
    entries = instruct.read_entries(DATA)
    train, val, test = instruct.split(entries)
    assert (len(entries), len(train), len(val), len(test)) == (1100, 935, 55, 110)
    assert train + val + test == entries[:935] + entries[1045:] + entries[935:1045]


def lcs_by_brute_force(a, b):
    """The longest common subsequence length by trying every subsequence of a (short inputs only)."""
    for size in range(len(a), 0, -1):
        for picked in itertools.combinations(a, size):
            remaining = iter(b)
            if all(word in remaining for word in picked):  # picked is a subsequence of b
                return size
    return 0


def test_rouge_l_f1():
    assert instruct.rouge_l_f1("The cat on the mat.", "the cat sat on the mat") == pytest.approx(10 / 11)
    assert instruct.rouge_l_f1("Same words, SAME!", "same words same") == 1.0
    assert instruct.rouge_l_f1("nothing shared", "other text") == 0.0
    assert instruct.rouge_l_f1("", "reference") == 0.0
    torch.manual_seed(0)
    for _ in range(20):
        a = [f"w{i}" for i in torch.randint(0, 4, (6,)).tolist()]
        b = [f"w{i}" for i in torch.randint(0, 4, (7,)).tolist()]
        lcs = lcs_by_brute_force(a, b)
        expected = 2 * lcs / (len(a) + len(b))  # F1 = 2PR/(P+R) with P = lcs/|a|, R = lcs/|b|
        assert instruct.rouge_l_f1(" ".join(a), " ".join(b)) == pytest.approx(expected)


def test_lora_starts_at_the_base_model_trains_only_adapters_and_merges_exactly():
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16, bias=True))
    idx = torch.randint(0, 50, (2, 10))
    before = model(idx)[0]
    names = set(model.state_dict())
    instruct.add_lora(model, rank=4, alpha=8)
    assert torch.equal(model(idx)[0], before)  # B = 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(trainable) == 2 * 4 * 2 and all(n.endswith((".A", ".B")) for n in trainable)  # 4 Linears x 2 blocks
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(".B"):
                p.normal_()
    adapted = model(idx)[0]
    assert not torch.allclose(adapted, before)
    layer = model.h[0].attn.c_attn
    x = torch.randn(3, 16)
    assert torch.allclose(layer(x), layer.linear(x) + 2.0 * x @ (layer.B @ layer.A).T, atol=1e-5)  # alpha/rank = 2
    instruct.merge_lora(model)
    assert set(model.state_dict()) == names
    assert torch.allclose(model(idx)[0], adapted, atol=1e-4)


class ScriptedModel:
    """generate() appends the next tokens of a fixed script, as a greedy model would."""

    def __init__(self, script):
        self.script, self.calls = script, 0

    def generate(self, ids, max_new_tokens, temperature):
        self.calls += 1
        done = ids.size(1) - self.prompt_length
        return torch.cat([ids, torch.tensor([self.script[done : done + max_new_tokens]])], dim=1)


def test_response_stops_at_endoftext_or_max_new_tokens():
    tok = gpt.Tokenizer("gpt2")
    entry = {"instruction": "Say hi.", "input": "", "output": "Hi."}
    answer = tok.encode(" Hello there.")
    model = ScriptedModel(answer + [E] + tok.encode(" junk") * 40)
    model.prompt_length = len(tok.encode(instruct.format_prompt(entry)))
    assert instruct.respond(model, tok, entry, max_new_tokens=100, device="cpu", chunk=2) == "Hello there."
    assert model.calls == math.ceil((len(answer) + 1) / 2)  # stopped with the chunk that held <|endoftext|>
    model = ScriptedModel(tok.encode(" one two three four five six"))
    model.prompt_length = len(tok.encode(instruct.format_prompt(entry)))
    assert instruct.respond(model, tok, entry, max_new_tokens=3, device="cpu", chunk=2) == "one two three"


@pytest.mark.parametrize("options", [["--lora_rank", "2", "--lora_alpha", "4", "--lr", "1e-2"], ["--mask_prompt"]])
def test_end_to_end_on_a_subset(tmp_path, capsys, options):
    with open(DATA, encoding="utf-8") as f:
        entries = json.load(f)[:20]
    (tmp_path / "data.json").write_text(json.dumps(entries))
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(block_size=96, n_layer=1, n_head=2, n_embd=16))
    ckpt = str(tmp_path / "base.pt")
    torch.save(
        {"model_type": "gpt", "config": vars(model.config), "model": model.state_dict(), "tokenizer": {"kind": "gpt2"}},
        ckpt,
    )
    instruct.main(
        [
            "--init",
            ckpt,
            "--data",
            str(tmp_path / "data.json"),
            "--epochs",
            "1",
            "--batch_size",
            "8",
            "--max_new_tokens",
            "4",
            "--out_dir",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            *options,
        ]
    )
    printed = capsys.readouterr().out
    assert "20 entries -> train 17, val 1, test 2" in printed
    assert "val loss" in printed and "ROUGE-L F1" in printed
    written = json.loads((tmp_path / "out" / "test_responses.json").read_text())
    assert [e["instruction"] for e in written] == [e["instruction"] for e in entries[17:19]]
    assert all(isinstance(e["model_response"], str) for e in written)
    tuned, _, _ = gpt.load_checkpoint(str(tmp_path / "out" / "ckpt.pt"))  # a plain gpt checkpoint (LoRA merged)
    assert not torch.equal(tuned.h[0].attn.c_attn.weight, model.h[0].attn.c_attn.weight)
