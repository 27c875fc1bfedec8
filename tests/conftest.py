"""Shared fixtures: the golden parity data and a tiny NACLIP checkpoint converted from it."""

from __future__ import annotations

import functools
import http.server
import json
import os
import socket
import threading
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "PYTEST_XDIST_WORKER" in os.environ:
    # Several test processes share the cores: one thread each (set before torch is imported; inherited by the
    # commands the tests start) instead of each process spreading its operators over every core.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

GOLDEN_DIR = Path(__file__).parent / "fixtures" / "golden"


@pytest.fixture(autouse=True)
def isolated_text_cache(tmp_path, monkeypatch) -> Path:
    """Each test (and the commands it runs) gets its own, empty label-embedding cache."""
    cache = tmp_path / "naclip-text-cache"
    monkeypatch.setenv("NACLIP_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN_DIR


@pytest.fixture(scope="session")
def golden() -> dict:
    from safetensors.torch import load_file

    return load_file(str(GOLDEN_DIR / "golden.safetensors"))


@pytest.fixture(scope="session")
def manifest() -> dict:
    return json.loads((GOLDEN_DIR / "manifest.json").read_text())


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """The golden tiny CLIP converted with `naclip convert` (config, weights, tokenizer, processor)."""
    from naclip_hf.conversion import convert_openai_checkpoint

    out = tmp_path_factory.mktemp("ckpt") / "tiny-naclip"
    convert_openai_checkpoint(GOLDEN_DIR / "openai_clip_tiny.safetensors", out, GOLDEN_DIR / "tokenizer")
    return out


# References made by the official SC-CLIP, SFP and ResCLIP code on a narrow 12-layer random CLIP.
METHODS_DIR = Path(__file__).parent / "fixtures" / "golden_methods"


@pytest.fixture(scope="session")
def methods_manifest() -> dict:
    return json.loads((METHODS_DIR / "manifest.json").read_text())


@pytest.fixture(scope="session")
def methods_golden() -> dict:
    from safetensors.torch import load_file

    return load_file(str(METHODS_DIR / "golden_methods.safetensors"))


@pytest.fixture(scope="session")
def narrow_checkpoint(tmp_path_factory) -> Path:
    """The golden_methods fixture's 12-layer narrow CLIP converted as `naclip convert` does."""
    from naclip_hf.conversion import convert_openai_checkpoint

    out = tmp_path_factory.mktemp("narrow") / "narrow12"
    convert_openai_checkpoint(METHODS_DIR / "openai_clip_narrow12.safetensors", out, METHODS_DIR / "tokenizer")
    return out


@pytest.fixture(scope="session")
def golden_labels_file(tmp_path_factory, manifest) -> Path:
    """The manifest's classes as a labels file (one class per line, synonyms separated by ', ')."""
    path = tmp_path_factory.mktemp("labels") / "golden_classes.txt"
    path.write_text("\n".join(", ".join(names) for names in manifest["classes"]) + "\n")
    return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_folder(tmp_path):
    """A folder served over HTTP on 127.0.0.1 for the test's duration (and at most 120 s): (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    deadline = threading.Timer(120, server.shutdown)
    deadline.daemon = True
    thread.start()
    deadline.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        deadline.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def closed_port_url() -> str:
    """An http URL on 127.0.0.1 at a port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/x.jpg"


class _FakeHubHandler(http.server.BaseHTTPRequestHandler):
    """Records each request's path and answers with the server's `answer`: (status, headers)."""

    def _answer(self) -> None:
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        status, headers = self.server.answer  # type: ignore[attr-defined]
        self.send_response(status)
        for name, value in {**headers, "Content-Length": "0"}.items():
            self.send_header(name, value)
        self.end_headers()

    do_GET = do_HEAD = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def fake_hub():
    """A stand-in for the Hugging Face Hub on 127.0.0.1, for the test's duration (and at most 120 s). It answers
    every request with `fake_hub.answer` (default: 503, a Hub that is down) and records the paths asked in
    `fake_hub.paths`; `fake_hub.url` is its endpoint (for HF_ENDPOINT)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHubHandler)
    server.paths = []  # type: ignore[attr-defined]
    server.answer = (503, {})  # type: ignore[attr-defined]
    server.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    deadline = threading.Timer(120, server.shutdown)
    deadline.daemon = True
    thread.start()
    deadline.start()
    try:
        yield server
    finally:
        deadline.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def tiny_export(tiny_checkpoint, golden_labels_file, tmp_path_factory) -> Path:
    """`naclip export` of the tiny checkpoint with the golden classes, quantized (one export for the whole run)."""
    for module in ("onnxruntime", "onnx", "onnxscript"):
        pytest.importorskip(module, reason="exporting needs the onnx extra: pip install -e '.[onnx]'")
    from naclip_hf.cli import main

    out = tmp_path_factory.mktemp("export") / "tiny-onnx"
    argv = ["export", str(tiny_checkpoint), str(out), "--labels-file", str(golden_labels_file), "--quantize"]
    assert main(argv) == 0
    return out
