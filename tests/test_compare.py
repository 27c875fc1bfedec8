"""`naclip compare` end to end on the tiny checkpoint (both figure layouts), and the figure functions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from naclip_hf import figures
from naclip_hf.attention_maps import attention_maps
from naclip_hf.cli import main
from naclip_hf.figures import (
    LEGEND_FRAME,
    attention_figure,
    heat_colours,
    segmentation_figure,
    text_size,
)
from naclip_hf.inference import load_model, load_processor
from naclip_hf.methods import get_method
from naclip_hf.visualization import class_palette


@pytest.fixture
def image_path(tmp_path):
    path = tmp_path / "photo.png"
    pixels = np.zeros((40, 56, 3), dtype=np.uint8)
    pixels[:, :28] = (30, 90, 200)
    pixels[:, 28:] = (200, 160, 60)
    pixels += np.random.default_rng(0).integers(0, 30, size=pixels.shape, dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_compare_writes_the_segmentation_figure(tiny_checkpoint, image_path, tmp_path, capsys):
    out = tmp_path / "figs" / "compare.png"
    code = main(["compare", str(image_path), "--labels", "sky", "dog, puppy", "--methods", "clip", "sclip", "naclip",
                 "--model", str(tiny_checkpoint), "--set", "short_side=32", "--panel-height", "96",
                 "--out", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"Wrote {out}" in captured.out
    with Image.open(out) as figure:
        assert figure.format == "PNG" and figure.mode == "RGB"
        pixels = np.asarray(figure)
    # four panels (image + three methods) of 96 × 134 pixels, and a legend, in one row
    assert pixels.shape[0] > 96 and pixels.shape[1] > 4 * 134
    palette = class_palette(2)
    colours = {tuple(c) for c in pixels.reshape(-1, 3)}
    assert any(tuple(int(v) for v in c) in colours for c in palette), "the legend shows the class colours"


def test_compare_attention_figure(tiny_checkpoint, image_path, tmp_path, capsys):
    out = tmp_path / "attention.png"
    code = main(["compare", str(image_path), "--attention-at", "10,20", "--methods", "maskclip", "naclip",
                 "--model", str(tiny_checkpoint), "--set", "short_side=32", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    with Image.open(out) as figure:
        assert figure.size[0] > 3 * figure.size[1] * 0.9  # three panels side by side


def test_attention_maps_follow_the_clicked_patch(tiny_checkpoint, image_path):
    model, processor = load_model(str(tiny_checkpoint)), load_processor(str(tiny_checkpoint))
    found = attention_maps(model, processor, image_path, (50, 35), ["maskclip", "naclip"], short_side=64)
    maps = dict(zip(found.methods, found.heat))
    # MaskCLIP's token attends only to itself: the map is brightest at the clicked patch (bottom right).
    maskclip = maps["maskclip"]
    assert maskclip.shape == (40, 56) and maskclip.max() == 1.0
    row, column = np.unravel_index(np.argmax(maskclip), maskclip.shape)
    assert row >= 20 and column >= 28
    # NACLIP's map equals the head-averaged row of that patch recomputed from the model.
    pixel_values = processor.image_processor(str(image_path), short_side=64)["pixel_values"]
    with torch.no_grad():
        weights = model.encode_patches(pixel_values, output_attentions=True).attentions[-1][0].mean(0)
    patch = model.config.vision_config.patch_size
    height, width = pixel_values.shape[-2:]
    grid = (height // patch, width // patch)
    row, column = min(int(35 * height / 40) // patch, grid[0] - 1), min(int(50 * width / 56) // patch, grid[1] - 1)
    token = 1 + row * grid[1] + column
    row_map = weights[token, 1:].reshape(1, 1, *grid)
    # The grid covers all but the image's last partial patch, whose pixels repeat their neighbours' values.
    covered = (round(grid[0] * patch * 40 / height), round(grid[1] * patch * 56 / width))
    resized = torch.nn.functional.interpolate(row_map, size=covered, mode="bilinear", align_corners=False)
    resized = torch.nn.functional.pad(resized, (0, 56 - covered[1], 0, 40 - covered[0]), mode="replicate")[0, 0]
    expected = (resized - resized.min()) / (resized.max() - resized.min())
    np.testing.assert_allclose(maps["naclip"], expected.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match=r"outside the image, which is 56×40 pixels"):
        attention_maps(model, processor, image_path, (56, 3), ["naclip"])


def test_figure_functions_without_a_model():
    image = np.full((30, 40, 3), 128, dtype=np.uint8)
    first = np.zeros((30, 40), dtype=np.int64)
    second = first.copy()
    second[:, 20:] = 2
    figure = segmentation_figure(image, {"clip": first, "naclip": second}, ["a", "b", "c"], panel_height=64)
    assert figure.height > 64
    assert heat_colours(np.array([[0.0, 1.0]])).tolist() == [[[0, 0, 4], [252, 255, 164]]]
    maps = {"sclip": np.linspace(0, 1, 30 * 40).reshape(30, 40)}
    assert attention_figure(image, maps, (5, 5), panel_height=64).height > 64
    with pytest.raises(ValueError, match="is \\(3, 3\\), the image \\(30, 40\\)"):
        attention_figure(image, {"sclip": np.zeros((3, 3))}, (5, 5))
    assert get_method("sclip").title == "SCLIP"


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of each run of True in a 1-D boolean array."""
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    starts, ends = np.flatnonzero(np.diff(padded) == 1), np.flatnonzero(np.diff(padded) == -1) - 1
    return list(zip(starts.tolist(), ends.tolist()))


@pytest.mark.parametrize("panel_height", [96, 256])
def test_legend_text_is_as_tall_as_the_titles_and_its_frame_fits_the_entries(panel_height):
    # A flat grey image and light colours: the only near-black pixels are text. Class 0 is called "CLIP", like the
    # title of the first method, so the legend and the title draw the same glyphs.
    image = np.full((48, 64, 3), 230, dtype=np.uint8)
    segmentations = {"clip": np.zeros((48, 64), np.int64), "naclip": np.ones((48, 64), np.int64)}
    figure = segmentation_figure(image, segmentations, ["CLIP", "sky"], alpha=0.3, panel_height=panel_height)
    pixels = np.asarray(figure).astype(np.int64)
    dark = pixels.max(axis=2) < 80
    panel_rows = _runs(((pixels == 230).all(axis=2)).sum(axis=1) > 16)
    assert len(panel_rows) == 1 and panel_rows[0][1] - panel_rows[0][0] + 1 == panel_height
    top = panel_rows[0][0]
    panels = _runs((pixels[top + 1] != 255).any(axis=1))
    clip_columns = slice(panels[1][0], panels[1][1] + 1)
    title = _runs(dark[:top, clip_columns].any(axis=1))
    assert len(title) == 1, "one line of title text above the CLIP panel"
    legend_lines = _runs(dark[top:].any(axis=1))
    assert len(legend_lines) == 2, "two legend entries, one line each"
    title_height = title[0][1] - title[0][0] + 1
    legend_height = legend_lines[0][1] - legend_lines[0][0] + 1
    assert legend_height >= title_height >= 0.6 * text_size(panel_height)

    # The frame hugs the entries (swatches and labels) and the figure ends just after it.
    frame = (pixels == LEGEND_FRAME).all(axis=2)
    frame_rows, frame_columns = np.flatnonzero(frame.any(axis=1)), np.flatnonzero(frame.any(axis=0))
    inside = pixels[frame_rows[0] + 1 : frame_rows[-1], frame_columns[0] + 1 : frame_columns[-1]]
    content = (inside != 255).any(axis=2)
    content_rows, content_columns = np.flatnonzero(content.any(axis=1)), np.flatnonzero(content.any(axis=0))
    margins = [content_rows[0], content.shape[0] - 1 - content_rows[-1], content_columns[0],
               content.shape[1] - 1 - content_columns[-1]]  # fmt: skip
    assert max(margins) <= text_size(panel_height) // 2
    assert figure.width - 1 - frame_columns[-1] <= text_size(panel_height) // 2
    assert frame_rows[-1] - frame_rows[0] < panel_height


def test_a_long_legend_takes_columns_then_goes_below_the_panels():
    labels = [f"class {index}" for index in range(40)]
    palette = class_palette(len(labels))
    entries = [(label, tuple(palette[i].tolist())) for i, label in enumerate(labels[:12])]
    side = figures._draw_legend(entries, 16, figures._legend_layout(entries, 16, max_height=100))
    assert side.height <= 100
    side_pixels = {tuple(c) for c in np.asarray(side).reshape(-1, 3).tolist()}
    assert all(tuple(colour) in side_pixels for colour in palette[:12].tolist()), "every entry is drawn"

    image = np.full((30, 40, 3), 230, dtype=np.uint8)
    segmentation = np.arange(30 * 40).reshape(30, 40) % len(labels)
    figure = segmentation_figure(image, {"clip": segmentation}, labels, panel_height=64)
    pixels = np.asarray(figure)
    without_legend = attention_figure(image, {"clip": np.zeros((30, 40))}, (0, 0), panel_height=64)
    assert figure.width == without_legend.width, "the legend does not widen the figure"
    assert figure.height > without_legend.height
    below = {tuple(c) for c in pixels[64:].reshape(-1, 3).tolist()}
    assert all(tuple(colour) in below for colour in palette.tolist()), "every class has its swatch below"


def test_compare_errors_before_loading(image_path, tmp_path, capsys):
    code = main(["compare", str(image_path), "--model", "/nonexistent/model", "--out", str(tmp_path / "x.png")])
    assert code == 2 and "No labels given" in capsys.readouterr().err
    code = main(["compare", str(image_path), "--labels", "a", "b", "--out", str(tmp_path / "x.jpg")])
    assert code == 2 and "ending in .png" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compare", str(image_path), "--labels", "a", "b", "--methods", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
