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
        raise ValueError("No class names given; pass at least one label (e.g. candidate_labels=['cat', 'dog']).")
    seen: dict[str, int] = {}
    for index, names in enumerate(classes):
        if names[0] in seen:
            raise ValueError(
                f"Class {names[0]!r} is given twice (entries {seen[names[0]]} and {index}); "
                "list each class once and put synonyms on the same entry."
            )
        seen[names[0]] = index
    return classes


def parse_label_set(entries: Iterable[str | Sequence[str]], argument: str = "candidate_labels") -> list[list[str]]:
    """`parse_class_entries` for the classes to segment into: one class (it would label every pixel) raises
    `ValueError` with the fix for `argument`: an option (`--labels`), a Python argument, or where lines are read."""
    classes = parse_class_entries(entries)
    if len(classes) > 1:
        return classes
    names = [*classes[0], "background"][: max(2, len(classes[0]))]  # the synonyms as classes, or a second class
    given = ": commas join synonyms of one class" if len(classes[0]) > 1 else ", which every pixel would get"
    quoted = " ".join(f"'{name}'" if " " in name else name for name in names)
    fix = (f"each its own argument: {argument} {quoted}" if argument.startswith("-")
           else f"each its own list entry: {argument}={names!r}" if argument.isidentifier()
           else f"one per line of {argument} (e.g. {' and '.join(map(repr, names))} on separate lines)")  # fmt: skip
    raise ValueError(f"one class given ({', '.join(classes[0])!r}{given}); name at least two classes, {fix}")


def flatten_class_names(classes: Sequence[Sequence[str]]) -> tuple[list[str], list[int]]:
    """All names in class order, and the class index of each name."""
    names = [name for entry in classes for name in entry]
    name_to_class = [index for index, entry in enumerate(classes) for _ in entry]
    return names, name_to_class


__all__ = ["flatten_class_names", "parse_class_entries", "parse_label_set"]
