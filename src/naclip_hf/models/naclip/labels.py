"""Class entries: one class per entry, synonyms separated by commas ("person, person in shirt")."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


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


def flatten_class_names(classes: Sequence[Sequence[str]]) -> tuple[list[str], list[int]]:
    """All names in class order, and the class index of each name."""
    names = [name for entry in classes for name in entry]
    name_to_class = [index for index, entry in enumerate(classes) for _ in entry]
    return names, name_to_class


__all__ = ["flatten_class_names", "parse_class_entries"]
