"""Labels and templates files: one class per line (synonyms after commas) or one prompt template per line, read
with clear errors for encodings, blank lines and repeats."""

from __future__ import annotations

import codecs
import os
import re
import string
from pathlib import Path

from .models.naclip.labels import parse_label_set


def read_labels_file(path: str | os.PathLike) -> list[list[str]]:
    """Read a class file: one class per line (line index = class id), synonyms separated by ', '.

    The file must be UTF-8 (a byte-order mark and Windows line ends are accepted); trailing blank lines are
    ignored. Raises `FileNotFoundError` for a missing file and `ValueError` for a file that is not UTF-8, holds a
    blank, empty or repeated class, or fewer than two classes (`parse_label_set`).
    """
    lines = _read_text_lines(path, "Labels file", "a text file with one class per line")
    while lines and not lines[-1].strip():
        lines.pop()
    return parse_label_set(lines, f"the file {path}")


def read_templates_file(path: str | os.PathLike) -> list[str]:
    """Read prompt templates: one per line, each with exactly one `{}` where the class name goes (e.g.
    `a photo of a {}.`; literal braces are written `{{` and `}}`). Blank lines are skipped and spaces around a
    template removed.

    The file must be UTF-8 (a byte-order mark and Windows line ends are accepted). Raises `FileNotFoundError`
    for a missing file and `ValueError`, naming the file and line, for a template without exactly one `{}`, for
    other braces, for a file that is not UTF-8, or for a file with no template.
    """
    lines = _read_text_lines(path, "Templates file", "a text file with one prompt template per line")
    templates: list[str] = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        try:
            fields = [field for _, field, _, _ in string.Formatter().parse(line) if field is not None]
        except ValueError as error:  # a lone '{' or '}'
            raise ValueError(
                f"{path}, line {number} ({line!r}): {error}; write a literal brace as '{{{{' or '}}}}', and the class "
                "name's place as '{}'."
            ) from error
        if fields != [""]:
            found = ", ".join("{" + field + "}" for field in fields) or "no placeholder"
            raise ValueError(
                f"{path}, line {number} ({line!r}) has {found} instead of "
                "exactly one empty '{}' where the class name goes; write it like 'a photo of a {}.'."
            )
        templates.append(line)
    if not templates:
        raise ValueError(
            f"Templates file {path} holds no template; write one template per line, e.g. 'a photo of a {{}}.'."
        )
    return templates


def _read_text_lines(path: str | os.PathLike, what: str, expected: str) -> list[str]:
    """The lines of a UTF-8 text file (byte-order mark removed; LF, CRLF or CR line ends), with errors that name
    the file, and for bytes that are not UTF-8, the line and byte offset."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist; give {expected}.")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        # utf-8-sig reports positions after the byte-order mark; give the offset in the file.
        offset = error.start + (len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0)
        line = len(re.findall(rb"\r\n|\r|\n", data[:offset])) + 1
        raise ValueError(
            f"{what} {path} is not UTF-8: byte {data[offset]:#04x} on line {line} (byte offset {offset}) is not "
            "valid UTF-8; save the file as UTF-8 (your editor's 'Save as' encoding setting, or "
            "`iconv -f OLD_ENCODING -t UTF-8 FILE > NEW_FILE`)."
        ) from None
    # Only CR and LF end a line (str.splitlines would also split on form feeds and Unicode separators).
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


__all__ = ["read_labels_file", "read_templates_file"]
