"""ClearCLIP's window padding: each sliding window whose sides are not whole patches is zero-padded, centred, to
whole patches, and its logits are cropped back."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import tiny_model
from naclip_hf.models.naclip.image_utils import sliding_windows
from naclip_hf.models.naclip.options import MethodSettings

PATCH = 8  # the tiny model's patch size


def padded_window_logits_by_hand(model, window: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """ClearCLIP's rule written out: pad (left, right, top, bottom) with the odd pixel after, run the padded
    window whole, crop the logits to the window."""
    height, width = window.shape[-2:]
    extra_h, extra_w = (PATCH - height % PATCH) % PATCH, (PATCH - width % PATCH) % PATCH
    left, top = extra_w // 2, extra_h // 2
    padded = F.pad(window, (left, extra_w - left, top, extra_h - top), value=0.0)
    logits = model(padded, text_embeds=text, slide_crop=0).logits
    return logits[:, :, top : top + height, left : left + width]


@pytest.mark.parametrize("size,crop,stride", [((45, 70), 28, 14), ((30, 53), 21, 10), ((40, 56), 24, 8)])
def test_centered_padding_equals_clearclips_rule(size, crop, stride):
    model = tiny_model(arch="reduced", attn_strategy="qq")
    torch.manual_seed(1)
    pixels = torch.randn(1, 3, *size)
    text = F.normalize(torch.randn(3, 16), dim=-1)
    expected = torch.zeros(1, 3, *size)
    count = torch.zeros(size)
    with torch.no_grad():
        for y1, y2, x1, x2 in sliding_windows(*size, crop, stride):
            expected[:, :, y1:y2, x1:x2] += padded_window_logits_by_hand(model, pixels[:, :, y1:y2, x1:x2], text)
            count[y1:y2, x1:x2] += 1
        expected /= count
        padded = model(pixels, text_embeds=text, slide_crop=crop, slide_stride=stride, window_padding="centered")
        dropped = model(pixels, text_embeds=text, slide_crop=crop, slide_stride=stride, window_padding="none")
    torch.testing.assert_close(padded.logits, expected, rtol=1e-5, atol=1e-6)
    if crop % PATCH:
        assert (dropped.logits - expected).abs().max() > 1e-3  # dropping the leftover pixels is another result


def test_whole_patch_windows_are_not_padded():
    model = tiny_model()
    pixels, text = torch.randn(1, 3, 40, 56), F.normalize(torch.randn(2, 16), dim=-1)
    with torch.no_grad():
        padded = model(pixels, text_embeds=text, slide_crop=24, slide_stride=8, window_padding="centered").logits
        plain = model(pixels, text_embeds=text, slide_crop=24, slide_stride=8).logits
    torch.testing.assert_close(padded, plain, rtol=0, atol=0)


def test_only_clearclip_pads_its_windows():
    methods = MethodSettings()
    assert methods["clearclip"]["window_padding"] == "centered"
    for name in ("naclip", "sclip", "clip", "maskclip"):
        assert methods[name].get("window_padding", "none") == "none", name
