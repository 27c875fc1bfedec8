"""Fast tests of the model on tiny configurations built here."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import CLIPConfig, CLIPModel, CLIPVisionModel

from helpers import tiny_clip_config, tiny_model
from naclip_hf import NACLIPConfig, NACLIPForSemanticSegmentation
from naclip_hf.models.naclip.image_processing_naclip import NACLIPImageProcessor
from naclip_hf.models.naclip.modeling_naclip import gaussian_neighbourhood_bias, sliding_windows

STRATEGIES = [
    ("reduced", "naclip"),
    ("reduced", "nonly"),
    ("reduced", "kk"),
    ("vanilla", "csa"),
    ("reduced", "vanilla"),
    ("vanilla", "vanilla"),
    ("vanilla", "naclip"),
]


def test_gaussian_bias_matches_brute_force():
    height, width, std = 3, 5, 1.7
    omega = gaussian_neighbourhood_bias(height, width, std)
    assert omega.shape == (1 + height * width, 1 + height * width)
    assert omega[0].abs().sum() == 0 and omega[:, 0].abs().sum() == 0
    for i in range(height * width):
        for j in range(height * width):
            (r1, c1), (r2, c2) = divmod(i, width), divmod(j, width)
            expected = math.exp(-((r1 - r2) ** 2 + (c1 - c2) ** 2) / (2 * std * std))
            assert omega[1 + i, 1 + j].item() == pytest.approx(expected, abs=1e-7)


def test_vanilla_vanilla_equals_transformers_clip_vision():
    model = tiny_model(arch="vanilla", attn_strategy="vanilla")
    reference = CLIPVisionModel(model.config.vision_config).eval()
    reference.load_state_dict(model.vision_model.state_dict())
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = model.encode_patches(pixels).last_hidden_state
        theirs = reference(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch,strategy", STRATEGIES)
def test_eager_and_sdpa_agree(arch, strategy):
    model = tiny_model(arch=arch, attn_strategy=strategy)
    pixels = torch.randn(2, 3, 40, 56)
    outputs = {}
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation(implementation)
        assert model.vision_model.config._attn_implementation == implementation
        with torch.no_grad():
            outputs[implementation] = model.encode_patches(pixels).last_hidden_state
    torch.testing.assert_close(outputs["eager"], outputs["sdpa"], rtol=1e-5, atol=1e-5)


def test_nonly_coefficient_is_per_image():
    """Batched windows give what each window gives alone."""
    model = tiny_model(attn_strategy="nonly")
    pixels = torch.randn(3, 3, 32, 48)
    with torch.no_grad():
        batched = model.encode_patches(pixels).last_hidden_state
        single = torch.cat([model.encode_patches(p[None]).last_hidden_state for p in pixels])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)


def test_plain_clip_checkpoint_loads_without_missing_or_unexpected_keys(tmp_path):
    clip = CLIPModel(CLIPConfig(**tiny_clip_config()))
    clip.save_pretrained(tmp_path / "clip")
    model, info = NACLIPForSemanticSegmentation.from_pretrained(tmp_path / "clip", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.config.model_type == "naclip"
    assert (model.config.arch, model.config.attn_strategy, model.config.gaussian_std) == (
        "reduced",
        "naclip",
        5.0,
    )
    assert (model.config.slide_crop, model.config.slide_stride, model.config.pamr_steps) == (224, 112, 10)
    clip_state = clip.state_dict()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, clip_state[name])
    overridden = NACLIPForSemanticSegmentation.from_pretrained(
        tmp_path / "clip", attn_strategy="csa", arch="vanilla"
    )
    assert (overridden.config.arch, overridden.config.attn_strategy) == ("vanilla", "csa")


def test_saved_model_round_trip(tmp_path):
    model = tiny_model(attn_strategy="kk", gaussian_std=3.0, pamr_steps=0)
    model.save_pretrained(tmp_path / "m")
    loaded = NACLIPForSemanticSegmentation.from_pretrained(tmp_path / "m").eval()
    assert (loaded.config.attn_strategy, loaded.config.gaussian_std, loaded.config.pamr_steps) == (
        "kk",
        3.0,
        0,
    )
    pixels, text = torch.randn(1, 3, 40, 40), torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(pixels, text_embeds=text).logits, model(pixels, text_embeds=text).logits
        )


def test_sliding_windows_cover_every_pixel_once_or_more():
    for height, width in [(336, 448), (336, 511), (100, 90), (224, 224), (560, 1120)]:
        count = torch.zeros(height, width)
        for y1, y2, x1, x2 in sliding_windows(height, width, 224, 112):
            assert (y2 - y1, x2 - x1) == (min(224, height), min(224, width))
            count[y1:y2, x1:x2] += 1
        assert count.min() >= 1


def test_sliding_batch_size_does_not_change_logits():
    model = tiny_model(slide_crop=24, slide_stride=16, pamr_steps=0)
    pixels, text = torch.randn(2, 3, 50, 70), torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    with torch.no_grad():
        one = model(pixels, text_embeds=text, slide_batch_size=1).logits
        seven = model(pixels, text_embeds=text, slide_batch_size=7).logits
        alone = torch.cat([model(p[None], text_embeds=text, slide_batch_size=5).logits for p in pixels])
    assert one.shape == (2, 4, 50, 70)
    torch.testing.assert_close(one, seven, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(one, alone, rtol=1e-5, atol=1e-6)


def test_prompts_padded_to_longest_equal_padded_to_max():
    model = tiny_model()
    torch.manual_seed(1)
    ids = torch.randint(1, 97, (6, 16))
    lengths = torch.tensor([5, 9, 3, 7, 4, 6])
    mask = torch.zeros(6, 16, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, length - 1] = 98  # end-of-text token
        ids[row, length:] = 98
        mask[row, :length] = 1
    with torch.no_grad():
        trimmed = model.get_name_embeddings(ids, mask, num_templates=3)
        full = model.get_name_embeddings(ids, None, num_templates=3)
    torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-6)


def test_post_process_merges_synonyms_and_applies_threshold():
    processor = NACLIPImageProcessor()
    # names: class 0 (one name), class 1 (two names)
    logits = torch.tensor([0.0, 1.0, 0.5]).view(1, 3, 1, 1).expand(1, 3, 2, 2).clone()
    logits[0, :, 1, 1] = torch.tensor([0.0, 0.0, 0.0])
    (result,) = processor.post_process_semantic_segmentation(
        logits, [(2, 2)], name_to_class=[0, 1, 1], pamr_steps=0, logit_scale=1.0, prob_thd=0.5,
        return_probabilities=True,
    )
    probabilities, segmentation = result["probabilities"], result["segmentation"]
    names = torch.tensor([0.0, 1.0, 0.5]).softmax(0)
    expected = torch.stack([names[0], names[1:].max()])
    torch.testing.assert_close(probabilities[:, 0, 0], expected / expected.sum())
    assert segmentation[0, 0] == 1
    assert segmentation[1, 1] == 0  # top probability 1/3 is below the threshold
    labels_only = processor.post_process_semantic_segmentation(
        logits, [(2, 2)], name_to_class=[0, 1, 1], pamr_steps=0, logit_scale=1.0, prob_thd=0.5
    )
    assert torch.equal(labels_only[0], segmentation)


def test_post_process_needs_the_guide_image_for_pamr():
    with pytest.raises(ValueError, match="PAMR needs the model input"):
        NACLIPImageProcessor().post_process_semantic_segmentation(torch.randn(1, 2, 4, 4), pamr_steps=2)
    with pytest.raises(TypeError, match="Unknown post-processing option"):
        NACLIPImageProcessor.post_processing_options(pamr_step=2)


def test_image_smaller_than_one_patch():
    model = tiny_model(slide_crop=0)
    with pytest.raises(ValueError, match="smaller than one 8×8 patch"):
        model(torch.randn(1, 3, 7, 40), text_embeds=torch.randn(2, 16))


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"attn_strategy": "csa", "arch": "reduced"}, "set arch='vanilla'"),
        ({"gaussian_std": 0.0}, "gaussian_std=0.0 is invalid: it must be a number > 0"),
        ({"attn_strategy": "nonly", "gaussian_std": -1.0}, "gaussian_std=-1.0 is invalid"),
        ({"slide_stride": 0}, "slide_stride=0 is invalid: it must be an integer >= 1"),
        ({"slide_stride": 300}, "slide_stride=300 is larger than slide_crop=224"),
        ({"slide_stride": 56.5}, "slide_stride=56.5 is invalid: it must be an integer"),
        ({"slide_crop": -1}, "slide_crop=-1"),
        ({"prob_thd": 2.0}, r"prob_thd=2.0 is invalid: it must be a number >= 0 and <= 1"),
        ({"prob_thd": float("nan")}, "prob_thd=nan is invalid"),
        ({"pamr_steps": -1}, "pamr_steps=-1"),
        ({"pamr_steps": "3"}, "pamr_steps='3' is invalid: it must be an integer >= 0"),
        ({"pamr_steps": True}, "pamr_steps=True is invalid"),
        ({"pamr_dilations": [8, 0]}, r"pamr_dilations=\[8, 0\] is invalid"),
        ({"pos_embed_interpolation": "nearest"}, "pos_embed_interpolation='nearest'"),
        ({"prompt_templates": ["a photo of a cat"]}, "exactly one"),
    ],
)
def test_invalid_settings_raise_value_error(settings, message):
    with pytest.raises(ValueError, match=message):
        NACLIPConfig(**settings)


def test_unknown_attention_strategy_is_refused_when_the_model_is_built():
    # The registry lives with the model (the configuration module imports no modeling code).
    with pytest.raises(ValueError, match="attn_strategy='bogus' is invalid: it must be one of naclip, gav"):
        tiny_model(attn_strategy="bogus")
    # `arch` is a block architecture or a name of the dense-method registry, checked alike.
    with pytest.raises(ValueError, match="arch='full' is invalid: it must be one of reduced, vanilla, scclip, sfp"):
        tiny_model(arch="full")


def test_invalid_settings_are_refused_at_load_and_per_call(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="attn_strategy='bogus' is invalid"):
        NACLIPForSemanticSegmentation.from_pretrained(tmp_path / "m", attn_strategy="bogus")
    with pytest.raises(ValueError, match="slide_stride=56.5 is invalid"):
        model(torch.randn(1, 3, 32, 32), text_embeds=torch.randn(2, 16), slide_stride=56.5)


def test_settings_changed_after_loading_are_checked():
    model = tiny_model()
    model.config.attn_strategy = "bogus"
    with pytest.raises(ValueError, match="attn_strategy='bogus'"):
        model(torch.randn(1, 3, 32, 32), text_embeds=torch.randn(2, 16))


def test_non_clip_checkpoint_is_rejected(tmp_path):
    from transformers import BertConfig

    BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    ).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="needs a CLIP checkpoint"):
        NACLIPForSemanticSegmentation.from_pretrained(tmp_path / "bert")
