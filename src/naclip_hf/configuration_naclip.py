"""Configuration of NACLIP: a CLIP configuration plus the settings of the neighbour-aware last layer."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import CLIPConfig

ARCHS = ("reduced", "vanilla")
ATTN_STRATEGIES = ("naclip", "nonly", "kk", "csa", "vanilla")
POS_EMBED_MODES = ("official", "transformers")
# Configs of these types describe a CLIP whose weights NACLIP can use as they are.
COMPATIBLE_MODEL_TYPES = ("clip", "naclip")
# The NACLIP settings of the config (every field this class adds to CLIPConfig).
NACLIP_SETTINGS: tuple[str, ...] = (
    "arch",
    "attn_strategy",
    "gaussian_std",
    "logit_scale",
    "prob_thd",
    "slide_crop",
    "slide_stride",
    "slide_batch_size",
    "pamr_steps",
    "pamr_dilations",
    "pos_embed_interpolation",
    "text_batch_size",
    "prompt_templates",
)


@strict
class NACLIPConfig(CLIPConfig):
    r"""
    Configuration of [`NACLIPForSemanticSegmentation`]: every field of [`~transformers.CLIPConfig`] (the text and
    vision towers, which any CLIP checkpoint provides) plus the NACLIP settings below. A plain CLIP `config.json`
    (`model_type: "clip"`) loads into this class and takes the defaults; any setting can be overridden as
    `from_pretrained(path, attn_strategy="csa", arch="vanilla")`.

    Args:
        arch (`str`, defaults to `"reduced"`):
            How the last vision block is run. `"reduced"`: its output is `out_proj(attention(layer_norm1(x)))`
            only (no residual, no MLP), as in NACLIP. `"vanilla"`: the usual block with residuals and MLP.
        attn_strategy (`str`, defaults to `"naclip"`):
            Attention weights of the last vision block. `"naclip"`: softmax(s k kᵀ + Ω) with the Gaussian
            neighbourhood bias Ω; `"nonly"`: softmax(c Ω), neighbourhood only; `"kk"`: softmax(s k kᵀ);
            `"csa"`: softmax(s q qᵀ) + softmax(s k kᵀ) (SCLIP, needs `arch="vanilla"`); `"vanilla"`: CLIP's own.
        gaussian_std (`float`, defaults to 5.0):
            σ of the Gaussian neighbourhood bias, in patches. Must be > 0 for `"naclip"` and `"nonly"`.
        logit_scale (`float`, defaults to 40.0):
            Temperature applied to the cosine-similarity logits before the softmax over class names.
        prob_thd (`float`, defaults to 0.0):
            Pixels whose top class probability is below this value are assigned class 0 (background).
        slide_crop (`int`, defaults to 224):
            Side of the sliding windows in pixels; 0 runs one whole-image pass instead.
        slide_stride (`int`, defaults to 112):
            Step between sliding windows in pixels (1 ≤ stride ≤ crop).
        slide_batch_size (`int`, defaults to 16):
            How many sliding windows go through the vision tower at once. Changes speed and memory only.
        pamr_steps (`int`, defaults to 10):
            Iterations of PAMR (pixel-adaptive mask refinement) at the original image size; 0 turns it off.
        pamr_dilations (`list[int]`, defaults to `[8, 16]`):
            Dilations of PAMR's 3×3 neighbourhoods.
        pos_embed_interpolation (`str`, defaults to `"official"`):
            How positional embeddings are resized for inputs whose patch grid differs from pre-training.
            `"official"`: bicubic with scale factor `(grid + 0.1) / pretrained_grid`, as the NACLIP code does;
            `"transformers"`: `CLIPVisionEmbeddings.interpolate_pos_encoding` (bicubic to the target size).
        text_batch_size (`int`, defaults to 1024):
            How many prompts go through the text tower at once when embedding class names.
        prompt_templates (`list[str]`, *optional*):
            Prompt templates, each with one `{}` for the class name. `None` uses the 80 ImageNet templates.
    """

    model_type = "naclip"

    arch: str = "reduced"
    attn_strategy: str = "naclip"
    gaussian_std: float | int = 5.0
    logit_scale: float | int = 40.0
    prob_thd: float | int = 0.0
    slide_crop: int = 224
    slide_stride: int = 112
    slide_batch_size: int = 16
    pamr_steps: int = 10
    pamr_dilations: list[int] | tuple[int, ...] = (8, 16)
    pos_embed_interpolation: str = "official"
    text_batch_size: int = 1024
    prompt_templates: list[str] | tuple[str, ...] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        self.pamr_dilations = [int(d) for d in self.pamr_dilations]
        if self.prompt_templates is not None:
            self.prompt_templates = list(self.prompt_templates)
        self.check_naclip_settings()

    def check_naclip_settings(self) -> None:
        """Raise `ValueError` naming the first NACLIP setting that is invalid and how to fix it."""
        if self.arch not in ARCHS:
            raise ValueError(f"arch={self.arch!r} is not supported; use one of {ARCHS}.")
        if self.attn_strategy not in ATTN_STRATEGIES:
            raise ValueError(
                f"attn_strategy={self.attn_strategy!r} is not supported; use one of {ATTN_STRATEGIES}."
            )
        if self.attn_strategy == "csa" and self.arch != "vanilla":
            raise ValueError(
                'attn_strategy="csa" (SCLIP) only works with arch="vanilla"; set arch="vanilla".'
            )
        if self.attn_strategy in ("naclip", "nonly") and not (
            isinstance(self.gaussian_std, (int, float))
            and math.isfinite(self.gaussian_std)
            and self.gaussian_std > 0
        ):
            raise ValueError(
                f"gaussian_std={self.gaussian_std!r} must be a finite number > 0 with "
                f"attn_strategy={self.attn_strategy!r} (the paper uses 5.0)."
            )
        if not (isinstance(self.logit_scale, (int, float)) and self.logit_scale > 0):
            raise ValueError(f"logit_scale={self.logit_scale!r} must be > 0 (the paper uses 40).")
        if not (isinstance(self.prob_thd, (int, float)) and 0.0 <= self.prob_thd <= 1.0):
            raise ValueError(f"prob_thd={self.prob_thd!r} must be a probability in [0, 1].")
        if self.slide_crop < 0:
            raise ValueError(f"slide_crop={self.slide_crop} must be >= 0 (0 = one whole-image pass).")
        if self.slide_crop > 0 and not 0 < self.slide_stride <= self.slide_crop:
            raise ValueError(
                f"slide_stride={self.slide_stride} must satisfy 0 < slide_stride <= slide_crop ({self.slide_crop}); "
                "larger strides would leave pixels without a prediction."
            )
        if self.slide_batch_size < 1:
            raise ValueError(f"slide_batch_size={self.slide_batch_size} must be >= 1.")
        if self.text_batch_size < 1:
            raise ValueError(f"text_batch_size={self.text_batch_size} must be >= 1.")
        if self.pamr_steps < 0:
            raise ValueError(f"pamr_steps={self.pamr_steps} must be >= 0 (0 turns PAMR off).")
        if self.pamr_steps > 0 and (not self.pamr_dilations or any(d < 1 for d in self.pamr_dilations)):
            raise ValueError(
                f"pamr_dilations={self.pamr_dilations} must be a non-empty list of integers >= 1."
            )
        if self.pos_embed_interpolation not in POS_EMBED_MODES:
            raise ValueError(
                f"pos_embed_interpolation={self.pos_embed_interpolation!r} is not supported; "
                f"use one of {POS_EMBED_MODES}."
            )
        if self.prompt_templates is not None:
            if not self.prompt_templates:
                raise ValueError(
                    "prompt_templates is empty; give at least one template or None for the defaults."
                )
            for template in self.prompt_templates:
                if template.count("{}") != 1:
                    raise ValueError(
                        f"prompt template {template!r} must contain exactly one '{{}}' for the name."
                    )

    @contextmanager
    def temporary_settings(self, settings: Mapping[str, Any]) -> Iterator[None]:
        """Override NACLIP settings inside a `with` block (checked on entry, restored on exit)."""
        unknown = [key for key in settings if key not in NACLIP_SETTINGS]
        if unknown:
            raise ValueError(f"Unknown NACLIP setting(s) {unknown}; valid: {', '.join(NACLIP_SETTINGS)}.")
        saved = {key: getattr(self, key) for key in settings}
        try:
            for key, value in settings.items():
                setattr(self, key, list(value) if key == "pamr_dilations" else value)
            self.check_naclip_settings()
            yield
        finally:
            for key, value in saved.items():
                setattr(self, key, value)

    @classmethod
    def get_config_dict(cls, *args: Any, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        config_dict, kwargs = super().get_config_dict(*args, **kwargs)
        model_type = config_dict.get("model_type")
        if model_type not in COMPATIBLE_MODEL_TYPES:
            raise ValueError(
                f"The checkpoint's config has model_type={model_type!r}, but NACLIP needs a CLIP checkpoint "
                f"(model_type one of {COMPATIBLE_MODEL_TYPES}), e.g. 'openai/clip-vit-base-patch16'. "
                "For OpenAI-layout weights, run `naclip convert` first."
            )
        # A plain CLIP config is a NACLIP config with default settings.
        return {**config_dict, "model_type": cls.model_type}, kwargs


__all__ = ["NACLIP_SETTINGS", "NACLIPConfig"]
