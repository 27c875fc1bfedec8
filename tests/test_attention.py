"""The attention registry, `output_attentions` / `output_hidden_states`, and per-call options of `forward`."""

from __future__ import annotations

import pytest
import torch

from helpers import GRID, last_attention, last_layer_projections, tiny_model
from naclip_hf.models.naclip.modeling_naclip import (
    NACLIP_ATTENTION_FUNCTIONS,
    NACLIPAttentionInterface,
    attend,
    gaussian_neighbourhood_bias,
    register_attention,
)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_naclip_and_gav_attention_maps_equal_the_formulas(implementation):
    model = tiny_model(slide_crop=0)
    model.set_attn_implementation(implementation)
    pixels = torch.randn(2, 3, 40, 56)
    query, key, scale = last_layer_projections(model, pixels)
    omega = gaussian_neighbourhood_bias(*GRID, 5.0)
    expected = {
        "naclip": (scale * key @ key.transpose(-1, -2) + omega).softmax(dim=-1),
        "gav": (scale * query @ key.transpose(-1, -2) + omega).softmax(dim=-1),
        "kk": (scale * key @ key.transpose(-1, -2)).softmax(dim=-1),
        "vanilla": (scale * query @ key.transpose(-1, -2)).softmax(dim=-1),
        "csa": (scale * query @ query.transpose(-1, -2)).softmax(dim=-1)
        + (scale * key @ key.transpose(-1, -2)).softmax(dim=-1),
    }
    for strategy, want in expected.items():
        arch = "vanilla" if strategy == "csa" else "reduced"
        maps = last_attention(model, pixels, attn_strategy=strategy, arch=arch)
        assert maps.shape == (2, 4, 1 + GRID[0] * GRID[1], 1 + GRID[0] * GRID[1])
        torch.testing.assert_close(maps, want, rtol=1e-5, atol=1e-6, msg=strategy)
        row_sums = 2.0 if strategy == "csa" else 1.0
        torch.testing.assert_close(maps.sum(-1), torch.full(maps.shape[:-1], row_sums), rtol=0, atol=1e-5)


def test_nonly_attention_map_is_the_scaled_gaussian():
    model = tiny_model(slide_crop=0, attn_strategy="nonly")
    pixels = torch.randn(2, 3, 40, 56)
    query, key, scale = last_layer_projections(model, pixels)
    coefficient = scale * (query.norm(dim=-1).mean(-1) * key.norm(dim=-1).mean(-1)).mean(-1)
    omega = gaussian_neighbourhood_bias(*GRID, 5.0)
    expected = (coefficient.view(-1, 1, 1, 1) * omega).softmax(dim=-1).expand(-1, 4, -1, -1)
    torch.testing.assert_close(last_attention(model, pixels), expected, rtol=1e-5, atol=1e-6)


def test_attention_maps_do_not_change_the_output():
    model = tiny_model(slide_crop=0)
    pixels, text = torch.randn(1, 3, 40, 56), torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    with torch.no_grad():
        plain = model(pixels, text_embeds=text)
        detailed = model(pixels, text_embeds=text, output_attentions=True, output_hidden_states=True)
    torch.testing.assert_close(plain.logits, detailed.logits, rtol=1e-5, atol=1e-6)
    assert plain.attentions is None and plain.hidden_states is None
    # hidden states: the embeddings, then one per layer (2 layers)
    assert len(detailed.hidden_states) == 3
    assert detailed.hidden_states[0].shape == (1, 1 + GRID[0] * GRID[1], 32)
    assert detailed.attentions[-1].shape == (1, 4, 36, 36)


def test_attention_maps_of_sliding_windows_come_window_by_window():
    model = tiny_model(slide_crop=24, slide_stride=16)
    pixels, text = torch.randn(2, 3, 40, 56), torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    with torch.no_grad():
        outputs = model(pixels, text_embeds=text, output_attentions=True, slide_batch_size=4)
        first_window = model.encode_patches(pixels[:1, :, 0:24, 0:24], output_attentions=True).attentions[-1]
    windows_per_image = 2 * 3  # rows 0-24, 16-40; columns 0-24, 16-40, 32-56
    assert outputs.attentions[-1].shape == (2 * windows_per_image, 4, 10, 10)
    torch.testing.assert_close(outputs.attentions[-1][:1], first_window, rtol=1e-5, atol=1e-6)


def test_unknown_forward_keyword_raises_type_error():
    model = tiny_model()
    with pytest.raises(TypeError, match="unexpected keyword argument 'pamr_step'"):
        model(torch.randn(1, 3, 32, 32), text_embeds=torch.randn(2, 16), pamr_step=3)


def test_per_call_options_equal_the_same_options_in_the_config_and_leave_it_unchanged():
    pixels, text = torch.randn(1, 3, 40, 56), torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    options = dict(arch="vanilla", attn_strategy="gav", gaussian_std=2.0, slide_crop=24, slide_stride=8)
    configured = tiny_model(**options)
    default = tiny_model()
    before = default.config.to_dict()
    with torch.no_grad():
        per_call = default(pixels, text_embeds=text, **options).logits
        in_config = configured(pixels, text_embeds=text).logits
    torch.testing.assert_close(per_call, in_config, rtol=0, atol=0)
    assert default.config.to_dict() == before


def test_a_new_strategy_is_one_function_and_one_registry_entry():
    def half_and_half(module, query, key, value, *, patch_grid, gaussian_std, output_attentions=False):
        """Average of CLIP's and key-key attention."""
        out_q, w_q = attend(module, query, key, value, None, output_attentions)
        out_k, w_k = attend(module, key, key, value, None, output_attentions)
        return (out_q + out_k) / 2, (w_q + w_k) / 2 if output_attentions else None

    register_attention("half_and_half", half_and_half)
    try:
        model = tiny_model(slide_crop=0, attn_strategy="half_and_half")
        pixels = torch.randn(1, 3, 40, 56)
        maps = last_attention(model, pixels)
        expected = (last_attention(model, pixels, attn_strategy="vanilla")
                    + last_attention(model, pixels, attn_strategy="kk")) / 2  # fmt: skip
        torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-6)
    finally:
        NACLIPAttentionInterface._global_mapping.pop("half_and_half")


def test_an_interface_instance_overrides_a_strategy_for_itself_only():
    interface = NACLIPAttentionInterface()
    interface["naclip"] = NACLIP_ATTENTION_FUNCTIONS["kk"]
    assert interface["naclip"] is NACLIP_ATTENTION_FUNCTIONS["kk"]
    assert NACLIP_ATTENTION_FUNCTIONS["naclip"] is not NACLIP_ATTENTION_FUNCTIONS["kk"]
    assert NACLIPAttentionInterface()["naclip"] is NACLIP_ATTENTION_FUNCTIONS["naclip"]


@pytest.mark.parametrize("implementation", ["flash_attention_2", "flex_attention"])
def test_kernels_that_cannot_add_the_gaussian_bias_are_refused(implementation):
    model = tiny_model()
    with pytest.raises(ValueError, match="does not support"):
        model.set_attn_implementation(implementation)
