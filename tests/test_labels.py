"""Class entries: synonyms, files, and the errors for empty, blank or repeated classes."""

from __future__ import annotations

import pytest

from naclip_hf.labels import flatten_class_names, parse_class_entries, read_labels_file


def test_synonyms_split_on_commas_and_lists_taken_as_names():
    classes = parse_class_entries(["person, person in shirt", ["tv monitor", "monitor"], "cat"])
    assert classes == [["person", "person in shirt"], ["tv monitor", "monitor"], ["cat"]]
    names, name_to_class = flatten_class_names(classes)
    assert names == ["person", "person in shirt", "tv monitor", "monitor", "cat"]
    assert name_to_class == [0, 0, 1, 1, 2]


def test_benchmark_file_round_trip(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("sky, wall\ncat\n\n")
    assert read_labels_file(path) == [["sky", "wall"], ["cat"]]


@pytest.mark.parametrize(
    "entries,message",
    [
        ([], "No class names given"),
        (["cat", ""], "empty or blank name"),
        (["cat", "   "], "empty or blank name"),
        (["cat, , dog"], "empty or blank name"),
        ([[]], "empty or blank name"),
        (["cat", "dog", "cat"], "given twice"),
    ],
)
def test_bad_class_entries(entries, message):
    with pytest.raises(ValueError, match=message):
        parse_class_entries(entries)


def test_blank_line_inside_a_labels_file(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("cat\n\ndog\n")
    with pytest.raises(ValueError, match="entry 1"):
        read_labels_file(path)


def test_missing_labels_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="one class per line"):
        read_labels_file(tmp_path / "nope.txt")
