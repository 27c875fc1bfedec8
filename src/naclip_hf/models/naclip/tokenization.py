"""CLIP's tokenizer: loaded from a checkpoint or tokenizer folder, with OpenAI CLIP's BPE shipped as a fallback.

`clip_bpe/` inside this package holds `vocab.json` and `merges.txt` of the byte-pair encoding that OpenAI
published with CLIP (49,408 tokens, MIT licence). Every OpenAI CLIP model, and most CLIP checkpoints derived from
them, use it; a checkpoint folder written without a tokenizer can therefore still be used when its text tower
has exactly that vocabulary size.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Vocabulary size and context length of OpenAI CLIP's text tower.
OPENAI_CLIP_VOCAB_SIZE = 49408
CLIP_CONTEXT_LENGTH = 77
# A tokenizer whose model_max_length is above this was not told its context length.
_UNSET_MAX_LENGTH = 1_000_000


def builtin_bpe_dir() -> Path:
    """The folder of OpenAI CLIP's BPE (`vocab.json`, `merges.txt`) shipped with naclip-hf."""
    return Path(__file__).resolve().with_name("clip_bpe")


def has_tokenizer_files(folder: str | os.PathLike) -> bool:
    """Whether a local folder holds a tokenizer: `tokenizer.json`, or `vocab.json` with `merges.txt`."""
    folder = Path(folder)
    return (folder / "tokenizer.json").is_file() or (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    )


def load_clip_tokenizer(source: str | os.PathLike | None, text_config: Any = None, *, fallback: bool = True) -> Any:
    """CLIP's tokenizer for a text model.

    Args:
        source: a local folder (a checkpoint or a folder with `vocab.json` and `merges.txt`), a Hub model id, or
            `None` for the built-in OpenAI CLIP BPE.
        text_config: the text model's config (anything with `vocab_size`, e.g. `CLIPTextConfig`); when given,
            the tokenizer's vocabulary must have that size.
        fallback: use the built-in BPE when `source` has no usable tokenizer (see below); `False` raises a
            `ValueError` instead, for a folder that was named on purpose as the tokenizer.

    Returns a `CLIPTokenizer` whose `model_max_length` is the folder's, or else the text model's context length
    (`max_position_embeddings`, 77 for CLIP).

    When the folder has no tokenizer files, or its vocabulary size differs from `text_config.vocab_size`, the
    built-in BPE is used if the text model has OpenAI CLIP's 49,408-token vocabulary (a warning says so);
    otherwise a `ValueError` names the folder and the fix. A folder without tokenizer files and no
    `text_config` to check against also raises.
    """
    from transformers import CLIPTokenizer

    vocab_size = _config_value(text_config, "vocab_size")
    context_length = _config_value(text_config, "max_position_embeddings") or CLIP_CONTEXT_LENGTH
    if source is None:
        return _builtin(vocab_size, context_length, None)

    source_text = os.fspath(source)
    is_local = os.path.isdir(source_text)
    if (isinstance(source, os.PathLike) and not is_local) or os.path.isfile(source_text):
        raise FileNotFoundError(
            f"Tokenizer folder {source_text} does not exist or is not a folder; give the folder holding "
            "vocab.json and merges.txt (or tokenizer.json) of the model's tokenizer."
        )
    problem = None
    tokenizer = None
    if is_local and not has_tokenizer_files(source_text):
        problem = f"{source_text} has no tokenizer files (vocab.json and merges.txt, or tokenizer.json)"
    else:
        try:
            tokenizer = CLIPTokenizer.from_pretrained(source_text)
        except Exception as error:  # missing files, bad JSON, no network: many exception types
            raise OSError(
                f"Could not load a CLIP tokenizer from {source_text!r} ({type(error).__name__}: {error}); give a "
                "folder with vocab.json and merges.txt of the model's tokenizer, or a Hub model id that is "
                "reachable or cached."
            ) from error
        size = len(tokenizer)
        if size <= 2:  # transformers builds a tokenizer holding only special tokens when the files are missing
            problem = f"{source_text} gives an empty tokenizer vocabulary ({size} tokens)"
        elif vocab_size is not None and size != vocab_size:
            problem = f"the tokenizer of {source_text} has {size} tokens but the text model has {vocab_size}"
    if problem is not None and not fallback:
        raise ValueError(
            f"No usable tokenizer: {problem}. Give the folder with vocab.json and merges.txt of the model's "
            "own tokenizer."
        )
    if problem is not None:
        return _builtin(vocab_size, context_length, problem)
    if tokenizer.model_max_length > _UNSET_MAX_LENGTH:
        tokenizer.model_max_length = context_length
    return tokenizer


def _builtin(vocab_size: int | None, context_length: int, problem: str | None) -> Any:
    """The built-in BPE, or a `ValueError` when the text model's vocabulary is not OpenAI CLIP's."""
    from transformers import CLIPTokenizer

    if problem is not None and vocab_size != OPENAI_CLIP_VOCAB_SIZE:
        expected = "an unknown size" if vocab_size is None else f"{vocab_size} tokens"
        raise ValueError(
            f"No usable tokenizer: {problem}, and the built-in OpenAI CLIP BPE ({OPENAI_CLIP_VOCAB_SIZE} tokens) "
            f"cannot stand in for a text model with {expected}. Add vocab.json and merges.txt of the model's "
            "tokenizer to that folder, or convert the weights again with `naclip convert ... --tokenizer DIR`."
        )
    if vocab_size is not None and vocab_size != OPENAI_CLIP_VOCAB_SIZE:
        raise ValueError(
            f"The text model has a vocabulary of {vocab_size} tokens, not OpenAI CLIP's {OPENAI_CLIP_VOCAB_SIZE}, "
            "so the built-in BPE does not fit it; give the model's own tokenizer (e.g. `naclip convert ... "
            "--tokenizer DIR` with vocab.json and merges.txt)."
        )
    if problem is not None:
        logger.warning("%s; using the built-in OpenAI CLIP BPE (%s).", problem, builtin_bpe_dir())
    else:
        logger.info("Using the built-in OpenAI CLIP BPE (%s).", builtin_bpe_dir())
    return CLIPTokenizer.from_pretrained(str(builtin_bpe_dir()), model_max_length=context_length)


def tokenizer_max_length(model_max_length: Any) -> int:
    """The length prompts are truncated to: a tokenizer's `model_max_length`, or CLIP's context length when that
    is not a usable number of tokens (a tokenizer not told its length reports a huge one)."""
    usable = isinstance(model_max_length, int) and not isinstance(model_max_length, bool)
    return model_max_length if usable and 0 < model_max_length <= 10_000 else CLIP_CONTEXT_LENGTH


def _config_value(config: Any, key: str) -> int | None:
    if config is None:
        return None
    value = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
    return None if value is None else int(value)


__all__ = [
    "CLIP_CONTEXT_LENGTH", "OPENAI_CLIP_VOCAB_SIZE", "builtin_bpe_dir", "has_tokenizer_files",
    "load_clip_tokenizer", "tokenizer_max_length"
]
