"""finetune_spam.py: reading and balancing the real file, splits, padding, accuracy, an end-to-end run."""

import os
from collections import Counter

import pytest
import torch
from cli_checks import one_line_error, run_script
from model_checks import main_error

import finetune_spam as spam
import gpt
import load_gpt2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "data", "sms_spam.tsv")


FIVE_OF_EACH = "".join(f"ham\tsee you at {i}\nspam\tWIN prize {i} now\n" for i in range(5))  # the fewest usable


def tiny_classifier(vocab_size=50257):
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(block_size=32, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=16))
    return spam.add_classification_head(model).eval()


def test_all_5574_lines_are_read_and_balanced_747_747():
    examples = spam.read_sms_spam(DATA)
    assert len(examples) == 5574
    assert sum(label for label, _ in examples) == 747
    balanced = spam.balance(examples, seed=123)
    assert [label for label, _ in balanced].count(0) == 747
    assert [label for label, _ in balanced].count(1) == 747
    # every spam message once; ham drawn without replacement (the file itself has duplicates)
    assert Counter(e for e in balanced if e[0] == 1) == Counter(e for e in examples if e[0] == 1)
    assert Counter(e for e in balanced if e[0] == 0) <= Counter(e for e in examples if e[0] == 0)
    assert spam.balance(examples, seed=123) == balanced != spam.balance(examples, seed=1)


def test_split_70_10_20_covers_every_message_once():
    balanced = spam.balance(spam.read_sms_spam(DATA), seed=123)
    train, val, test = spam.split(balanced)
    assert (len(train), len(val), len(test)) == (1045, 149, 300)  # chapter 6's sizes
    assert train + val + test == balanced


def test_quotes_and_tabs_inside_messages_are_kept(tmp_path):
    path = tmp_path / "sms.tsv"
    path.write_text('ham\t"Hi," she said\nspam\tWIN "big" now\tcall\n\n' + FIVE_OF_EACH, encoding="utf-8")
    assert spam.read_sms_spam(str(path))[:2] == [(0, '"Hi," she said'), (1, 'WIN "big" now\tcall')]
    path.write_text("ham\tok\nspan\toops\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: expected 'ham' or 'spam'"):
        spam.read_sms_spam(str(path))


@pytest.mark.parametrize(
    "content, expected",
    [
        pytest.param(
            "spam\tWIN now\n" * 8,
            "holds only spam messages: a classifier needs both ham and spam, at least 5 of each",
            id="one-class",
        ),
        pytest.param("", "holds no messages: each line is 'ham' or 'spam', a tab, then the message", id="empty"),
        pytest.param(
            "ham\tsee you\nspam\tWIN now\n",
            "holds 1 ham and 1 spam messages: too few for non-empty train, "
            "validation and test sets (70/10/20); it needs at least 5 of each",
            id="two-lines",
        ),
        pytest.param(
            FIVE_OF_EACH + "no tab here\n",
            "line 11: expected 'ham' or 'spam', a tab, then the message; found 'no tab here'",
            id="no-tab",
        ),
        pytest.param(FIVE_OF_EACH + "SPAM\tWIN\n", "line 11: expected 'ham' or 'spam'", id="unknown-label"),
    ],
)
def test_unusable_data_is_refused_in_one_line_before_training(tmp_path, content, expected):
    data = tmp_path / "bad.tsv"
    data.write_text(content, encoding="utf-8")
    result = run_script("finetune_spam.py", "--data", str(data), "--epochs", "1", "--out", str(tmp_path / "c.pt"))
    line = one_line_error(result)
    assert line.startswith(f"error: {data}") and expected in line, line
    assert result.stdout == "" and not (tmp_path / "c.pt").exists()  # nothing trained, nothing written


def test_five_messages_of_each_class_are_the_fewest_that_split(tmp_path):
    path = tmp_path / "sms.tsv"
    path.write_text(FIVE_OF_EACH + "ham\tone more\n", encoding="utf-8")
    examples = spam.read_sms_spam(str(path))
    assert [len(part) for part in spam.split(spam.balance(examples, seed=0))] == [7, 1, 2]
    path.write_text(FIVE_OF_EACH.replace("spam\tWIN prize 4 now\n", ""), encoding="utf-8")
    with pytest.raises(ValueError, match="holds 5 ham and 4 spam messages: too few"):
        spam.read_sms_spam(str(path))
    for n in range(10, 2000, 2):  # every balanced set from 10 messages on splits into three non-empty parts
        assert all(spam.split(list(range(n)))), n


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "sms.tsv"
    path.write_bytes(b"ham\tcaf\xe9\n")
    with pytest.raises(ValueError, match=f"^{path} is not UTF-8 text"):
        spam.read_sms_spam(str(path))


def test_collate_pads_on_the_right_with_endoftext():
    x, lengths, labels = spam.collate([([5, 6, 7], 1), ([8], 0)])
    assert x.tolist() == [[5, 6, 7], [8, 50256, 50256]]
    assert lengths.tolist() == [3, 1] and labels.tolist() == [1, 0]


class ParityModel(torch.nn.Module):
    """Predicts class (token id mod 2) at every position: logits one-hot of idx % 2."""

    def forward(self, idx):
        return torch.nn.functional.one_hot(idx % 2, 2).float(), None


def test_accuracy_reads_each_message_at_its_last_real_token():
    # last real tokens 7, 4, 9, 2 -> predictions 1, 0, 1, 0; the pads (50256, even) would say 0
    batch = [([3, 7], 1), ([4], 1), ([1, 1, 9], 1), ([2, 2], 0)]
    assert spam.accuracy(ParityModel(), [spam.collate(batch)]) == 0.75
    assert spam.accuracy(ParityModel(), [spam.collate(batch[:2]), spam.collate(batch[2:])]) == 0.75


def test_a_message_gets_the_same_logits_padded_or_alone():
    model = tiny_classifier()
    messages = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]]
    x, lengths, _ = spam.collate([(ids, 0) for ids in messages])
    batched = spam.last_token_logits(model, x, lengths)
    for row, ids in enumerate(messages):
        alone, _ = model(torch.tensor([ids]))
        assert torch.allclose(batched[row], alone[0, -1], atol=1e-5)


@pytest.mark.parametrize(
    "blocks, trained",
    [
        (1, {"h.1.", "ln_f.", "lm_head."}),
        (0, {"ln_f.", "lm_head."}),
        (2, {"h.0.", "h.1.", "ln_f.", "lm_head."}),
        ("all", {"wte.", "wpe.", "h.0.", "h.1.", "ln_f.", "lm_head."}),
    ],
)
def test_trainable_blocks(blocks, trained):
    model = tiny_classifier()
    spam.set_trainable(model, blocks)
    for name, p in model.named_parameters():
        assert p.requires_grad == any(name.startswith(prefix) for prefix in trained), name


@pytest.mark.parametrize("option, value, expected", [
    ("--epochs", "0", "argument --epochs: 0 is not an integer >= 1"),
    ("--batch_size", "0", "argument --batch_size: 0 is not an integer >= 1"),
    ("--lr", "0", "argument --lr: 0 is not a finite number > 0"),
    ("--lr", "inf", "argument --lr: inf is not a finite number > 0"),
    ("--weight_decay", "-0.1", "argument --weight_decay: -0.1 is not a finite number >= 0"),
    ("--dropout", "1", "argument --dropout: 1 is not a finite number in [0, 1)"),
    ("--seed", "-1", "argument --seed: -1 is not an integer in [0, 18446744073709551615]"),
    ("--epochs", "two", "argument --epochs: invalid int value: 'two'"),  # argparse's own, in one line too
    ("--epoch", "2", "unrecognized arguments: --epoch 2"),
])
def test_numeric_options_are_checked_for_their_range_before_anything_runs(option, value, expected, capsys):
    assert main_error(spam.main, [option, value], capsys) == "error: " + expected


def test_trainable_blocks_option_is_checked():
    assert spam.parse_trainable(None, "scratch", 4) == "all"
    assert spam.parse_trainable(None, "gpt2", 12) == 1
    assert spam.parse_trainable("3", "gpt2", 12) == 3
    with pytest.raises(ValueError, match="from 0 to 4"):
        spam.parse_trainable("5", "x.pt", 4)


def test_end_to_end_on_a_subset_from_gpt2_weights(tmp_path, capsys):
    with open(DATA, encoding="utf-8") as f:
        lines = f.read().split("\n")
    subset = [line for line in lines if line.startswith("spam")][:30] + [
        line for line in lines if line.startswith("ham")
    ][:50]
    (tmp_path / "sms.tsv").write_text("\n".join(subset), encoding="utf-8")
    torch.manual_seed(0)
    weights = load_gpt2.export_gpt2(
        gpt.GPT(gpt.GPTConfig(block_size=48, n_layer=2, n_head=2, n_embd=16)), str(tmp_path / "tiny-gpt2")
    )
    out = str(tmp_path / "classifier.pt")
    spam.main(
        [
            "--init",
            "gpt2",
            "--weights",
            weights,
            "--data",
            str(tmp_path / "sms.tsv"),
            "--epochs",
            "2",
            "--lr",
            "1e-3",
            "--out",
            out,
            "--device",
            "cpu",
        ]
    )
    printed = capsys.readouterr().out
    assert "80 messages (30 spam) -> 60 balanced -> train 42, val 6, test 12" in printed
    assert "epoch 2/2" in printed and "kept epoch" in printed and "test accuracy" in printed
    spam.main(["--classify", "Free entry! Text WIN to 80086 now", "--out", out])
    assert capsys.readouterr().out.strip() in ("ham", "spam")
    assert spam.load_classifier(out).lm_head.out_features == 2


def test_char_level_checkpoint_is_refused(tmp_path, capsys):
    model = gpt.GPT(gpt.GPTConfig(block_size=8, vocab_size=3, n_layer=1, n_head=1, n_embd=8))
    torch.save(
        {
            "model_type": "gpt",
            "config": vars(model.config),
            "model": model.state_dict(),
            "tokenizer": {"kind": "char", "chars": "abc"},
        },
        tmp_path / "ckpt.pt",
    )
    with pytest.raises(SystemExit) as exit_info:
        spam.main(["--init", str(tmp_path / "ckpt.pt"), "--out", str(tmp_path / "c.pt")])
    assert exit_info.value.code == 2
    assert "char tokenizer; fine-tuning needs GPT-2 BPE" in capsys.readouterr().err
