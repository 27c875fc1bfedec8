"""Every image input (path, URL, PIL image, array, tensor) as an upright RGB uint8 array [H, W, 3].

This module needs only numpy, Pillow and the standard library at import time, so that it can be shipped as Hub
remote code next to the processor and imported by the command line without torch. Tensors are recognised by
their type's module name and converted through their own methods.

Rules, the same for every kind of input:

* Orientation: the EXIF orientation tag is applied (``ImageOps.exif_transpose``) to files, URLs and PIL images
  passed directly, so a photo looks the same whichever way it arrives.
* 8-bit data (uint8, PIL modes such as "L", "P", "RGB", "RGBA") is taken as is; booleans become 0 and 255.
* 16-bit data (uint16 arrays and tensors, PIL modes "I;16", "I;16B", "I;16L") is scaled by its bit depth:
  ``v8 = round(v16 / 257)``, the linear map of 0..65535 onto 0..255. A 16-bit copy of an 8-bit picture
  (``v8 * 257``) therefore gives back exactly that picture.
* PIL mode "I" (32-bit integers, as Pillow may open 16-bit PNG files) is taken as 16-bit when all its values
  are within 0..65535, and as 32-bit (``round(v * 255 / (2**32 - 1))``) otherwise.
* Other integer arrays and tensors (int8 ... int64, uint32, uint64) are read by their values: within 0..255 as
  8-bit, within 0..65535 as 16-bit, within 0..2**32 - 1 as 32-bit. Negative values raise a ``ValueError``;
  give 16-bit data as uint16 to have it scaled as 16-bit whatever its values.
* Floats (arrays, tensors, PIL mode "F"): if all values are within [0, 1] they are taken as the 0-1 scale and
  multiplied by 255; otherwise, if all are within [0, 255], as the 0-255 scale. Anything else raises a
  ``ValueError`` that gives the range found. NaN or infinite values raise a ``ValueError``. Values are
  rounded to the nearest integer.
* Shapes: [H, W], [H, W, 1], [H, W, 3] and [H, W, 4] (alpha dropped), and channels-first [1, H, W] / [3, H, W]
  (taken as channels-first when the first dimension is 1 or 3 and the last is not 1, 3 or 4).
"""

from __future__ import annotations

import http.client
import io
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .options import DEFAULT_URL_TIMEOUT

_ACCEPTED = (
    "a file path (str or os.PathLike), an http(s) URL, a PIL image, a numpy array or a torch tensor "
    "([H, W], [H, W, 1|3|4] or [1|3, H, W])"
)
_ORIENTATION_TAG = 0x0112
_UINT32_MAX = 2**32 - 1
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def describe_input(image: Any) -> str:
    """A short description of an image input for error messages: the path or URL text, or the kind of object
    with its shape/size and type (never the pixel values)."""
    if isinstance(image, (str, os.PathLike)):
        text = os.fspath(image)
        text = text if isinstance(text, str) else repr(text)
        return text if len(text) <= 200 else text[:197] + "..."
    if isinstance(image, Image.Image):
        return f"PIL image (mode {image.mode}, {image.width}x{image.height})"
    if isinstance(image, np.ndarray):
        return f"ndarray of shape {tuple(image.shape)} and dtype {image.dtype}"
    if _is_tensor(image):
        return f"tensor of shape {tuple(image.shape)} and dtype {image.dtype}"
    return f"object of type {type(image).__name__}"


def load_image(source: Any, timeout: float | None = None) -> np.ndarray:
    """Read any image input as an upright RGB uint8 array [H, W, 3].

    Args:
        source: a file path (str or `os.PathLike`), an `http://` or `https://` URL, a PIL image, a numpy array
            or a torch tensor. The rules for bit depths, float ranges, shapes and EXIF orientation are given in
            this module's docstring.
        timeout: seconds to wait for a URL (default `DEFAULT_URL_TIMEOUT`); unused for other inputs.

    Raises:
        FileNotFoundError: the path does not exist.
        OSError: the URL cannot be downloaded (network, HTTP error or timeout).
        ValueError: the file or download is not a readable image, or the pixel values are out of range, NaN or
            infinite, or the shape is not an image's.
        TypeError: the input is none of the accepted types.
    """
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout={timeout!r} is not a positive number of seconds; pass e.g. timeout=30.")
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if isinstance(text, bytes):
            raise TypeError(f"Image path {text!r} is bytes; pass it as a str or pathlib.Path.")
        if text.lower().startswith(("http://", "https://")):
            return to_rgb_array(_download(text, DEFAULT_URL_TIMEOUT if timeout is None else float(timeout)))
        return to_rgb_array(_open_file(text))
    return to_rgb_array(source)


def to_rgb_array(image: Any) -> np.ndarray:
    """An image held in memory (PIL image, numpy array or torch tensor) as an upright RGB uint8 array
    [H, W, 3], following the rules of this module's docstring. Files and URLs are read by `load_image`."""
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, describe_input(image))
    if _is_tensor(image):
        return _array_to_rgb(_tensor_to_numpy(image), describe_input(image))
    if isinstance(image, (str, os.PathLike)):
        raise TypeError(
            f"to_rgb_array got the path or URL {describe_input(image)!r}; read files and URLs with "
            "naclip_hf.models.naclip.image_io.load_image, or pass the image itself."
        )
    raise TypeError(f"Unsupported image input: {describe_input(image)}; pass {_ACCEPTED}.")


# ------------------------------------------------------------------------------------------------ reading


def _open_file(path: str) -> Image.Image:
    """The decoded image at `path`, with errors that name the file."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Image file {path} does not exist; check the path (URLs must start with http:// or https://)."
        )
    if os.path.isdir(path):
        raise IsADirectoryError(f"Image path {path} is a folder; pass an image file inside it.")
    try:
        return _decoded(
            path,
            lambda error: f"Could not read image file {path} ({type(error).__name__}: {error}); check that it is a "
            "complete image in a format Pillow reads (JPEG, PNG, TIFF, BMP, WebP, ...).",
            lambda error: f"Image file {path} has more pixels than Pillow's safety limit ({error}); if you trust the "
            "file, raise PIL.Image.MAX_IMAGE_PIXELS, or downscale it first.",
        )
    except PermissionError as error:
        raise PermissionError(f"Image file {path} cannot be read ({error.strerror}); check its permissions.") from error


def _decoded(source: Any, unreadable: Callable[[Exception], str], too_large: Callable[[Exception], str]) -> Image.Image:
    """The image Pillow decodes from `source` (a path or a file object), copied so that its pixels (and EXIF) outlive
    the file; `ValueError(unreadable(error))` or, past Pillow's pixel limit, `ValueError(too_large(error))`. A
    `PermissionError` is raised as it is."""
    try:
        with Image.open(source) as opened:
            opened.load()
            return opened.copy()
    except PermissionError:
        raise
    except (UnidentifiedImageError, SyntaxError, EOFError, OSError, ValueError) as error:
        raise ValueError(unreadable(error)) from error
    except Image.DecompressionBombError as error:
        raise ValueError(too_large(error)) from error


def _download(url: str, timeout: float) -> Image.Image:
    """The image at an http(s) URL, downloaded with `timeout` seconds per network operation."""
    request = urllib.request.Request(url, headers={"User-Agent": "naclip-hf"})
    advice = "check the URL and the network connection (and proxy settings), or download the file and pass its path"
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read()
            content_type = response.headers.get("Content-Type", "unknown")
    except urllib.error.HTTPError as error:
        raise OSError(f"Could not download image {url}: HTTP {error.code} {error.reason}; {advice}.") from error
    except urllib.error.URLError as error:
        raise OSError(f"Could not download image {url} ({error.reason}); {advice}.") from error
    except (OSError, http.client.HTTPException) as error:  # timeouts, resets, truncated responses
        raise OSError(
            f"Could not download image {url} ({type(error).__name__}: {error}; timeout {timeout:g} s); {advice}."
        ) from error
    return _decoded(
        io.BytesIO(data),
        lambda error: f"{url} did not return a readable image (content type {content_type}, {len(data)} bytes); "
        "check that the URL points at the image file itself, not at a web page showing it.",
        lambda error: f"The image at {url} has more pixels than Pillow's safety limit ({error}); if you trust it, "
        "raise PIL.Image.MAX_IMAGE_PIXELS.",
    )


# ------------------------------------------------------------------------------------------------ PIL


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    """PIL image -> upright RGB uint8 array, with 16/32-bit and float modes scaled like arrays."""
    description = describe_input(image)
    image = _upright(image)
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        return _array_to_rgb(np.asarray(image).astype(np.uint16), description)
    if mode == "I":
        values = np.asarray(image)
        if values.size and values.min() >= 0 and values.max() <= 65535:
            return _array_to_rgb(values.astype(np.uint16), description)
        return _array_to_rgb(values, description)
    if mode == "F":
        return _array_to_rgb(np.asarray(image), description)
    if mode == "RGB":
        return np.array(image, dtype=np.uint8)
    try:
        converted = image.convert("RGB")
    except (ValueError, OSError) as error:
        raise ValueError(
            f"Cannot convert the {description} to RGB ({error}); convert it yourself first, e.g. "
            "image.convert('RGB')."
        ) from error
    return np.array(converted, dtype=np.uint8)


def _upright(image: Image.Image) -> Image.Image:
    """`image` turned by its EXIF orientation tag (unchanged when it has none)."""
    try:
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # unreadable EXIF blocks: keep the image as stored
        return image
    if orientation in (None, 1):
        return image
    transposed = ImageOps.exif_transpose(image)
    return image if transposed is None else transposed


# ------------------------------------------------------------------------------------------------ arrays


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach") and hasattr(value, "shape")


def _tensor_to_numpy(tensor: Any) -> np.ndarray:
    """A torch tensor as a numpy array on the CPU (bfloat16/float16 as float32); torch is imported only here."""
    import torch

    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"Unsupported image input: {describe_input(tensor)}; pass {_ACCEPTED}.")
    tensor = tensor.detach()
    if tensor.is_complex():
        raise ValueError(f"Image {describe_input(tensor)} holds complex numbers; pass real pixel values.")
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.float()
    return tensor.cpu().numpy()


def _array_to_hwc(array: np.ndarray, description: str) -> np.ndarray:
    """[H, W], [H, W, C] or [C, H, W] -> [H, W, C] with C in (1, 3, 4)."""
    if array.ndim == 2:
        array = array[..., None]
    elif array.ndim == 3 and array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3):
        array = np.moveaxis(array, 0, -1)
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        hint = " (one image at a time: index a batch, e.g. images[0])" if array.ndim == 4 else ""
        raise ValueError(
            f"Image {description} does not have an image's shape; pass [H, W], [H, W, 1|3|4] or "
            f"[1|3, H, W]{hint}."
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"Image {description} is empty (height or width 0); pass an image with pixels.")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return array[..., :3]


def _array_to_rgb(array: np.ndarray, description: str) -> np.ndarray:
    """Any numeric array in an accepted shape -> RGB uint8 [H, W, 3] by the bit-depth and range rules."""
    array = _array_to_hwc(array, description)
    kind = array.dtype.kind
    if kind == "b":
        converted = array.astype(np.uint8) * np.uint8(255)
    elif kind == "u" and array.dtype.itemsize == 1:
        converted = array
    elif kind == "u" and array.dtype.itemsize == 2:
        converted = _scale_16_bit(array)
    elif kind in "iu":
        converted = _scale_integers(array, description)
    elif kind == "f":
        converted = _scale_floats(array, description)
    else:
        raise ValueError(
            f"Image {description} has values of type {array.dtype}, which are not pixel values; pass uint8, "
            "uint16, bool, integer or float values."
        )
    return np.ascontiguousarray(converted, dtype=np.uint8)


def _scale_16_bit(array: np.ndarray) -> np.ndarray:
    """0..65535 -> round(v / 257); 257 is odd, so (v + 128) // 257 is exactly that rounding."""
    return ((array.astype(np.int64) + 128) // 257).astype(np.uint8)


def _scale_integers(array: np.ndarray, description: str) -> np.ndarray:
    """Integers other than uint8/uint16, read by their range: 8-bit, 16-bit or 32-bit."""
    low, high = int(array.min()), int(array.max())
    if low < 0:
        raise ValueError(
            f"Image {description} has negative values (min {low}); integer pixel values must be 0-255 (8-bit), "
            "0-65535 (16-bit) or 0-4294967295 (32-bit): rescale it, or pass floats in [0, 1]."
        )
    if high <= 255:
        return array.astype(np.uint8)
    if high <= 65535:
        return _scale_16_bit(array)
    if high <= _UINT32_MAX:
        # (2**32 - 1) / 255 = 16843009, an odd integer: (v + 8421504) // 16843009 = round(v * 255 / (2**32 - 1)).
        return ((array.astype(np.int64) + 8421504) // 16843009).astype(np.uint8)
    raise ValueError(
        f"Image {description} has values up to {high}, more than 32 bits (max 4294967295); rescale it to "
        "0-255 or to floats in [0, 1]."
    )


def _scale_floats(array: np.ndarray, description: str) -> np.ndarray:
    """Floats in [0, 1] -> x 255; floats in [0, 255] -> as is; rounded. Anything else raises."""
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError(
            f"Image {description} contains NaN/inf values; replace them (e.g. numpy.nan_to_num) or fix what "
            "produced the image."
        )
    low, high = float(values.min()), float(values.max())
    if low >= 0.0 and high <= 1.0:
        values = values * 255.0
    elif not (low >= 0.0 and high <= 255.0):
        raise ValueError(
            f"Image {description} has float values in [{low:g}, {high:g}], outside both [0, 1] and [0, 255]; "
            "rescale it to [0, 1] or [0, 255] (e.g. undo the normalisation) before passing it."
        )
    return np.rint(values).astype(np.uint8)


__all__ = ["DEFAULT_URL_TIMEOUT", "describe_input", "load_image", "to_rgb_array"]
