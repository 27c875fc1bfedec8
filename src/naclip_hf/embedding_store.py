"""The on-disk store of class-name embeddings shared by the PyTorch path (`naclip_hf.text_cache`) and the exported
runtime (`naclip_hf.export.text`); it needs numpy and safetensors only.

Location: `$NACLIP_CACHE` when set, else `$XDG_CACHE_HOME/naclip_hf/text` (`~/.cache/naclip_hf/text`). One
safetensors file per entry, named by the BLAKE2b hash of the entry's description (a canonical JSON of everything the
embeddings depend on, which each backend builds); the description is stored in the file and compared on reading,
so a hash collision cannot return wrong embeddings. Embeddings are stored as float32 (bfloat16 and float16 values
convert to it and back exactly). Files are written to a temporary name and renamed, so readers never see half a
file; a file that cannot be read or does not match is ignored (with a warning) and overwritten.

Example:

```python
>>> store = EmbeddingStore(default_cache_dir())
>>> store.save('{"names": ["sky"]}', np.ones((1, 512), np.float32))
>>> store.load('{"names": ["sky"]}', rows=1).shape  # (1, 512)
```
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "NACLIP_CACHE"
"""Environment variable naming the default cache directory."""
_TENSOR_NAME = "text_embeds"
_METADATA_KEY = "naclip_text_cache"


def default_cache_dir() -> Path:
    """`$NACLIP_CACHE` if set, else `$XDG_CACHE_HOME/naclip_hf/text` (`~/.cache/naclip_hf/text`)."""
    configured = os.environ.get(CACHE_ENV_VAR)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "naclip_hf" / "text"


def resolve_cache_dir(cache_dir: str | os.PathLike | bool | None) -> Path | None:
    """The cache directory meant by a `cache_dir` argument: `None`/`False` -> no cache, `True` -> the default
    directory (see `default_cache_dir`), a path -> that directory."""
    if cache_dir is None or cache_dir is False:
        return None
    if cache_dir is True:
        return default_cache_dir()
    return Path(cache_dir).expanduser()


def cache_key(description: str) -> str:
    """File-name key of a cache entry: BLAKE2b (128 bits, hex) of its description."""
    return hashlib.blake2b(description.encode("utf-8"), digest_size=16).hexdigest()


def text_config_description(text_config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a text configuration that embeddings depend on, for a cache description: its public scalar
    values, without the bookkeeping ones (versions, architectures, dtype, name)."""
    ignored = {"transformers_version", "architectures", "dtype", "torch_dtype", "name_or_path"}
    return {
        key: value
        for key, value in sorted(text_config.items())
        if not key.startswith("_") and key not in ignored and isinstance(value, (str, int, float, bool, type(None)))
    }


class EmbeddingStore:
    """A directory of name embeddings, one safetensors file per entry (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)

    def path_for(self, description: str) -> Path:
        """File of the entry with this description."""
        return self.directory / f"{cache_key(description)}.safetensors"

    def load(self, description: str, rows: int) -> np.ndarray | None:
        """The stored embeddings [rows, D] float32 for this description, or None when there is no valid entry (a
        missing, unreadable or mismatching file counts as none). The file is read whole, so the array does not
        depend on it afterwards."""
        from safetensors.numpy import load as load_safetensors

        path = self.path_for(description)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            logger.warning("Ignoring unreadable text-embedding cache file %s (%s).", path, error)
            return None
        try:
            header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
            stored = (header.get("__metadata__") or {}).get(_METADATA_KEY)
            embeddings = load_safetensors(data)[_TENSOR_NAME] if stored == description else None
        except Exception as error:  # truncated or corrupt files raise various exception types
            logger.warning("Ignoring corrupt text-embedding cache file %s (%s).", path, error)
            return None
        if embeddings is None:
            logger.warning("Ignoring text-embedding cache file %s: it was written for other inputs.", path)
            return None
        if embeddings.ndim != 2 or embeddings.shape[0] != rows or not np.isfinite(embeddings).all():
            logger.warning("Ignoring text-embedding cache file %s: it holds an array of the wrong shape.", path)
            return None
        return np.ascontiguousarray(embeddings, dtype=np.float32)

    def load_or_compute(self, description: str, rows: int, compute: Callable[[], Any]) -> Any:
        """The stored embeddings for this description (`load`), else those of `compute()`, then stored (`save`)."""
        embeddings = self.load(description, rows)
        if embeddings is None:
            embeddings = compute()
            self.save(description, embeddings)
        return embeddings

    def save(self, description: str, embeddings: np.ndarray) -> Path | None:
        """Store the embeddings [rows, D] for this description as float32, atomically; returns the file, or None
        when the directory is not writable (logged, not raised: the cache is an optimisation)."""
        from safetensors.numpy import save_file

        path = self.path_for(description)
        temporary = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=self.directory)
            os.close(handle)
            arrays = {_TENSOR_NAME: np.ascontiguousarray(embeddings, dtype=np.float32)}
            save_file(arrays, temporary, metadata={_METADATA_KEY: description})
            os.replace(temporary, path)
            temporary = None
        except OSError as error:
            logger.warning("Could not write the text-embedding cache file %s (%s).", path, error)
            return None
        finally:
            if temporary is not None and os.path.exists(temporary):
                os.unlink(temporary)
        return path


__all__ = ["CACHE_ENV_VAR", "EmbeddingStore", "cache_key", "default_cache_dir", "resolve_cache_dir",
           "text_config_description"]  # fmt: skip
