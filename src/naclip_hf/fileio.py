"""Writing files so that readers never see half of one: write a temporary file beside it, then rename."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call `write(temporary_path)`, then move the result onto `path` with `os.replace` (the temporary file is
    removed if anything fails). Returns `path`."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically, creating its folder if needed. Returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


__all__ = ["write_atomic", "write_text_atomic"]
