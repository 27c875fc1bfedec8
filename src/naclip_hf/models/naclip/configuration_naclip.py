"""Configuration of NACLIP: a CLIP configuration plus the architecture of the neighbour-aware last layer and the
defaults of the inference options."""

from __future__ import annotations

from typing import Any

from transformers import CLIPConfig

from .options import (
    CONFIG_SETTINGS,
    DEFAULTS,
    NACLIPInferenceOptions,
    check_settings,
    method_settings,
    resolve_options,
)

# Configs of these types describe a CLIP whose weights NACLIP can use as they are.
COMPATIBLE_MODEL_TYPES = ("clip", "naclip")


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

    Every setting (its default, valid range, stage and meaning) is an entry of `options.SETTINGS`; each is an
    attribute of the config (`config.pamr_steps`), saved in `config.json` and checked here: the last block (`arch`,
    `attn_strategy`, `gaussian_std`), the architecture (`pos_embed_interpolation`), sliding windows, post-processing
    and text settings.

    `method="sclip"` (a name of `options.MethodSettings`: naclip, clip, maskclip, sclip, clearclip, scclip, sfp)
    takes that method's settings; settings given alongside override them (`NACLIPConfig(method="sclip",
    pamr_steps=10)`, `from_pretrained(path, method="sclip")`). The config keeps the method's name
    (`config.method`), which also gives the method's own image size (`short_side`) where a call's options are
    resolved (`inference_options`). `arch="scclip"` / `"sfp"` (any name of `dense_methods.DENSE_METHODS`) replaces
    the last block by that method.

    Example:

    ```python
    >>> from naclip_hf import NACLIPConfig
    >>> config = NACLIPConfig(attn_strategy="gav", pamr_steps=0)
    >>> config.inference_options(prob_thd=0.2).prob_thd
    0.2
    ```
    """

    model_type = "naclip"

    def __init__(self, *, method: str | None = None, **kwargs: Any) -> None:
        # `NACLIPConfig(method="sclip", pamr_steps=10)`: the method's settings, under those given.
        if method is not None:
            kwargs = {**_config_fields(method_settings(method)), **kwargs}
        super().__init__(method=method, **kwargs)

    def __post_init__(self, **kwargs: Any) -> None:
        # CLIPConfig's `__init__` sets its own fields; NACLIP's settings (not dataclass fields: `options.SETTINGS`
        # owns them) arrive here with the other keywords.
        object.__setattr__(self, "method", kwargs.pop("method", None))
        for name in CONFIG_SETTINGS:
            object.__setattr__(self, name, kwargs.pop(name, DEFAULTS[name]))
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
        return check_settings(self.naclip_settings())

    def inference_options(self, **call: Any) -> NACLIPInferenceOptions:
        """The options of one call (`options.resolve_options`): this config's settings and method, then the call's
        `method`, then its other keywords. The config itself is not changed. Raises `TypeError` for an unknown
        option and `ValueError` for an invalid value.
        """
        return resolve_options({**self.naclip_settings(), "method": self.method}, call)

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
            config_dict = {**config_dict, **_config_fields(method_settings(method)), "method": method}
        return super().from_dict(config_dict, **kwargs)


def _config_fields(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings a config holds (the image processor's `short_side` is not one)."""
    return {name: value for name, value in settings.items() if name in CONFIG_SETTINGS}


__all__ = ["COMPATIBLE_MODEL_TYPES", "NACLIPConfig"]
