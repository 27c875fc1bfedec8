"""Configuration of NACLIP: a CLIP configuration plus the architecture of the neighbour-aware last layer and the
defaults of the inference options."""

from __future__ import annotations

from functools import wraps
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import CLIPConfig

from .options import CONFIG_SETTINGS, DEFAULTS, SETTINGS_BY_NAME, check_settings

# Configs of these types describe a CLIP whose weights NACLIP can use as they are.
COMPATIBLE_MODEL_TYPES = ("clip", "naclip")


@strict
class NACLIPConfig(CLIPConfig):
    r"""
    Configuration of [`NACLIPForSemanticSegmentation`]: every field of [`~transformers.CLIPConfig`] (the text and
    vision towers, which any CLIP checkpoint provides) plus NACLIP's settings. A plain CLIP `config.json`
    (`model_type: "clip"`) loads into this class and takes the defaults; any setting can be given as
    `from_pretrained(path, attn_strategy="csa", arch="vanilla")`.

    The config describes the model and holds the *defaults* of the inference options; a call never changes it.
    `forward` takes the sliding-window options (and may override the last block's `arch`, `attn_strategy` and
    `gaussian_std`) and `NACLIPImageProcessor.post_process_semantic_segmentation` the post-processing ones, both
    defaulting to the values here (see [`~NACLIPConfig.inference_options`]).

    Every setting, its default, valid range and meaning is listed in `naclip_hf.options.SETTINGS`:

    - architecture: `arch` ("reduced"), `attn_strategy` ("naclip"), `gaussian_std` (5.0),
      `pos_embed_interpolation` ("official");
    - sliding windows: `slide_crop` (224; 0 = one whole-image pass), `slide_stride` (112), `slide_batch_size` (16);
    - post-processing: `logit_scale` (40.0), `prob_thd` (0.0), `area_thd` (0.0), `pamr_steps` (10),
      `pamr_dilations` ([8, 16]);
    - text: `text_batch_size` (128), `prompt_templates` (None = the 80 ImageNet templates).

    `method="sclip"` (a name of `naclip_hf.methods.METHODS`: naclip, clip, maskclip, sclip, clearclip) takes that
    method's settings; settings given alongside override them (`NACLIPConfig(method="sclip", pamr_steps=10)`,
    `from_pretrained(path, method="sclip")`). The method's name is not stored, only its settings.

    Example:

    ```python
    >>> from naclip_hf import NACLIPConfig
    >>> config = NACLIPConfig(attn_strategy="gav", pamr_steps=0)
    >>> config.inference_options(prob_thd=0.2)["prob_thd"]
    0.2
    ```
    """

    model_type = "naclip"

    arch: str = DEFAULTS["arch"]
    attn_strategy: str = DEFAULTS["attn_strategy"]
    gaussian_std: float | int = DEFAULTS["gaussian_std"]
    pos_embed_interpolation: str = DEFAULTS["pos_embed_interpolation"]
    slide_crop: int = DEFAULTS["slide_crop"]
    slide_stride: int = DEFAULTS["slide_stride"]
    slide_batch_size: int = DEFAULTS["slide_batch_size"]
    logit_scale: float | int = DEFAULTS["logit_scale"]
    prob_thd: float | int = DEFAULTS["prob_thd"]
    area_thd: float | int = DEFAULTS["area_thd"]
    pamr_steps: int = DEFAULTS["pamr_steps"]
    pamr_dilations: list[int] | tuple[int, ...] = DEFAULTS["pamr_dilations"]
    text_batch_size: int = DEFAULTS["text_batch_size"]
    prompt_templates: list[str] | tuple[str, ...] | None = DEFAULTS["prompt_templates"]

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        for name, value in self.check_naclip_settings().items():
            object.__setattr__(self, name, value)

    def naclip_settings(self) -> dict[str, Any]:
        """The NACLIP settings of this config, by name."""
        return {name: getattr(self, name) for name in CONFIG_SETTINGS}

    def check_naclip_settings(self) -> dict[str, Any]:
        """Check every NACLIP setting (values and the rules between them); returns them normalised.

        Raises `ValueError` naming the setting, its value and the valid range.
        """
        checked = check_settings(self.naclip_settings())
        check_attention_strategy(checked["attn_strategy"])
        return checked

    def inference_options(self, **overrides: Any) -> dict[str, Any]:
        """The inference options of one call: this config's values with `overrides` on top, checked.

        `method="sclip"` (a name of `naclip_hf.methods.METHODS`) puts that method's settings between the config's
        values and the other overrides. Returns every NACLIP setting but `prompt_templates` and `text_batch_size`
        (those of the text side), plus the image processor's `short_side` when given (or set by the method). The
        config itself is not changed. Raises `ValueError` for an unknown option or an invalid value.
        """
        overrides = {name: value for name, value in overrides.items() if value is not None}
        if "method" in overrides:
            overrides = method_settings(overrides.pop("method"), overrides)
        # The config's own values are checked too: they may have been assigned after loading.
        options = check_settings({**self.naclip_settings(), **overrides})
        check_attention_strategy(options["attn_strategy"])
        for name in ("prompt_templates", "text_batch_size"):
            options.pop(name)
        return options

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

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        """As `PretrainedConfig.from_dict`; `method=NAME` puts that method's settings over the saved ones, and
        the other keyword arguments over both (`from_pretrained(path, method="sclip", pamr_steps=10)`)."""
        method = kwargs.pop("method", None)
        if method is not None:
            config_dict = {**config_dict, **_config_fields(method_settings(method, {}))}
        return super().from_dict(config_dict, **kwargs)


def method_settings(method: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """The settings of `method` (a name of `naclip_hf.methods.METHODS`) with `overrides` on top."""
    try:
        from .methods import get_method  # not needed by configs that name no method
    except ImportError:  # a Hub folder's copy of this file without the methods module
        raise ValueError(
            f"method={method!r} needs the naclip-hf package (pip install naclip-hf); or give the method's settings "
            "themselves (arch, attn_strategy, ...)."
        ) from None
    return {**get_method(method).settings, **overrides}


def _config_fields(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings a config holds (the image processor's `short_side` is not one)."""
    return {name: value for name, value in settings.items() if name in CONFIG_SETTINGS}


_dataclass_init = NACLIPConfig.__init__


@wraps(_dataclass_init)
def _init_with_method(self: NACLIPConfig, *args: Any, method: str | None = None, **kwargs: Any) -> None:
    # `NACLIPConfig(method="sclip", pamr_steps=10)`: the method's settings, under those given.
    if method is not None:
        kwargs = _config_fields(method_settings(method, kwargs)) | {k: v for k, v in kwargs.items()
                                                                   if k not in CONFIG_SETTINGS}  # fmt: skip
    _dataclass_init(self, *args, **kwargs)


NACLIPConfig.__init__ = _init_with_method


def check_attention_strategy(name: str) -> None:
    """Raise `ValueError` unless `name` is in the attention registry of `modeling_naclip`."""
    from .modeling_naclip import NACLIP_ATTENTION_FUNCTIONS  # the registry needs torch; the config module does not

    if name not in NACLIP_ATTENTION_FUNCTIONS:
        raise ValueError(
            f"attn_strategy={name!r} is invalid: it must be one of {', '.join(NACLIP_ATTENTION_FUNCTIONS)} "
            "(register a new one with naclip_hf.modeling_naclip.register_attention)."
        )


# Each field above is a setting of `options.SETTINGS`; a new setting added there must be added here too.
assert set(CONFIG_SETTINGS) <= set(NACLIPConfig.__dataclass_fields__), "NACLIPConfig misses a setting of options.py"
assert all(SETTINGS_BY_NAME[name].stage != "image" for name in CONFIG_SETTINGS)

__all__ = ["COMPATIBLE_MODEL_TYPES", "NACLIPConfig"]
