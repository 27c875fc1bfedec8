"""The on-disk cache of class-name embeddings (`naclip_hf.text_cache`, `encode_classes(..., cache_dir=...)`)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from naclip_hf import NACLIPForSemanticSegmentation
from naclip_hf.inference import encode_classes, load_processor
from naclip_hf.text_cache import (
    CACHE_ENV_VAR,
    cache_entry_description,
    cache_key,
    default_cache_dir,
    resolve_cache_dir,
    text_weights_fingerprint,
)

CLASSES = ["sky, wall", "cat", "person, person in shirt"]


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    return load_processor(tiny_checkpoint)


@pytest.fixture()
def model(tiny_checkpoint) -> NACLIPForSemanticSegmentation:
    return NACLIPForSemanticSegmentation.from_pretrained(tiny_checkpoint).eval()


class TextTowerCalls:
    """Counts calls of the text projection (the last step of every way of running the text tower)."""

    def __init__(self, model: NACLIPForSemanticSegmentation) -> None:
        self.count = 0
        self.handle = model.text_projection.register_forward_hook(self._hook)

    def _hook(self, *args) -> None:
        self.count += 1


def cache_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.safetensors"))


def test_second_call_reads_the_cache_without_running_the_text_tower(model, processor, tmp_path):
    calls = TextTowerCalls(model)
    first = encode_classes(model, processor, CLASSES, cache_dir=tmp_path)
    assert calls.count > 0 and len(cache_files(tmp_path)) == 1
    calls.count = 0
    second = encode_classes(model, processor, CLASSES, cache_dir=tmp_path)
    assert calls.count == 0
    assert torch.equal(first.text_embeds, second.text_embeds)
    assert second.name_to_class.tolist() == first.name_to_class.tolist() == [0, 0, 1, 2, 2]
    assert second.classes == first.classes
    uncached = encode_classes(model, processor, CLASSES)
    assert torch.equal(uncached.text_embeds, second.text_embeds)
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_other_templates_or_name_order_miss_the_cache(model, processor, tmp_path):
    encode_classes(model, processor, CLASSES, cache_dir=tmp_path)
    calls = TextTowerCalls(model)
    reordered = encode_classes(model, processor, [CLASSES[1], CLASSES[0], CLASSES[2]], cache_dir=tmp_path)
    assert calls.count > 0
    expected = encode_classes(model, processor, [CLASSES[1], CLASSES[0], CLASSES[2]])
    assert torch.equal(reordered.text_embeds, expected.text_embeds)
    synonyms_swapped = encode_classes(model, processor, ["wall, sky", *CLASSES[1:]], cache_dir=tmp_path)
    assert not torch.equal(synonyms_swapped.text_embeds[:2], reordered.text_embeds[1:3])  # rows follow the names
    calls.count = 0
    model.config.prompt_templates = ["a photo of a {}.", "a drawing of a {}."]
    few_templates = encode_classes(model, processor, CLASSES, cache_dir=tmp_path)
    assert calls.count > 0
    assert torch.equal(few_templates.text_embeds, encode_classes(model, processor, CLASSES).text_embeds)
    calls.count = 0
    model.config.prompt_templates = ["a drawing of a {}.", "a photo of a {}."]  # same templates, other order
    encode_classes(model, processor, CLASSES, cache_dir=tmp_path)
    assert calls.count > 0
    assert len(cache_files(tmp_path)) == 5


def test_corrupt_cache_file_is_ignored_and_rewritten(model, processor, tmp_path, caplog):
    expected = encode_classes(model, processor, CLASSES, cache_dir=tmp_path).text_embeds
    (path,) = cache_files(tmp_path)
    for garbage in (b"", b"not a safetensors file", path.read_bytes()[:-7]):
        path.write_bytes(garbage)
        calls = TextTowerCalls(model)
        with caplog.at_level(logging.WARNING, logger="naclip_hf.text_cache"):
            recomputed = encode_classes(model, processor, CLASSES, cache_dir=tmp_path).text_embeds
        assert calls.count > 0
        assert "Ignoring" in caplog.text
        assert torch.equal(recomputed, expected)
        calls.count = 0
        assert torch.equal(encode_classes(model, processor, CLASSES, cache_dir=tmp_path).text_embeds, expected)
        assert calls.count == 0  # the file was rewritten
        caplog.clear()


def test_file_written_for_other_inputs_is_not_used(model, processor, tmp_path):
    encode_classes(model, processor, ["cat", "dog"], cache_dir=tmp_path)
    (other,) = cache_files(tmp_path)
    description = cache_entry_description(model, processor.tokenizer, ["cat", "car"], None)
    other.rename(tmp_path / f"{cache_key(description)}.safetensors")  # as after a hash collision
    calls = TextTowerCalls(model)
    result = encode_classes(model, processor, ["cat", "car"], cache_dir=tmp_path)
    assert calls.count > 0
    assert torch.equal(result.text_embeds, encode_classes(model, processor, ["cat", "car"]).text_embeds)


def test_changed_weights_miss_the_cache(model, processor, tmp_path):
    before = encode_classes(model, processor, CLASSES, cache_dir=tmp_path).text_embeds
    fingerprint = text_weights_fingerprint(model)
    with torch.no_grad():
        model.text_model.encoder.layers[0].mlp.fc1.weight.mul_(1.5)
    assert text_weights_fingerprint(model) != fingerprint
    calls = TextTowerCalls(model)
    after = encode_classes(model, processor, CLASSES, cache_dir=tmp_path).text_embeds
    assert calls.count > 0
    assert not torch.allclose(before, after)
    assert torch.equal(after, encode_classes(model, processor, CLASSES).text_embeds)


def test_checkpoint_overwritten_at_the_same_path_misses_the_cache(model, processor, tmp_path):
    checkpoint, cache = tmp_path / "checkpoint", tmp_path / "cache"
    model.save_pretrained(checkpoint)
    first = NACLIPForSemanticSegmentation.from_pretrained(checkpoint).eval()
    before = encode_classes(first, processor, CLASSES, cache_dir=cache).text_embeds
    with torch.no_grad():
        first.text_model.encoder.layers[-1].mlp.fc2.weight.mul_(1.5)
    first.save_pretrained(checkpoint)
    second = NACLIPForSemanticSegmentation.from_pretrained(checkpoint).eval()
    assert second.config._name_or_path == str(checkpoint)
    calls = TextTowerCalls(second)
    after = encode_classes(second, processor, CLASSES, cache_dir=cache).text_embeds
    assert calls.count > 0
    assert not torch.allclose(before, after)


def test_dtype_is_part_of_the_key(model, processor, tmp_path):
    encode_classes(model, processor, CLASSES, cache_dir=tmp_path)
    half = model.to(torch.bfloat16)
    calls = TextTowerCalls(half)
    embeds = encode_classes(half, processor, CLASSES, cache_dir=tmp_path).text_embeds
    assert calls.count > 0 and embeds.dtype == torch.bfloat16
    calls.count = 0
    assert encode_classes(half, processor, CLASSES, cache_dir=tmp_path).text_embeds.dtype == torch.bfloat16
    assert calls.count == 0


def test_cache_is_off_by_default_and_true_uses_the_default_directory(model, processor, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "env-cache"))
    monkeypatch.chdir(tmp_path)
    for disabled in (None, False):
        encode_classes(model, processor, CLASSES, cache_dir=disabled)
    encode_classes(model, processor, CLASSES)
    assert not (tmp_path / "env-cache").exists()
    encode_classes(model, processor, CLASSES, cache_dir=True)
    assert len(cache_files(tmp_path / "env-cache")) == 1


def test_default_directory(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(CACHE_ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "naclip_hf" / "text"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path("~/.cache/naclip_hf/text").expanduser()
    assert resolve_cache_dir(None) is None and resolve_cache_dir(False) is None
    assert resolve_cache_dir(True) == default_cache_dir()
    assert resolve_cache_dir(str(tmp_path)) == tmp_path


def test_unwritable_cache_directory_still_returns_embeddings(model, processor, tmp_path, caplog):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    with caplog.at_level(logging.WARNING, logger="naclip_hf.text_cache"):
        result = encode_classes(model, processor, CLASSES, cache_dir=blocked / "cache")
    assert "Could not write" in caplog.text
    assert torch.equal(result.text_embeds, encode_classes(model, processor, CLASSES).text_embeds)


def test_positional_signature_still_works(model, processor):
    result = encode_classes(model, processor, CLASSES)
    assert result.text_embeds.shape == (5, model.config.projection_dim)
