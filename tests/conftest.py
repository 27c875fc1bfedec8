"""Shared fixtures: the golden parity data and a tiny NACLIP checkpoint converted from it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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


@pytest.fixture(scope="session")
def golden_labels_file(tmp_path_factory, manifest) -> Path:
    """The manifest's classes as a labels file (one class per line, synonyms separated by ', ')."""
    path = tmp_path_factory.mktemp("labels") / "golden_classes.txt"
    path.write_text("\n".join(", ".join(names) for names in manifest["classes"]) + "\n")
    return path
