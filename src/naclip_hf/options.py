"""Every NACLIP setting in one place: name, default, type, valid range, where it acts, and its help text.

`NACLIPConfig` takes its fields and defaults from here; the pipeline's keywords, `forward`'s and the image
processor's arguments, the command line's `--set`, its help and the model card are all derived from `SETTINGS`.
This module imports only the standard library, so that the command line can answer `--help` without torch.

Each setting acts at one stage:

- `model`: the last vision block (`arch`, `attn_strategy`, `gaussian_std`, `pos_embed_interpolation`). Saved in
  the config; `forward` can override the first three for one call.
- `windows`: how `forward` tiles the image into sliding windows.
- `post`: post-processing by `NACLIPImageProcessor.post_process_semantic_segmentation`.
- `image`: resizing by the image processor (not a config field: the image processor saves it).
- `text`: embedding class names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The checkpoint used when none is named (pipeline default, command line, model card).
DEFAULT_CHECKPOINT = "openai/clip-vit-base-patch16"

STAGES = ("model", "windows", "post", "image", "text")


@dataclass(frozen=True)
class Setting:
    """One setting. `kind` is one of "str", "int", "float", "int_list", "str_list"; numbers are checked against
    `minimum` / `maximum` (`exclusive_minimum` makes the lower bound strict); strings against `choices` when given.
    `speed_only` settings change speed and memory, never results."""

    name: str
    default: Any
    kind: str
    stage: str
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    nullable: bool = False
    speed_only: bool = False

    def valid_range(self) -> str:
        """The valid values in words, for error messages and help texts."""
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        if self.kind == "str_list":
            return "a non-empty list of templates, each with exactly one '{}'" + (" (or None)" if self.nullable else "")
        if self.kind == "str":
            return "a string (a registered name)"
        what = {"int": "an integer", "float": "a number", "int_list": "a non-empty list of integers"}[self.kind]
        bounds = []
        if self.minimum is not None:
            bounds.append(f"{'>' if self.exclusive_minimum else '>='} {_number(self.minimum)}")
        if self.maximum is not None:
            bounds.append(f"<= {_number(self.maximum)}")
        return what + (" " + " and ".join(bounds) if bounds else "")

    def check(self, value: Any) -> Any:
        """`value` normalised (tuples to lists, ints to floats where a float is asked), or `ValueError` naming the
        setting, the value and the valid range."""
        if value is None and self.nullable:
            return None
        error = ValueError(f"{self.name}={value!r} is invalid: it must be {self.valid_range()}.")
        if self.kind == "str":
            if not isinstance(value, str) or (self.choices is not None and value not in self.choices):
                raise error
            return value
        if self.kind in ("int", "float"):
            return self._check_number(value, error)
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
            raise error
        if self.kind == "int_list":
            return [self._check_number(item, error) for item in value]
        if not all(isinstance(item, str) and item.count("{}") == 1 for item in value):
            raise error
        return list(value)

    def _check_number(self, value: Any, error: ValueError) -> int | float:
        integral = isinstance(value, int) and not isinstance(value, bool)
        if self.kind in ("int", "int_list"):
            if not integral:
                raise error
        elif not (integral or isinstance(value, float)) or not math.isfinite(value):
            raise error
        else:
            value = float(value)
        if self.minimum is not None and (
            value <= self.minimum if self.exclusive_minimum else value < self.minimum
        ):
            raise error
        if self.maximum is not None and value > self.maximum:
            raise error
        return value


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "arch", "reduced", "str", "model",
        "last vision block: 'reduced' = its attention output only, no residual and no MLP (NACLIP); 'vanilla' = "
        "the usual block with residuals and MLP",
        choices=("reduced", "vanilla"),
    ),
    Setting(
        "attn_strategy", "naclip", "str", "model",
        "attention of the last vision block, a name of the attention registry in modeling_naclip: 'naclip' "
        "softmax(s·k·kᵀ + Ω), 'gav' softmax(s·q·kᵀ + Ω), 'kk' softmax(s·k·kᵀ), 'nonly' softmax(c·Ω), 'csa' "
        "softmax(s·q·qᵀ) + softmax(s·k·kᵀ) (SCLIP, with arch='vanilla'), 'qq' softmax(s·q·qᵀ) (ClearCLIP), "
        "'identity' each token attends only to itself (MaskCLIP), 'vanilla' CLIP's own softmax(s·q·kᵀ)",
    ),
    Setting(
        "gaussian_std", 5.0, "float", "model",
        "σ of the Gaussian neighbourhood bias Ω, in patches", minimum=0.0, exclusive_minimum=True,
    ),
    Setting(
        "pos_embed_interpolation", "official", "str", "model",
        "resize of the positional embeddings for other grids: 'official' = bicubic with scale factor "
        "(grid + 0.1) / pretrained grid, as the official code; 'transformers' = CLIP's interpolate_pos_encoding",
        choices=("official", "transformers"),
    ),
    Setting(
        "slide_crop", 224, "int", "windows",
        "side of the sliding windows in pixels; 0 = one whole-image pass", minimum=0,
    ),
    Setting("slide_stride", 112, "int", "windows", "step between sliding windows in pixels (<= slide_crop)", minimum=1),
    Setting(
        "slide_batch_size", 16, "int", "windows",
        "windows per vision-tower call (speed and memory only)", minimum=1, speed_only=True,
    ),
    Setting(
        "logit_scale", 40.0, "float", "post",
        "temperature of the softmax over class names", minimum=0.0, exclusive_minimum=True,
    ),
    Setting(
        "prob_thd", 0.0, "float", "post",
        "pixels whose top class probability is below it become class 0", minimum=0.0, maximum=1.0,
    ),
    Setting(
        "area_thd", 0.0, "float", "post",
        "SCLIP's area threshold: a class other than 0 whose pixels (by top class) are at most this fraction of "
        "the pixels whose top class is not 0 is dropped, its pixels taking their next most probable class; 0 = off",
        minimum=0.0, maximum=1.0,
    ),
    Setting(
        "pamr_steps", 10, "int", "post",
        "iterations of PAMR refinement at the original size; 0 turns it off", minimum=0,
    ),
    Setting("pamr_dilations", (8, 16), "int_list", "post", "dilations of PAMR's 3×3 neighbourhoods", minimum=1),
    Setting(
        "short_side", 336, "int", "image",
        "resize the image's short side to this many pixels before the model (0 keeps the size)", minimum=0,
    ),
    Setting("text_batch_size", 128, "int", "text", "prompts per text-tower call", minimum=1, speed_only=True),
    Setting(
        "prompt_templates", None, "str_list", "text",
        "prompt templates, each with one '{}' for the class name; None = the 80 ImageNet templates",
        nullable=True,
    ),
)

SETTINGS_BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}
DEFAULTS: dict[str, Any] = {setting.name: setting.default for setting in SETTINGS}
# Settings stored in `NACLIPConfig` (all but the image processor's).
CONFIG_SETTINGS: tuple[str, ...] = tuple(s.name for s in SETTINGS if s.stage != "image")


def names_of_stage(*stages: str) -> tuple[str, ...]:
    """Names of the settings that act at the given stages, in `SETTINGS` order."""
    return tuple(setting.name for setting in SETTINGS if setting.stage in stages)


def check_settings(values: Mapping[str, Any], context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Check and normalise `values` (a subset of the settings), including the rules between settings.

    `context` gives the values of settings not in `values` for those rules (e.g. a config's `slide_crop` when only
    `slide_stride` is given); missing ones take their defaults. Raises `ValueError` for an unknown name or an
    invalid value, naming the setting, the value and the valid range.
    """
    unknown = sorted(set(values) - set(SETTINGS_BY_NAME))
    if unknown:
        raise ValueError(f"Unknown setting(s) {', '.join(unknown)}; valid settings: {', '.join(SETTINGS_BY_NAME)}.")
    checked = {name: SETTINGS_BY_NAME[name].check(value) for name, value in values.items()}
    merged = {**DEFAULTS, **(context or {}), **checked}
    if merged["slide_crop"] > 0 and merged["slide_stride"] > merged["slide_crop"]:
        raise ValueError(
            f"slide_stride={merged['slide_stride']} is larger than slide_crop={merged['slide_crop']}: pixels between "
            "windows would get no prediction; use slide_stride <= slide_crop."
        )
    if merged["attn_strategy"] == "csa" and merged["arch"] != "vanilla":
        raise ValueError("attn_strategy='csa' (SCLIP) keeps the residual and MLP of the block; set arch='vanilla'.")
    return checked


__all__ = [
    "CONFIG_SETTINGS",
    "DEFAULTS",
    "DEFAULT_CHECKPOINT",
    "SETTINGS",
    "SETTINGS_BY_NAME",
    "STAGES",
    "Setting",
    "check_settings",
    "names_of_stage",
]
