"""On-disk cache of class-name embeddings.

Embedding a label set runs the text tower on every prompt (80 per name): about half a second per name for a
ViT-B/16 CLIP on a CPU. The result depends only on the text tower, the tokenizer, the prompt templates, the names
(in order) and the dtype, so it is stored once per combination of these and read back on the next call.

Location: the directory given as `cache_dir`, or with `cache_dir=True` the default directory: `$NACLIP_CACHE`
when set, else `$XDG_CACHE_HOME/naclip_hf/text` (`~/.cache/naclip_hf/text`). One safetensors file per entry,
named by the entry's key; deleting the directory empties the cache.

Key: a BLAKE2b hash of
- the checkpoint's `name_or_path` and a fingerprint of the text-tower weights: for every tensor of the text model
  and the text projection, its name, shape, dtype and 1024 elements spread evenly over it, plus every byte of the
  text projection and of the final layer norm. A checkpoint overwritten at the same path with other or fine-tuned
  weights therefore gets another key; only an edit that leaves all sampled elements unchanged could go unseen.
- the text configuration (sizes, activation, end-of-text id, ...) and the model dtype,
- the tokenizer (class, vocabulary size, maximum length, and the ids it gives a probe sentence),
- the prompt templates and the names, in order.
The full description is stored in the file as well and compared on reading, so a hash collision cannot return
wrong embeddings. Files are written to a temporary name and renamed, so readers never see half a file; a file that
cannot be read or does not match is ignored and overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .embedding_store import (
    CACHE_ENV_VAR,
    EmbeddingStore,
    cache_key,
    default_cache_dir,
    resolve_cache_dir,
    text_config_description,
)
from .models.naclip.templates import IMAGENET_TEMPLATES

CACHE_FORMAT = 2
"""Version of the file layout and key; bumping it invalidates every entry."""
SAMPLES_PER_TENSOR = 1024
"""Elements of each text-tower tensor that enter the weight fingerprint."""
_TOKENIZER_PROBE = "a photo of the naïve café-owner's 2 TV monitors."


def disk_cache(cache_dir: str | os.PathLike | bool | None) -> TextEmbeddingCache | None:
    """The cache in `cache_dir` (see `resolve_cache_dir`), or None for no cache."""
    directory = resolve_cache_dir(cache_dir)
    return None if directory is None else TextEmbeddingCache(directory)


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().reshape(-1).contiguous().cpu()
    return flat.view(torch.uint8).numpy().tobytes()


def _sampled_bytes(tensor: torch.Tensor, samples: int = SAMPLES_PER_TENSOR) -> bytes:
    flat = tensor.detach().reshape(-1)
    if flat.numel() > samples:
        index = torch.arange(samples, device=flat.device) * (flat.numel() - 1) // (samples - 1)
        flat = flat[index]
    return _tensor_bytes(flat)


def text_weights_fingerprint(model: torch.nn.Module) -> str:
    """Hex digest identifying the weights that class-name embeddings depend on (text model + text projection).

    Cheap (a few milliseconds for ViT-B/16): every tensor is sampled, not read whole; see the module docstring.
    """
    digest = hashlib.blake2b(digest_size=20)
    modules = {"text_model": model.text_model, "text_projection": model.text_projection}
    fully_hashed = {"text_projection.weight", "text_model.final_layer_norm.weight", "text_model.final_layer_norm.bias"}
    for prefix, module in modules.items():
        tensors = dict(module.named_parameters(prefix=prefix))
        tensors.update(module.named_buffers(prefix=prefix))
        for name in sorted(tensors):
            tensor = tensors[name]
            digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
            digest.update(_tensor_bytes(tensor) if name in fully_hashed else _sampled_bytes(tensor))
    return digest.hexdigest()


def tokenizer_description(tokenizer: Any) -> dict[str, Any]:
    """What identifies a tokenizer's behaviour, cheaply: its class, vocabulary size, maximum length and the ids it
    gives a probe sentence."""
    return {
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "model_max_length": min(int(getattr(tokenizer, "model_max_length", 77)), 10**6),
        "probe_ids": list(tokenizer(_TOKENIZER_PROBE)["input_ids"]),
    }


def cache_entry_description(
    model: torch.nn.Module,
    tokenizer: Any,
    names: Sequence[str],
    templates: Sequence[str] | None,
) -> str:
    """Canonical JSON of everything the embeddings of `names` depend on (the cache key is its hash)."""
    description = {
        "format": CACHE_FORMAT,
        "checkpoint": str(getattr(model.config, "_name_or_path", "") or ""),
        "text_weights": text_weights_fingerprint(model),
        "text_config": text_config_description(model.config.text_config.to_dict()),
        "projection_dim": int(model.config.projection_dim),
        "dtype": str(model.dtype),
        "tokenizer": tokenizer_description(tokenizer),
        "templates": list(IMAGENET_TEMPLATES if templates is None else templates),
        "names": list(names),
    }
    return json.dumps(description, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


class TextEmbeddingCache(EmbeddingStore):
    """A directory of class-name embeddings, one safetensors file per entry (see the module docstring and
    `naclip_hf.embedding_store.EmbeddingStore`, whose files the exported runtime shares)."""

    def load(self, description: str, rows: int | None = None) -> torch.Tensor | None:  # type: ignore[override]
        """The stored embeddings [names, D] for this description in the dtype it names, or None when there is no
        valid entry (a missing, unreadable or mismatching file counts as no entry)."""
        described = json.loads(description)
        stored = super().load(description, len(described["names"]) if rows is None else rows)
        if stored is None:
            return None
        return torch.from_numpy(stored).to(getattr(torch, str(described["dtype"]).removeprefix("torch.")))

    def save(self, description: str, embeddings: torch.Tensor) -> Path | None:  # type: ignore[override]
        """Store embeddings for this description, atomically; returns the file, or None when the directory is not
        writable (the failure is logged, not raised: the cache is an optimisation)."""
        return super().save(description, embeddings.detach().to("cpu", torch.float32).numpy())

    def __call__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        names: Sequence[str],
        templates: Sequence[str] | None,
        compute: Callable[[], torch.Tensor],
    ) -> torch.Tensor:
        """Embeddings of `names` from this cache, or from `compute()` (then stored): the `cache` of
        `naclip_hf.models.naclip.class_embeddings.encode_classes`.

        Args:
            model: the NACLIP model whose text tower `compute` runs.
            tokenizer: the tokenizer `compute` uses.
            names: every name, in the order of the embedding rows.
            templates: the prompt templates (None: the 80 ImageNet templates).
            compute: returns the embeddings [len(names), D] when they are not cached.
        Returns:
            [len(names), D] on the model's device.
        """
        description = cache_entry_description(model, tokenizer, names, templates)
        return self.load_or_compute(description, len(names), compute).to(model.device)


__all__ = [
    "CACHE_ENV_VAR",
    "TextEmbeddingCache",
    "cache_entry_description",
    "cache_key",
    "default_cache_dir",
    "disk_cache",
    "resolve_cache_dir",
    "text_weights_fingerprint",
    "tokenizer_description",
]
