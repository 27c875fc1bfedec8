"""MMSeg-style short-side resizing: shape rounding and OpenCV-exact bilinear interpolation on uint8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from naclip_hf.models.naclip.image_utils import resize_bilinear_uint8, resize_short_side, resized_shape

GOLDEN_FILE = Path(__file__).parent / "fixtures" / "golden" / "golden.safetensors"
GOLDEN_RESIZES = [("img_b", 336), ("img_c", 336), ("img_d", 336), ("img_e", 560)]


@pytest.fixture(scope="module")
def golden_images() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(GOLDEN_FILE))


@pytest.mark.parametrize(("name", "short_side"), GOLDEN_RESIZES)
def test_matches_golden_resize_exactly(golden_images, name, short_side):
    raw = golden_images[f"{name}/raw"]
    expected = golden_images[f"{name}/resized_{short_side}"]
    out = resize_short_side(raw, short_side)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8
    assert out.shape == expected.shape
    assert torch.equal(out, expected)
    # The numpy path gives the same bytes.
    assert np.array_equal(resize_short_side(raw.numpy(), short_side), expected.numpy())


@pytest.mark.parametrize(
    ("height", "width", "short_side", "expected"),
    [
        (300, 400, 336, (336, 448)),  # upscale, f = 1.12
        (375, 500, 336, (336, 448)),  # downscale, f = 0.896
        (250, 380, 336, (336, 511)),  # 510.72 rounds up
        (333, 501, 336, (336, 506)),  # odd sizes: 505.52 rounds up
        (257, 511, 128, (128, 255)),  # odd sizes, downscale: 254.51 rounds up
        (256, 512, 560, (560, 1120)),
        (100, 3000, 336, (68, 2048)),  # long side capped: f = 2048 / 3000
        (3000, 100, 336, (2048, 68)),
        (500, 1000, 1500, (1024, 2048)),  # cap binds before the short side reaches 1500
        (336, 1000, 336, (336, 1000)),  # short side already equal: unchanged
        (2048, 336, 336, (2048, 336)),  # unchanged, long side exactly at the cap
        (123, 457, 0, (123, 457)),  # short_side 0: no resizing
    ],
)
def test_resized_shape(height, width, short_side, expected):
    assert resized_shape(height, width, short_side) == expected


def test_resize_short_side_unchanged_size_returns_input():
    image = np.zeros((336, 500, 3), dtype=np.uint8)
    assert resize_short_side(image, 336) is image
    assert resize_short_side(image, 0) is image


def test_identity_and_exact_halving():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (38, 54, 3), dtype=np.uint8)
    assert np.array_equal(resize_bilinear_uint8(image, (38, 54)), image)
    # An exact 2x downscale is the 2x2 mean rounded half up.
    blocks = image.astype(np.int32).reshape(19, 2, 27, 2, 3).sum(axis=(1, 3))
    assert np.array_equal(resize_bilinear_uint8(image, (19, 27)), ((blocks + 2) >> 2).astype(np.uint8))


def test_tensor_and_grayscale_inputs():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    expected = resize_bilinear_uint8(image, (31, 12))
    out = resize_bilinear_uint8(torch.from_numpy(image), (31, 12))
    assert isinstance(out, torch.Tensor) and torch.equal(out, torch.from_numpy(expected))
    gray = resize_bilinear_uint8(image[:, :, 1], (31, 12))
    assert gray.shape == (31, 12) and np.array_equal(gray, expected[:, :, 1])
    with pytest.raises(TypeError):
        resize_bilinear_uint8(image.astype(np.float32), (31, 12))


@pytest.mark.parametrize(
    ("src", "dst", "channels"),
    [
        ((37, 53), (61, 29), 3),
        ((101, 77), (45, 131), 3),
        ((1, 9), (4, 3), 3),
        ((9, 1), (3, 4), 1),
        ((2, 2), (1, 1), 4),
        ((255, 383), (341, 511), 3),
        ((301, 199), (150, 99), 2),
        ((64, 64), (16, 21), 3),
    ],
)
def test_matches_installed_opencv(src, dst, channels):
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(src[0] * 1000 + dst[1])
    noise = rng.integers(0, 256, (*src, channels), dtype=np.uint8)
    ramp = (np.add.outer(np.arange(src[0]) * 7, np.arange(src[1]) * 3) % 256).astype(np.uint8)
    smooth = np.repeat(ramp[:, :, None], channels, axis=2)
    for image in (noise, smooth):
        expected = cv2.resize(image, (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR)
        expected = expected.reshape(*dst, channels)
        assert np.array_equal(resize_bilinear_uint8(image, dst), expected)
