"""Writing files and folders so that readers never see half of one: write a temporary file or folder beside the
target, give it the permissions a new file or folder would get, then rename it into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def current_umask() -> int:
    """The process's file-mode creation mask (e.g. 0o022)."""
    try:  # Linux reports it without changing it, which is safe with other threads running
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_default_modes(root: str | os.PathLike) -> None:
    """Give a folder written by other code (e.g. `save_pretrained`, which writes weights with mode 0o600) the
    usual permissions: `root` and every folder below it get 0o777 without the umask's bits, every file 0o666
    without them (plus the execute bits it already had, also without the umask's). Symbolic links are left
    alone."""
    umask = current_umask()
    os.chmod(root, 0o777 & ~umask)
    for folder, folders, files in os.walk(root):
        for name in folders:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o777 & ~umask)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                executable = os.stat(path).st_mode & 0o111
                os.chmod(path, (0o666 | executable) & ~umask)


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call `write(temporary_path)`, then move the result onto `path` with `os.replace`. The result gets the
    usual permissions of a new file (0o666 without the umask's bits), whatever `write` created it with. The
    temporary file is removed if anything fails. Returns `path`."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(temporary)
        os.chmod(temporary, (0o777 if temporary.is_dir() else 0o666) & ~current_umask())  # as mkdir / open()
        os.replace(temporary, path)
    finally:
        if temporary.is_dir() and not temporary.is_symlink():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                temporary.unlink()
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically, creating its folder if needed. Returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


@contextlib.contextmanager
def staged_directory(output_dir: str | os.PathLike) -> Iterator[Path]:
    """Fill a new folder atomically: yields an empty staging folder beside `output_dir`. When the block ends
    without an error, the staging folder and everything in it get the usual modes of new folders and files
    (0o777 and 0o666 without the umask's bits, whatever the writers used), and it is renamed to `output_dir`,
    which must not exist or be empty. On an error it is removed, and `output_dir` is left as it was.

    Raises `FileExistsError` if `output_dir` is a file or a folder that is not empty.
    """
    output_dir = Path(output_dir)
    _check_free(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        yield staging
        apply_default_modes(staging)
        _check_free(output_dir)
        if output_dir.exists():
            output_dir.rmdir()
        staging.rename(output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _check_free(output_dir: Path) -> None:
    if output_dir.is_dir() and not any(output_dir.iterdir()):
        return
    if output_dir.is_file():
        raise FileExistsError(f"{output_dir} is a file; give the path of a new folder.")
    if output_dir.exists() or output_dir.is_symlink():
        raise FileExistsError(f"{output_dir} exists and is not empty; choose a new folder or empty it first.")


__all__ = [
    "apply_default_modes",
    "current_umask",
    "staged_directory",
    "write_atomic",
    "write_text_atomic",
]
