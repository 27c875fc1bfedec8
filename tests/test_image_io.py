"""Image inputs: bit depths, float ranges, NaN/inf, EXIF orientation, shapes, URLs, and the errors for bad ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from naclip_hf.models.naclip.image_io import describe_input, load_image, to_rgb_array

IMAGE_IO_FILE = Path(__file__).resolve().parents[1] / "src" / "naclip_hf" / "models" / "naclip" / "image_io.py"


@pytest.fixture
def picture() -> np.ndarray:
    """A random 8-bit RGB picture [23, 31, 3] covering 0 and 255."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(23, 31, 3), dtype=np.uint8)
    image[0, 0] = 0
    image[-1, -1] = 255
    return image


def _grey_as_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=-1)


# ------------------------------------------------------------------------------------------------ bit depth


def test_16_bit_grey_png_gives_back_the_8_bit_picture(tmp_path, picture):
    grey = picture[..., 0]
    path = tmp_path / "grey16.png"
    Image.fromarray(grey.astype(np.uint16) * 257).save(path)
    with Image.open(path) as stored:
        assert stored.mode in ("I;16", "I"), "the file must really hold 16-bit pixels"
        from_pil = to_rgb_array(stored)
    expected = _grey_as_rgb(grey)
    from_path = load_image(path)
    assert from_path.dtype == np.uint8 and from_path.shape == (23, 31, 3)
    np.testing.assert_array_equal(from_path, expected)
    np.testing.assert_array_equal(from_pil, expected)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I"])
def test_16_bit_pil_modes_are_scaled_by_bit_depth(picture, mode):
    grey = picture[..., 0]
    sixteen = grey.astype(np.uint16) * 257
    if mode == "I":
        image = Image.fromarray(sixteen.astype(np.int32))
    else:
        image = Image.new(mode, (grey.shape[1], grey.shape[0]))
        image.putdata(sixteen.ravel().tolist())
    assert image.mode == mode
    np.testing.assert_array_equal(to_rgb_array(image), _grey_as_rgb(grey))


def test_16_bit_values_are_rounded_to_the_nearest_8_bit_level():
    # round(v / 257): 128 / 257 = 0.498 -> 0, 129 / 257 = 0.502 -> 1, 2731 / 257 = 10.63 -> 11.
    values = np.array([[0, 128, 129, 2731, 65535]], dtype=np.uint16)
    np.testing.assert_array_equal(to_rgb_array(values)[0, :, 0], [0, 0, 1, 11, 255])


def test_16_bit_rgb_array_and_tensor(picture):
    sixteen = picture.astype(np.uint16) * 257
    np.testing.assert_array_equal(to_rgb_array(sixteen), picture)
    np.testing.assert_array_equal(to_rgb_array(sixteen.astype(">u2")), picture)
    channels_first = torch.from_numpy(sixteen.astype(np.int32)).permute(2, 0, 1)
    np.testing.assert_array_equal(to_rgb_array(channels_first), picture)  # int32 above 255: read as 16-bit


def test_other_integer_and_bool_arrays(picture):
    np.testing.assert_array_equal(to_rgb_array(picture.astype(np.int64)), picture)  # within 0..255: 8-bit
    thirty_two = picture.astype(np.uint32) * 16843009  # (2**32 - 1) / 255
    np.testing.assert_array_equal(to_rgb_array(thirty_two), picture)
    mask = picture[..., 0] > 127
    np.testing.assert_array_equal(to_rgb_array(mask), _grey_as_rgb(np.where(mask, 255, 0).astype(np.uint8)))
    with pytest.raises(ValueError, match=r"negative values \(min -3\)"):
        to_rgb_array(np.full((4, 4), -3, dtype=np.int16))
    with pytest.raises(ValueError, match="more than 32 bits"):
        to_rgb_array(np.full((4, 4), 2**40, dtype=np.int64))


# ------------------------------------------------------------------------------------------------ floats


def test_float_ranges(picture):
    zero_to_one = picture.astype(np.float32) / 255
    np.testing.assert_array_equal(to_rgb_array(zero_to_one), picture)
    np.testing.assert_array_equal(to_rgb_array(picture.astype(np.float64)), picture)  # max > 1: 0-255 scale
    tensor = torch.from_numpy(zero_to_one).permute(2, 0, 1)
    np.testing.assert_array_equal(to_rgb_array(tensor), picture)
    np.testing.assert_array_equal(to_rgb_array(tensor.to(torch.bfloat16).float()), to_rgb_array(tensor.float()))
    # The rule is decided by the values: an image whose floats all lie in [0, 1] is on the 0-1 scale.
    np.testing.assert_array_equal(to_rgb_array(np.array([[0.0, 0.5, 1.0]]))[0, :, 0], [0, 128, 255])
    np.testing.assert_array_equal(to_rgb_array(np.array([[0.0, 0.5, 2.0]]))[0, :, 0], [0, 0, 2])
    pil_float = Image.fromarray(zero_to_one[..., 1])
    assert pil_float.mode == "F"
    np.testing.assert_array_equal(to_rgb_array(pil_float), _grey_as_rgb(picture[..., 1]))


@pytest.mark.parametrize("low,high", [(-0.5, 0.5), (0.0, 255.5), (-1.0, 300.0)])
def test_float_values_outside_both_ranges_raise(low, high):
    values = np.linspace(low, high, 12, dtype=np.float32).reshape(3, 4)
    with pytest.raises(ValueError) as caught:
        to_rgb_array(values)
    message = str(caught.value)
    assert f"[{low:g}, {high:g}]" in message
    assert "rescale it to [0, 1] or [0, 255]" in message and "ndarray of shape (3, 4)" in message


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_raise(bad):
    values = np.full((5, 5, 3), 0.5, dtype=np.float32)
    values[2, 3, 1] = bad
    for image in (values, torch.from_numpy(values)):
        with pytest.raises(ValueError, match="contains NaN/inf values; replace them"):
            to_rgb_array(image)


# ------------------------------------------------------------------------------------------------ EXIF, shapes


def test_exif_orientation_is_applied_to_paths_and_pil_images(tmp_path):
    height, width = 40, 64
    rows = np.linspace(0, 255, height)[:, None, None]
    columns = np.linspace(0, 255, width)[None, :, None]
    stored = np.concatenate([np.broadcast_to(rows, (height, width, 1)), np.broadcast_to(columns, (height, width, 1)),
                             np.zeros((height, width, 1))], axis=-1).astype(np.uint8)  # fmt: skip
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: displayed after turning 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif)

    from_path = load_image(path)
    with Image.open(path) as opened:
        from_pil = to_rgb_array(opened)
        as_stored = np.asarray(opened.convert("RGB"))
    assert from_path.shape == (width, height, 3)
    np.testing.assert_array_equal(from_path, from_pil)
    np.testing.assert_array_equal(from_path, np.rot90(as_stored, k=-1))  # clockwise


def test_shapes(picture):
    grey = picture[..., 0]
    expected_grey = _grey_as_rgb(grey)
    np.testing.assert_array_equal(to_rgb_array(grey), expected_grey)
    np.testing.assert_array_equal(to_rgb_array(grey[..., None]), expected_grey)
    np.testing.assert_array_equal(to_rgb_array(torch.from_numpy(grey)[None]), expected_grey)  # [1, H, W]
    with_alpha = np.concatenate([picture, np.full(picture.shape[:2] + (1,), 7, np.uint8)], axis=-1)
    np.testing.assert_array_equal(to_rgb_array(with_alpha), picture)
    np.testing.assert_array_equal(to_rgb_array(Image.fromarray(with_alpha, "RGBA")), picture)
    np.testing.assert_array_equal(to_rgb_array(np.ascontiguousarray(picture.transpose(2, 0, 1))), picture)
    result = to_rgb_array(picture[:, ::2])
    assert result.flags["C_CONTIGUOUS"] and result.dtype == np.uint8
    with pytest.raises(ValueError, match=r"\[H, W\], \[H, W, 1\|3\|4\] or \[1\|3, H, W\]"):
        to_rgb_array(np.zeros((5, 6, 2), np.uint8))
    with pytest.raises(ValueError, match=r"one image at a time"):
        to_rgb_array(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="is empty"):
        to_rgb_array(np.zeros((0, 5, 3), np.uint8))


def test_unsupported_inputs_and_descriptions(tmp_path):
    with pytest.raises(TypeError, match="a file path .* an http\\(s\\) URL, a PIL image, a numpy array or a torch"):
        load_image([[0, 1], [2, 3]])
    with pytest.raises(TypeError, match="read files and URLs with naclip_hf.models.naclip.image_io.load_image"):
        to_rgb_array("photo.jpg")
    with pytest.raises(ValueError, match="not pixel values"):
        to_rgb_array(np.array([["a", "b"]]))
    assert describe_input(tmp_path / "x.png") == str(tmp_path / "x.png")
    assert describe_input(np.zeros((2, 3), np.float32)) == "ndarray of shape (2, 3) and dtype float32"
    assert describe_input(torch.zeros(3, 4, 5)) == "tensor of shape (3, 4, 5) and dtype torch.float32"
    assert describe_input(Image.new("L", (7, 5))) == "PIL image (mode L, 7x5)"
    assert describe_input(3) == "object of type int"


def test_missing_and_unreadable_files(tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(FileNotFoundError, match=f"Image file {missing} does not exist; check the path"):
        load_image(missing)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=f"Could not read image file {text} .*complete image"):
        load_image(text)
    truncated = tmp_path / "truncated.png"
    Image.new("RGB", (64, 64), "red").save(tmp_path / "full.png")
    truncated.write_bytes((tmp_path / "full.png").read_bytes()[:60])
    with pytest.raises(ValueError, match=str(truncated)):
        load_image(truncated)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        load_image(tmp_path)


# ------------------------------------------------------------------------------------------------ URLs


def test_url_is_downloaded_and_read_like_a_file(http_folder, picture):
    folder, base = http_folder
    Image.fromarray(picture).save(folder / "pic.png")
    np.testing.assert_array_equal(load_image(f"{base}/pic.png", timeout=10), picture)
    with pytest.raises(OSError, match=rf"{base}/missing.png: HTTP 404 .*download the file and pass its path"):
        load_image(f"{base}/missing.png", timeout=10)
    (folder / "page.html").write_text("<html>a page about a picture</html>")
    with pytest.raises(ValueError, match=rf"{base}/page.html did not return a readable image"):
        load_image(f"{base}/page.html", timeout=10)


def test_unreachable_url_names_the_url_and_the_fix(closed_port_url):
    url = closed_port_url
    with pytest.raises(OSError) as caught:
        load_image(url, timeout=5)
    message = str(caught.value)
    assert url in message and "network connection" in message and "download the file and pass its path" in message
    with pytest.raises(ValueError, match="timeout=-1 is not a positive number"):
        load_image(url, timeout=-1)


# ------------------------------------------------------------------------------------------------ dependencies


def test_module_works_without_torch(tmp_path, picture):
    """The module is shipped as remote code and used by the command line: numpy, Pillow and the standard
    library must be enough."""
    Image.fromarray(picture).save(tmp_path / "pic.png")
    np.save(tmp_path / "expected.npy", picture)
    script = f"""
import sys
import numpy as np
sys.modules["torch"] = None  # any import of torch now fails
import naclip_hf.models.naclip.image_io as module
import os
assert os.path.realpath(module.__file__) == {str(IMAGE_IO_FILE)!r}
expected = np.load({str(tmp_path / "expected.npy")!r})
assert (module.load_image({str(tmp_path / "pic.png")!r}) == expected).all()
assert (module.to_rgb_array(expected.astype(np.float32) / 255) == expected).all()
assert not any(name == "torch" or name.startswith(("torch.", "transformers")) for name in sys.modules
               if sys.modules[name] is not None)
print("ok")
"""
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0 and completed.stdout.strip() == "ok", completed.stderr
