"""load_gpt2.py: Hugging Face layout in and out, name/shape checks, no network with --weights,
and the download (progress, timeout, resume, size check) against a local HTTP server."""
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import gpt
import load_gpt2
import load_hf


def tiny(bias=True, vocab_size=64, **kw):
    """A small GPT with every weight random (biases too, so a lost bias would show)."""
    torch.manual_seed(0)
    config = gpt.GPTConfig(block_size=16, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=16, bias=bias, **kw)
    model = gpt.GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


def reference_gpt2_logits(hub_state, ids, n_layer, n_head):
    """GPT-2's forward pass written directly on the Hugging Face tensors, one position at a time:
    Conv1D computes x @ W + b with W stored (in, out); the head is wte transposed."""
    sd = {k.removeprefix("transformer."): v.double() for k, v in hub_state.items()}

    def layer_norm(x, name):
        return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps=1e-5)

    def conv1d(x, name):
        return x @ sd[name + ".weight"] + sd[name + ".bias"]

    T, C = len(ids), sd["wte.weight"].size(1)
    hd = C // n_head
    x = sd["wte.weight"][ids] + sd["wpe.weight"][:T]  # (T, C)
    for i in range(n_layer):
        q, k, v = conv1d(layer_norm(x, f"h.{i}.ln_1"), f"h.{i}.attn.c_attn").split(C, dim=-1)
        out = torch.zeros(T, C, dtype=torch.double)
        for t in range(T):  # position t attends to positions 0..t
            for h in range(n_head):
                cols = slice(h * hd, (h + 1) * hd)
                weights = torch.softmax(k[: t + 1, cols] @ q[t, cols] / hd ** 0.5, dim=0)
                out[t, cols] = weights @ v[: t + 1, cols]
        x = x + conv1d(out, f"h.{i}.attn.c_proj")
        hidden = conv1d(layer_norm(x, f"h.{i}.ln_2"), f"h.{i}.mlp.c_fc")
        x = x + conv1d(F.gelu(hidden, approximate="tanh"), f"h.{i}.mlp.c_proj")
    return layer_norm(x, "ln_f") @ sd["wte.weight"].T


IDS = torch.tensor([[3, 14, 15, 9, 2, 6, 5, 35]])


def test_export_then_load_gives_identical_logits(tmp_path):
    model = tiny()
    load_gpt2.export_gpt2(model, tmp_path)
    loaded = load_gpt2.load_gpt2(weights=str(tmp_path))
    assert loaded.config == model.config
    assert torch.equal(loaded(IDS)[0], model(IDS)[0])
    assert loaded.lm_head.weight is loaded.wte.weight


def test_loaded_model_matches_a_reference_gpt2_written_on_the_hub_tensors(tmp_path):
    model = tiny()
    load_gpt2.export_gpt2(model, tmp_path)
    hub_state = load_file(tmp_path / "model.safetensors")
    assert hub_state["h.0.mlp.c_fc.weight"].shape == (16, 64)  # Conv1D: (in, out)
    assert "lm_head.weight" not in hub_state
    expected = reference_gpt2_logits(hub_state, IDS[0], n_layer=2, n_head=2)
    assert torch.allclose(load_gpt2.load_gpt2(weights=str(tmp_path))(IDS)[0][0].double(), expected, atol=1e-4)


def test_cpu_preset_style_model_round_trips_with_zero_biases_and_exact_gelu(tmp_path):
    model = tiny(bias=False, gelu_approximate="none")  # the choices of gpt.py's "cpu" preset
    load_gpt2.export_gpt2(model, tmp_path)
    assert torch.count_nonzero(load_file(tmp_path / "model.safetensors")["h.1.attn.c_attn.bias"]) == 0
    assert json.loads((tmp_path / "config.json").read_text())["activation_function"] == "gelu"
    loaded = load_gpt2.load_gpt2(weights=str(tmp_path))
    assert loaded.config.bias and loaded.config.gelu_approximate == "none"
    assert torch.allclose(loaded(IDS)[0], model(IDS)[0], atol=1e-5)


def test_sizes_come_from_config_json_else_from_the_named_preset():
    hub_config = {"n_layer": 3, "n_head": 2, "n_embd": 8, "n_positions": 32, "vocab_size": 100, "n_ctx": 32}
    assert load_gpt2.config_from_hub(hub_config) == gpt.GPTConfig(
        n_layer=3, n_head=2, n_embd=8, block_size=32, vocab_size=100, bias=True, gelu_approximate="tanh")
    assert load_gpt2.config_from_hub(None, "gpt2-medium") == gpt.GPTConfig(
        n_layer=24, n_head=16, n_embd=1024, block_size=1024, vocab_size=50257, bias=True)
    with pytest.raises(ValueError, match="no config.json"):
        load_gpt2.config_from_hub(None, "gpt3")
    with pytest.raises(ValueError, match="has no 'n_positions'"):
        load_gpt2.config_from_hub({"n_layer": 3, "n_head": 2, "n_embd": 8})
    with pytest.raises(ValueError, match="activation_function='relu': gpt.py computes gelu_new"):
        load_gpt2.config_from_hub({**hub_config, "activation_function": "relu"})


def test_prefixed_names_buffers_and_a_stored_head_are_accepted(tmp_path):
    model = tiny()
    load_gpt2.export_gpt2(model, tmp_path)
    hub_state = load_file(tmp_path / "model.safetensors")
    old_style = {"transformer." + k: v for k, v in hub_state.items()}
    old_style["transformer.h.0.attn.bias"] = torch.ones(1, 1, 16, 16).tril()  # the causal-mask buffers
    old_style["transformer.h.1.attn.masked_bias"] = torch.tensor(-1e4)
    old_style["lm_head.weight"] = hub_state["wte.weight"].clone()
    torch.save(old_style, tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    loaded = load_gpt2.load_gpt2(weights=str(tmp_path))  # read with torch.load(weights_only=True)
    assert torch.equal(loaded(IDS)[0], model(IDS)[0])


@pytest.mark.parametrize("change, message", [
    (lambda sd: sd.pop("h.1.mlp.c_fc.bias"), r"lack 'h.1.mlp.c_fc.bias'"),
    (lambda sd: sd.update({"h.0.attn.c_attn.weight": torch.zeros(48, 16)}),
     r"'h.0.attn.c_attn.weight' has shape \(48, 16\), config.json's sizes give \(16, 48\)"),
    (lambda sd: sd.update({"h.2.ln_1.weight": torch.ones(16)}), r"unexpected weight 'h.2.ln_1.weight'"),
])
def test_mismatches_give_a_one_line_error(tmp_path, change, message):
    load_gpt2.export_gpt2(tiny(), tmp_path)
    hub_state = load_file(tmp_path / "model.safetensors")
    change(hub_state)
    save_file(hub_state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=message) as err:
        load_gpt2.load_gpt2(weights=str(tmp_path))
    assert "\n" not in str(err.value)


def test_missing_weights_folder_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_gpt2.load_gpt2(weights=str(tmp_path))


def test_no_network_is_touched_with_weights(tmp_path, monkeypatch, capsys):
    load_gpt2.export_gpt2(tiny(vocab_size=50257), tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(requests.Session, "request", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    load_gpt2.main(["--weights", str(tmp_path), "--prompt", "Hello", "--max_new_tokens", "3",
                    "--cache_dir", str(tmp_path / "cache")])
    assert capsys.readouterr().out.count("Hello") == 1
    assert not (tmp_path / "cache").exists()


def test_checkpoint_with_char_tokenizer_is_refused_for_fine_tuning(tmp_path):
    model = tiny()
    torch.save({"model_type": "gpt", "config": vars(model.config), "model": model.state_dict(),
                "tokenizer": {"kind": "char", "chars": "abc"}}, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match="needs GPT-2 BPE"):
        load_gpt2.load_pretrained(str(tmp_path / "ckpt.pt"))
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_gpt2.load_pretrained(str(tmp_path / "nothing.pt"))


# ----------------------------------------------------------------------------- downloads

class FileServer(BaseHTTPRequestHandler):
    """Serves `files` (path -> bytes) with HTTP Range support. `cut_after` n drops the next
    connection after n body bytes; `stall` waits before answering; `seen` logs the requests."""
    files, cut_after, stall, seen = {}, None, 0.0, []

    def do_GET(self):
        self.seen.append((self.path, self.headers.get("Range")))
        time.sleep(self.stall)
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-")) if self.headers.get("Range") else 0
        if start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if start:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if type(self).cut_after is not None:
            body, type(self).cut_after = body[:type(self).cut_after], None
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the timeout test)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    handler = type("Handler", (FileServer,), {"files": {}, "seen": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_fetch_gpt2_downloads_both_files_once_and_loads(tmp_path, server, monkeypatch, capsys):
    handler, base = server
    model = tiny()
    load_gpt2.export_gpt2(model, tmp_path / "hub")
    for name in ("config.json", "model.safetensors"):
        handler.files[f"/openai-community/gpt2/resolve/main/{name}"] = (tmp_path / "hub" / name).read_bytes()
    monkeypatch.setattr(load_hf, "HUB_URL", base + "/{repo}/resolve/main/{filename}")  # where the download lives
    loaded = load_gpt2.load_gpt2("gpt2", cache_dir=str(tmp_path / "cache"))
    assert torch.equal(loaded(IDS)[0], model(IDS)[0])
    assert "100.0%" in capsys.readouterr().err  # the progress line reached the end
    load_gpt2.load_gpt2("gpt2", cache_dir=str(tmp_path / "cache"))
    assert len(handler.seen) == 2  # the second load used the cache


def test_dropped_download_resumes_with_a_range_request(tmp_path, server):
    handler, base = server
    data = bytes(range(256)) * 400
    handler.files["/f.bin"] = data
    handler.cut_after = 30_000
    target = tmp_path / "f.bin"
    with pytest.raises(ConnectionError, match="run again to resume"):
        load_gpt2.download(base + "/f.bin", str(target), chunk_size=4096, progress=False)
    assert not target.exists()
    kept = (tmp_path / "f.bin.part").stat().st_size
    assert 0 < kept <= 30_000  # the chunks written before the connection dropped
    load_gpt2.download(base + "/f.bin", str(target), chunk_size=4096, progress=False)
    assert target.read_bytes() == data
    assert handler.seen[-1] == ("/f.bin", f"bytes={kept}-")
    assert not (tmp_path / "f.bin.part").exists()


def test_size_check_keeps_a_short_file_and_drops_an_overlong_one(tmp_path, server):
    handler, base = server
    handler.files["/f.bin"] = b"x" * 1000
    part = tmp_path / "f.bin.part"
    part.write_bytes(b"x" * 1000)  # whole, but not yet renamed: the server answers 416
    load_gpt2.download(base + "/f.bin", str(tmp_path / "f.bin"), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == b"x" * 1000
    part = tmp_path / "g.bin.part"
    part.write_bytes(b"y" * 1500)  # longer than the file on the server: another file's bytes
    with pytest.raises(ConnectionError, match="more than its 1,000"):
        load_gpt2.download(base + "/f.bin", str(tmp_path / "g.bin"), progress=False)
    assert not part.exists() and not (tmp_path / "g.bin").exists()


def test_unreachable_or_stalled_server_gives_a_clear_error(tmp_path, server):
    handler, base = server
    handler.files["/f.bin"] = b"x" * 10
    handler.stall = 2.0
    with pytest.raises(ConnectionError, match=r"failed \(.*Timeout\).*--weights"):
        load_gpt2.download(base + "/f.bin", str(tmp_path / "f.bin"), timeout=0.3, progress=False)
    with pytest.raises(ConnectionError, match="404|HTTPError"):
        handler.stall = 0.0
        load_gpt2.download(base + "/missing.bin", str(tmp_path / "m.bin"), progress=False)
