"""Palettes, label maps, overlays with a legend, and class shares."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from naclip_hf.visualization import (
    MAX_PALETTE_SIZE,
    MIN_LEGEND_SIDE,
    blend,
    class_palette,
    class_shares,
    draw_legend,
    label_map_image,
    overlay_image,
)


def grey_image(width: int = 200, height: int = 150) -> Image.Image:
    return Image.new("RGB", (width, height), (128, 128, 128))


def split_segmentation(height: int = 150, width: int = 200) -> np.ndarray:
    """Class 0 on the left half, class 2 on the right half; class 1 absent."""
    segmentation = np.zeros((height, width), dtype=np.int64)
    segmentation[:, width // 2 :] = 2
    return segmentation


def test_palette_is_deterministic_and_distinct():
    palette = class_palette(256)
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    np.testing.assert_array_equal(palette, class_palette(256))
    assert len({tuple(colour) for colour in palette.tolist()}) == 256
    # A shorter palette is the start of a longer one, so class colours do not depend on the class count.
    np.testing.assert_array_equal(class_palette(21), palette[:21])
    distances = np.sqrt(((palette[:21, None].astype(float) - palette[None, :21].astype(float)) ** 2).sum(-1))
    np.fill_diagonal(distances, np.inf)
    assert distances.min() > 60  # the first 21 colours are far apart in RGB
    # The returned array is a copy: editing it does not change later palettes.
    palette[0] = 0
    assert class_palette(256)[0].tolist() != [0, 0, 0]
    assert class_palette(0).shape == (0, 3)
    for bad in (-1, MAX_PALETTE_SIZE + 1):
        with pytest.raises(ValueError, match="num_classes"):
            class_palette(bad)


def test_label_map_image_holds_class_ids_and_palette():
    segmentation = split_segmentation()
    segmentation[0, 0] = 1
    palette = class_palette(3)
    image = label_map_image(segmentation, palette)
    assert image.mode == "P" and image.size == (200, 150)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    reloaded = Image.open(io.BytesIO(buffer.getvalue()))
    assert reloaded.mode == "P"
    np.testing.assert_array_equal(np.asarray(reloaded), segmentation)
    np.testing.assert_array_equal(np.asarray(reloaded.convert("RGB")), palette[segmentation])


def test_label_map_image_many_classes_and_bad_ids():
    segmentation = np.array([[0, 299], [150, 7]])
    image = label_map_image(segmentation, class_palette(300))
    assert image.mode == "I;16"
    np.testing.assert_array_equal(np.asarray(image), segmentation)
    with pytest.raises(ValueError, match="outside"):
        label_map_image(np.array([[0, 3]]), class_palette(3))
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        label_map_image(np.zeros((2, 2, 2), dtype=np.int64), class_palette(3))
    with pytest.raises(ValueError, match="integer"):
        label_map_image(np.zeros((2, 2)), class_palette(3))


def test_class_shares():
    segmentation = np.array([[0, 0, 0, 2], [2, 0, 0, 0]])
    shares = class_shares(segmentation, ["sky", "cat", "dog"])
    assert shares == {"sky": 0.75, "dog": 0.25}
    assert list(shares) == ["sky", "dog"]  # largest first, absent classes left out
    assert sum(shares.values()) == pytest.approx(1.0)
    tie = class_shares(np.array([[1, 0]]), ["a", "b"])
    assert list(tie) == ["a", "b"]  # equal shares keep class order
    assert class_shares(np.zeros((0, 3), dtype=np.int64), ["a"]) == {}
    with pytest.raises(ValueError, match="outside"):
        class_shares(np.array([[5]]), ["a"])


def test_blend():
    image = grey_image(4, 3)
    segmentation = np.ones((3, 4), dtype=np.int64)
    palette = np.array([[0, 0, 0], [255, 0, 0]], dtype=np.uint8)
    assert np.asarray(blend(image, segmentation, palette, alpha=0.0)).tolist() == np.asarray(image).tolist()
    assert (np.asarray(blend(image, segmentation, palette, alpha=1.0)) == [255, 0, 0]).all()
    assert np.asarray(blend(image, segmentation, palette, alpha=0.5))[0, 0].tolist() == [192, 64, 64]
    with pytest.raises(ValueError, match="alpha"):
        blend(image, segmentation, palette, alpha=1.5)
    with pytest.raises(ValueError, match="does not match"):
        blend(image, np.ones((4, 3), dtype=np.int64), palette)


def test_overlay_keeps_size_and_draws_legend_in_corner():
    image, segmentation = grey_image(), split_segmentation()
    labels = ["sky", "cat", "dog"]
    palette = class_palette(3)
    overlay = overlay_image(image, segmentation, labels, palette, alpha=0.5)
    assert overlay.mode == "RGB" and overlay.size == image.size
    plain = np.asarray(blend(image, segmentation, palette, alpha=0.5)).astype(int)
    drawn = np.asarray(overlay).astype(int)
    changed = np.abs(drawn - plain).sum(-1) > 0
    assert changed[:60, :120].sum() > 300  # the legend box in the top-left corner
    assert not changed[75:, :].any() and not changed[:, 150:].any()  # the rest is the plain blend
    # Each present class has a swatch in its exact colour (the blend never shows the pure colour).
    legend = drawn[:60, :120].reshape(-1, 3).tolist()
    for class_id in (0, 2):
        assert palette[class_id].tolist() in legend
    assert palette[1].tolist() not in legend  # an absent class gets no swatch


def test_legend_lists_only_present_classes():
    image, segmentation = grey_image(), split_segmentation()
    palette = class_palette(3)
    one = overlay_image(image, segmentation, ["sky", "cat", "dog"], palette)
    other_absent_name = overlay_image(image, segmentation, ["sky", "a much longer absent name", "dog"], palette)
    assert np.array_equal(np.asarray(one), np.asarray(other_absent_name))
    longer_present_name = overlay_image(image, segmentation, ["sky and clouds far away", "cat", "dog"], palette)
    assert not np.array_equal(np.asarray(one), np.asarray(longer_present_name))


def test_legend_with_many_classes_and_small_images():
    labels = [f"class {index}" for index in range(40)]
    segmentation = (np.arange(150 * 200).reshape(150, 200) % 40).astype(np.int64)
    overlay = overlay_image(grey_image(), segmentation, labels, class_palette(40))
    assert overlay.size == (200, 150)
    plain = np.asarray(blend(grey_image(), segmentation, class_palette(40)))
    changed = np.abs(np.asarray(overlay).astype(int) - plain.astype(int)).sum(-1) > 0
    assert changed[:, :5].sum() > 0 and changed[-20:, 120:].sum() == 0  # "+N more" keeps the box inside
    small = grey_image(MIN_LEGEND_SIDE - 1, 40)
    small_segmentation = np.zeros((40, MIN_LEGEND_SIDE - 1), dtype=np.int64)
    np.testing.assert_array_equal(
        np.asarray(overlay_image(small, small_segmentation, ["a"], class_palette(1))),
        np.asarray(blend(small, small_segmentation, class_palette(1))),
    )


def test_overlay_accepts_arrays_and_checks_palette():
    array = np.full((80, 100, 3), 50, dtype=np.uint8)
    segmentation = np.zeros((80, 100), dtype=np.int64)
    assert overlay_image(array, segmentation, ["a"], class_palette(1)).size == (100, 80)
    with pytest.raises(ValueError, match="palette"):
        overlay_image(array, segmentation, ["a", "b"], class_palette(1))


def _legend_text_pixels(label: str) -> np.ndarray:
    """The legend drawn for one class named `label` over a black image, as an array."""
    image = Image.new("RGB", (200, 150), (0, 0, 0))
    return np.asarray(draw_legend(image, [(label, "", (200, 30, 30))], font_size=20))


def test_legend_draws_cjk_names_with_a_font_that_has_them():
    from naclip_hf.visualization import fallback_font_paths, font_for_text

    if not any(path for path in fallback_font_paths() if "CJK" in path or "cjk" in path):
        pytest.skip("no CJK font on this system (Debian/Ubuntu: apt-get install fonts-noto-cjk)")
    cat, dog = _legend_text_pixels("猫"), _legend_text_pixels("犬")
    missing = _legend_text_pixels("\U0010fffd")  # a code point without a glyph in any font: the box
    assert not np.array_equal(cat, dog), "two CJK names must not render as the same missing-glyph box"
    assert not np.array_equal(cat, missing) and not np.array_equal(dog, missing)
    assert "CJK" in getattr(font_for_text("猫", 20), "path", "").upper()
    # Latin names keep Pillow's built-in font.
    assert not isinstance(getattr(font_for_text("cat", 20), "path", None), str)
    mixed = _legend_text_pixels("犬 dog")
    assert not np.array_equal(mixed, dog)


def test_blend_in_row_bands_equals_the_whole_image_formula(monkeypatch):
    from naclip_hf import visualization

    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (37, 23, 3), dtype=np.uint8)
    segmentation = rng.integers(0, 5, (37, 23))
    palette = visualization.class_palette(5)
    expected = np.clip(np.rint(0.6 * image.astype(np.float32) + 0.4 * palette[segmentation].astype(np.float32)), 0, 255)
    monkeypatch.setattr(visualization, "_BLEND_BAND_PIXELS", 23 * 4)  # bands of 4 rows, the last one shorter
    banded = np.asarray(visualization.blend(image, segmentation, palette, alpha=0.4))
    np.testing.assert_array_equal(banded, expected.astype(np.uint8))
