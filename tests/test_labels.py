"""Class entries: synonyms, files, and the errors for empty, blank or repeated classes."""

from __future__ import annotations

import pytest

from naclip_hf.label_files import read_labels_file, read_templates_file
from naclip_hf.models.naclip.labels import flatten_class_names, parse_class_entries


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


def test_labels_file_with_byte_order_mark_and_windows_line_ends(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_bytes("\ufeffsky, wall\r\ncat\r\ncafé\r\n\r\n".encode())
    assert read_labels_file(path) == [["sky", "wall"], ["cat"], ["café"]]


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_labels_file_that_is_not_utf8_names_file_line_and_offset(tmp_path, bom):
    path = tmp_path / "latin1.txt"
    body = "cat\r\ndog\r\ncafé\r\n".encode("latin-1")  # é is the single byte 0xe9
    path.write_bytes(bom + body)
    offset = len(bom) + body.index(b"\xe9")
    with pytest.raises(ValueError) as caught:
        read_labels_file(path)
    message = str(caught.value)
    assert str(path) in message
    assert "line 3" in message and f"byte offset {offset}" in message
    assert "save the file as UTF-8" in message


def test_templates_file(tmp_path):
    path = tmp_path / "templates.txt"
    path.write_bytes("\ufeffa photo of a {}.\r\n\r\n  a {} in {{braces}}  \r\nune photo d'un {}.\r\n".encode())
    templates = read_templates_file(path)
    assert templates == ["a photo of a {}.", "a {} in {{braces}}", "une photo d'un {}."]
    assert [t.format("cat") for t in templates] == ["a photo of a cat.", "a cat in {braces}", "une photo d'un cat."]


@pytest.mark.parametrize(
    "line,message",
    [
        ("a photo.", "no placeholder"),
        ("a {} and a {}.", "{}, {}"),
        ("a {0}.", "{0}"),
        ("a {name}.", "{name}"),
        ("a {{}}.", "no placeholder"),
        ("a {} with { brace", "literal brace"),
    ],
)
def test_bad_template_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "templates.txt"
    path.write_text(f"a photo of a {{}}.\n\n{line}\n", encoding="utf-8")
    with pytest.raises(ValueError) as caught:
        read_templates_file(path)
    text = str(caught.value)
    assert f"{path}, line 3" in text and message in text


def test_templates_file_empty_missing_or_not_utf8(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="holds no template"):
        read_templates_file(empty)
    with pytest.raises(FileNotFoundError, match="one prompt template per line"):
        read_templates_file(tmp_path / "nope.txt")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("a photo of a {}.\nune photo d'un {} érodé.\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"line 2 \(byte offset 35\).*save the file as UTF-8"):
        read_templates_file(latin)
