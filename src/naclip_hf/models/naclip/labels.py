"""Class entries: one class per entry, synonyms separated by commas ("person, person in shirt").

A label set to segment with needs at least two classes (`parse_label_set`): with one, every pixel gets it.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence

# Fewest classes a segmentation can choose between.
MIN_CLASSES = 2


def parse_class_entries(entries: Iterable[str | Sequence[str]]) -> list[list[str]]:
    """Split class entries into their names.

    A string entry is split on commas ("tv monitor, monitor" -> ["tv monitor", "monitor"]); a list entry is taken
    as the names themselves. Raises `ValueError` for no classes, a blank name, or a class repeated.
    """
    classes: list[list[str]] = []
    for position, entry in enumerate(entries):
        raw = entry.split(",") if isinstance(entry, str) else list(entry)
        names = [str(name).strip() for name in raw]
        if not names or any(not name for name in names):
            raise ValueError(
                f"Class entry {position} ({entry!r}) has an empty or blank name; every class needs at least one "
                "name, and synonyms are separated by ', '."
            )
        classes.append(names)
    if not classes:
        raise ValueError(
            "No class names given; pass at least one label (e.g. candidate_labels=['cat', 'dog'])."
        )
    seen: dict[str, int] = {}
    for index, names in enumerate(classes):
        if names[0] in seen:
            raise ValueError(
                f"Class {names[0]!r} is given twice (entries {seen[names[0]]} and {index}); "
                "list each class once and put synonyms on the same entry."
            )
        seen[names[0]] = index
    return classes


def too_few_classes_message(
    classes: Sequence[Sequence[str]], argument: str = "candidate_labels", one_per_line: bool = False
) -> str:
    """Why a label set of fewer than `MIN_CLASSES` classes is refused, and the fix in the entry point's terms.

    Args:
        classes: the parsed classes (fewer than two), each as its names.
        argument: how the entry point takes the classes: a command-line option (`"--labels"`), a Python argument
            (`"candidate_labels"`, `"classes"`) or, with `one_per_line`, what the lines are read from (a file, a
            text box).
        one_per_line: the classes come one per line.

    For `[["cup", "table"]]` and `"--labels"`: "one class given ('cup, table': commas join synonyms of one
    class); name at least two classes, each its own argument: --labels cup table".
    """
    names = list(classes[0]) if classes else []
    if not names:
        given, example = "no class given", ["cat", "dog"]
    elif len(names) == 1:
        given, example = f"one class given ({names[0]!r}); every pixel would get it", [names[0], "background"]
    else:
        given, example = f"one class given ({', '.join(names)!r}: commas join synonyms of one class)", names
    if one_per_line:
        fix = f"one per line of {argument} (e.g. " + " and ".join(map(repr, example)) + " on lines of their own)"
    elif argument.startswith("-"):
        fix = f"each its own argument: {argument} " + " ".join(shlex.quote(name) for name in example)
    else:
        fix = f"each its own list entry: {argument}={example!r}"
    return f"{given}; name at least two classes, {fix}"


def parse_label_set(
    entries: Iterable[str | Sequence[str]], argument: str = "candidate_labels", one_per_line: bool = False
) -> list[list[str]]:
    """The classes to segment with: `parse_class_entries`, and at least `MIN_CLASSES` of them (one class would
    label every pixel). Every entry point that takes class names from a user parses them here.

    `argument` and `one_per_line` name how the entry point takes the classes, for the message
    (`too_few_classes_message`). Raises `ValueError` for fewer than two classes and as `parse_class_entries`.
    """
    entries = list(entries)
    classes = parse_class_entries(entries) if entries else []
    if len(classes) < MIN_CLASSES:
        raise ValueError(too_few_classes_message(classes, argument, one_per_line))
    return classes


def flatten_class_names(classes: Sequence[Sequence[str]]) -> tuple[list[str], list[int]]:
    """All names in class order, and the class index of each name."""
    names = [name for entry in classes for name in entry]
    name_to_class = [index for index, entry in enumerate(classes) for _ in entry]
    return names, name_to_class


__all__ = ["MIN_CLASSES", "flatten_class_names", "parse_class_entries", "parse_label_set", "too_few_classes_message"]
