"""The text side of an exported folder without torch or transformers: CLIP's tokenizer from `tokenizer.json` (the
`tokenizers` library) and the text graph `onnx/text_model.onnx`, which together embed any class names as
`NACLIPForSemanticSegmentation.get_name_embeddings` does, with an on-disk cache of the results.

Embedding a name runs one prompt per template through the text graph. The prompts are sorted by length and run in
batches cut to their longest prompt, padded with the tokenizer's pad token as transformers pads them; the graph is
causal and pools the end-of-text token, so padding after it changes nothing. Per name, the normalised prompt
features are averaged over the templates and normalised again.

Cache: the store of `naclip_hf.embedding_store`, shared with the PyTorch path (`$NACLIP_CACHE`, else
`$XDG_CACHE_HOME/naclip_hf/text`; one safetensors file per entry named by the BLAKE2b hash of its description, the
description stored in the file and compared on reading). The description holds what the embeddings depend on here:
a fingerprint of the text graph file (its size, its first and last 64 KiB and 4096 samples spread over it), the
hashes of the tokenizer files, the text configuration, the dtype, the templates and the names.

Example:

```python
>>> tower = ExportedTextTower("naclip-onnx")  # a folder written by `naclip export`
>>> tower.embed_names(["sky", "road"], ["a photo of a {}."]).shape  # (2, D)
```
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..embedding_store import EmbeddingStore, resolve_cache_dir, text_config_description
from ..models.naclip.tokenization import tokenizer_max_length
from .layout import (
    CONFIG_FILE,
    ONNX_DIR,
    TEXT_GRAPH_INPUT,
    TEXT_GRAPH_OUTPUT,
    TEXT_MODEL_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
)

logger = logging.getLogger(__name__)

# Version of this runtime's cache description; bumping it invalidates its entries.
CACHE_FORMAT = 1
_FINGERPRINT_SAMPLES = 4096
_FINGERPRINT_SAMPLE_BYTES = 16
_FINGERPRINT_EDGE_BYTES = 65536
_REEXPORT_HINT = "export the model again with `naclip export MODEL OUT`"


# ----------------------------------------------------------------------------------------------- tokenizer
class ExportedTokenizer:
    """CLIP's tokenizer of an exported folder, read with the `tokenizers` library only.

    Gives the ids and attention masks that transformers' `CLIPTokenizer` gives for
    `tokenizer(texts, padding=True, truncation=True, max_length=model_max_length)`: the normalisation (Unicode NFC,
    whitespace runs to one space, lower case), the byte-level BPE, start and end of text, truncation to
    `model_max_length` tokens in all and padding on the right with the pad token.

    Args:
        folder: an exported folder holding `tokenizer.json` (and `tokenizer_config.json` for the maximum length
            and the pad token).

    Example:

    ```python
    >>> tokenizer = ExportedTokenizer("naclip-onnx")
    >>> tokenizer(["a photo of a cat.", "a dog."])["input_ids"].shape  # (2, 7)
    ```
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise OSError(
                "Embedding class names with an exported model needs the `tokenizers` library: pip install tokenizers."
            ) from None

        folder = Path(folder).expanduser()
        path = folder / TOKENIZER_FILE
        if not path.is_file():
            raise OSError(f"The exported model {folder} has no {TOKENIZER_FILE} (its tokenizer); {_REEXPORT_HINT}.")
        try:
            self.backend = Tokenizer.from_file(str(path))
        except Exception as error:  # the Rust library raises a plain Exception for bad files
            raise ValueError(f"{path} is not a valid tokenizer file ({error}); {_REEXPORT_HINT}.") from None
        settings = _read_optional_json(folder / TOKENIZER_CONFIG_FILE)
        self.model_max_length = tokenizer_max_length(settings.get("model_max_length"))  # as the processor
        pad_token = _token_content(settings.get("pad_token")) or _token_content(settings.get("eos_token"))
        pad_id = None if pad_token is None else self.backend.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(
                f"The tokenizer of {folder} names no pad token that its vocabulary holds ({TOKENIZER_CONFIG_FILE}); "
                f"{_REEXPORT_HINT}."
            )
        self.pad_token_id = int(pad_id)
        self.backend.no_padding()
        self.backend.enable_truncation(max_length=self.model_max_length)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """The token ids of each text, unpadded (start and end of text included, truncated)."""
        return [encoding.ids for encoding in self.backend.encode_batch(list(texts), add_special_tokens=True)]

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """`input_ids` and `attention_mask` [len(texts), longest] (int64), padded on the right."""
        encoded = self.encode(texts)
        return pad_token_ids(encoded, self.pad_token_id)


def pad_token_ids(encoded: Sequence[Sequence[int]], pad_token_id: int) -> dict[str, np.ndarray]:
    """Token id lists -> `input_ids` and `attention_mask` [len(encoded), longest] (int64), padded on the right."""
    length = max((len(ids) for ids in encoded), default=0)
    input_ids = np.full((len(encoded), length), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((len(encoded), length), dtype=np.int64)
    for row, ids in enumerate(encoded):
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _token_content(token: Any) -> str | None:
    """A special token of `tokenizer_config.json`: a string, or an object with its `content`."""
    if isinstance(token, Mapping):
        token = token.get("content")
    return token if isinstance(token, str) and token else None


def _read_optional_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); {_REEXPORT_HINT}.") from None
    return value if isinstance(value, dict) else {}


# -------------------------------------------------------------------------------------------- text tower
def normalize_rows(values: np.ndarray) -> np.ndarray:
    """Each row divided by its L2 norm (at least 1e-12), as `torch.nn.functional.normalize(values, dim=-1)`."""
    norms = np.linalg.norm(values, axis=-1, keepdims=True)
    return values / np.maximum(norms, np.float32(1e-12))


class ExportedTextTower:
    """The text graph and tokenizer of an exported folder: class names -> their embeddings [names, D] (float32).

    Args:
        folder: an exported folder holding `onnx/text_model.onnx` and `tokenizer.json`.
        session_options, providers: for `onnxruntime.InferenceSession` (default: the CPU provider).

    The tokenizer and the graph are loaded on first use: label sets found in the disk cache need neither. Calls may
    come from several threads.
    """

    def __init__(
        self, folder: str | os.PathLike, session_options: Any = None, providers: Sequence[Any] | None = None
    ) -> None:
        self.folder = Path(folder).expanduser()
        self.graph_path = self.folder / ONNX_DIR / TEXT_MODEL_FILE
        for path, what in ((self.graph_path, "text model"), (self.folder / TOKENIZER_FILE, "tokenizer")):
            if not path.is_file():
                raise OSError(
                    f"The exported model {self.folder} has no {path.relative_to(self.folder)} (its {what}); "
                    f"{_REEXPORT_HINT}."
                )
        self._config = _read_optional_json(self.folder / CONFIG_FILE)
        try:
            self.embedding_dim = int(self._config["projection_dim"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{self.folder / CONFIG_FILE} gives no projection_dim; {_REEXPORT_HINT}.") from None
        self._session_options = session_options
        self._providers = list(providers or ["CPUExecutionProvider"])
        self._tokenizer: ExportedTokenizer | None = None
        self._session: Any = None
        self._identity: dict[str, Any] | None = None
        self._lock = threading.Lock()

    @property
    def tokenizer(self) -> ExportedTokenizer:
        """The folder's `ExportedTokenizer`, loaded on first use."""
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = ExportedTokenizer(self.folder)
            return self._tokenizer

    @property
    def session(self) -> Any:
        """The `onnxruntime.InferenceSession` of the text graph, created on first use."""
        with self._lock:
            if self._session is None:
                from .runtime import open_graph

                self._session = open_graph(self.graph_path, self._session_options, self._providers)
            return self._session

    def prompt_features(self, prompts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        """L2-normalised features [len(prompts), D] of the prompts, `batch_size` prompts per graph run, in order of
        length and cut to the longest of each batch."""
        encoded = self.tokenizer.encode(prompts)
        lengths = np.asarray([len(ids) for ids in encoded])
        order = np.argsort(lengths, kind="stable")
        features = np.empty((len(encoded), self.embedding_dim), dtype=np.float32)
        session, pad_token_id = self.session, self.tokenizer.pad_token_id
        for start in range(0, len(encoded), batch_size):
            rows = order[start : start + batch_size]
            input_ids = pad_token_ids([encoded[row] for row in rows], pad_token_id)["input_ids"]
            features[rows] = session.run([TEXT_GRAPH_OUTPUT], {TEXT_GRAPH_INPUT: input_ids})[0]
        return features

    def compute_name_embeddings(
        self, names: Sequence[str], templates: Sequence[str], batch_size: int = 128
    ) -> np.ndarray:
        """[len(names), D]: per name, the mean of its prompts' normalised features over `templates`, normalised."""
        prompts = [template.format(name) for name in names for template in templates]
        features = self.prompt_features(prompts, batch_size).reshape(len(names), len(templates), -1)
        return normalize_rows(features.mean(axis=1))

    def embed_names(
        self,
        names: Sequence[str],
        templates: Sequence[str],
        batch_size: int = 128,
        cache_dir: str | os.PathLike | bool | None = None,
    ) -> np.ndarray:
        """`compute_name_embeddings`, read from the on-disk cache when computed before (the label sets used last
        are kept in memory by the segmenter, `naclip_hf.segmenter.Segmenter.encode_classes`).

        Args:
            names: the names, in the order of the rows.
            templates: the prompt templates, each with one `{}`.
            batch_size: prompts per graph run.
            cache_dir: the on-disk cache: a directory, `True` for the default one, `None`/`False` for none.
        Returns:
            [len(names), D] float32 (a new array).
        """

        def computed() -> np.ndarray:
            return self.compute_name_embeddings(names, templates, batch_size)

        directory = resolve_cache_dir(cache_dir)
        if directory is None:
            return computed()
        description = self.cache_description(names, templates)
        return EmbeddingStore(directory).load_or_compute(description, len(names), computed)

    def cache_description(self, names: Sequence[str], templates: Sequence[str]) -> str:
        """Canonical JSON of everything the embeddings of `names` depend on (the cache key is its hash)."""
        if self._identity is None:
            text_config = self._config.get("text_config")
            tokenizer_config = self.folder / TOKENIZER_CONFIG_FILE
            tokenizer_config_fingerprint = (
                file_fingerprint(tokenizer_config, whole=True) if tokenizer_config.is_file() else None
            )
            self._identity = {
                "format": CACHE_FORMAT,
                "backend": "onnxruntime",
                "text_graph": file_fingerprint(self.graph_path),
                "tokenizer": file_fingerprint(self.folder / TOKENIZER_FILE, whole=True),
                "tokenizer_config": tokenizer_config_fingerprint,
                "text_config": text_config_description(text_config if isinstance(text_config, dict) else {}),
                "projection_dim": self.embedding_dim,
                "dtype": str(self._config.get("dtype") or "float32"),  # the graphs' precision
            }
        description = {**self._identity, "templates": list(templates), "names": list(names)}
        return json.dumps(description, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def file_fingerprint(path: Path, whole: bool = False) -> str:
    """Hex digest identifying a file's content: all of it with `whole`, else its size, its first and last 64 KiB
    and 4096 samples of 16 bytes spread evenly over it (a few milliseconds for a file of hundreds of MiB)."""
    digest = hashlib.blake2b(digest_size=20)
    size = path.stat().st_size
    digest.update(f"{size}|".encode())
    with open(path, "rb") as handle:
        if whole or size <= 2 * _FINGERPRINT_EDGE_BYTES + _FINGERPRINT_SAMPLES * _FINGERPRINT_SAMPLE_BYTES:
            digest.update(handle.read())
            return digest.hexdigest()
        digest.update(handle.read(_FINGERPRINT_EDGE_BYTES))
        handle.seek(size - _FINGERPRINT_EDGE_BYTES)
        digest.update(handle.read(_FINGERPRINT_EDGE_BYTES))
        last = size - _FINGERPRINT_SAMPLE_BYTES
        for index in range(_FINGERPRINT_SAMPLES):
            handle.seek(index * last // (_FINGERPRINT_SAMPLES - 1))
            digest.update(handle.read(_FINGERPRINT_SAMPLE_BYTES))
    return digest.hexdigest()


__all__ = ["ExportedTextTower", "ExportedTokenizer", "file_fingerprint", "normalize_rows", "pad_token_ids"]
