"""Every NACLIP setting in one place: name, default, type, valid range, where it acts, and its help text.

`NACLIPConfig` takes its fields and defaults from here; the pipeline's keywords, `forward`'s and the image
processor's arguments, the command line's `--set`, its help and the model card are all derived from `SETTINGS`.
This module imports only the standard library, so that the command line can answer `--help` without torch.

Each setting acts at one stage:

- `block`: the last vision block (`arch`, `attn_strategy`, `gaussian_std`; ResCLIP's `temp_thd`,
  `attn_rcs_weights`, `attn_sfr_weights`, `use_sfr`). Saved in the config; `forward` can override them for one call.
- `model`: the rest of the architecture (`pos_embed_interpolation`): config only.
- `windows`: how `forward` tiles the image into sliding windows.
- `post`: post-processing by `NACLIPImageProcessor.post_process_semantic_segmentation`.
- `image`: resizing by the image processor (not a config field: the image processor saves it).
- `text`: embedding class names.

Adding an inference option is one `Setting` entry here plus the one function that reads it: `NACLIPConfig` gains
the field, `forward` (stages `block` and `windows`) or `post_process_semantic_segmentation` (stage `post`) accept
it as a keyword through the `TypedDict`s built from this list, and the pipeline, `--set`, the help texts and the
model card list it. A method (`METHOD_SETTINGS`) is a named bundle of settings.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field, make_dataclass
from typing import Any, TypedDict

# The checkpoint used when none is named (pipeline default, command line, model card).
DEFAULT_CHECKPOINT = "openai/clip-vit-base-patch16"
# Seconds to wait for an image URL when no timeout is given (image inputs, pipeline, command line).
DEFAULT_URL_TIMEOUT = 30.0

STAGES = ("block", "model", "windows", "post", "image", "text")


@dataclass(frozen=True)
class Setting:
    """One setting. `kind` is one of "str", "int", "float", "bool", "int_list", "float_list", "str_list"; numbers
    (and list items) are checked against `minimum` / `maximum` (`exclusive_minimum` makes the lower bound strict);
    strings against `choices` when given; lists against `length` when given. `speed_only` settings change speed and
    memory, never results."""

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
    length: int | None = None

    def valid_range(self) -> str:
        """The valid values in words, for error messages and help texts."""
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        if self.kind == "str_list":
            return "a non-empty list of templates, each with exactly one '{}'" + (" (or None)" if self.nullable else "")
        if self.kind == "str":
            return "a string (a registered name)"
        if self.kind == "bool":
            return "a bool (true or false)"
        what = {"int": "an integer", "float": "a number", "int_list": "a non-empty list of integers",
                "float_list": "a non-empty list of numbers"}[self.kind]  # fmt: skip
        if self.length is not None:
            what = f"a list of {self.length} {'integers' if self.kind == 'int_list' else 'numbers'}"
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
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise error
            return value
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
            raise error
        if self.length is not None and len(value) != self.length:
            raise error
        if self.kind in ("int_list", "float_list"):
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
        "arch", "reduced", "str", "block",
        "last vision block: 'reduced' = its attention output only, no residual and no MLP (NACLIP); 'vanilla' = "
        "the usual block with residuals and MLP; or a name of the dense-method registry in dense_methods, which "
        "replaces the last block and builds the patch tokens from the earlier blocks (attn_strategy is then "
        "unused): 'scclip' (SC-CLIP), 'sfp' (SFP)",
    ),
    Setting(
        "attn_strategy", "naclip", "str", "block",
        "attention of the last vision block, a name of the attention registry in modeling_naclip: 'naclip' "
        "softmax(s·k·kᵀ + Ω), 'gav' softmax(s·q·kᵀ + Ω), 'kk' softmax(s·k·kᵀ), 'nonly' softmax(c·Ω), 'csa' "
        "softmax(s·q·qᵀ) + softmax(s·k·kᵀ) (SCLIP, with arch='vanilla'), 'qq' softmax(s·q·qᵀ) (ClearCLIP), "
        "'identity' each token attends only to itself (MaskCLIP), 'vanilla' CLIP's own softmax(s·q·kᵀ)",
    ),
    Setting(
        "gaussian_std", 5.0, "float", "block",
        "σ of the Gaussian neighbourhood bias Ω, in patches", minimum=0.0, exclusive_minimum=True,
    ),
    Setting(
        "temp_thd", 0.25, "float", "block",
        "ResCLIP's SFR: first-pass pixels whose top name probability is below it take name 0 before each patch "
        "takes its most frequent name", minimum=0.0, maximum=1.0,
    ),
    Setting(
        "attn_rcs_weights", (2.0, 0.4), "float_list", "block",
        "ResCLIP's RCS (τ, λ): the last block's attention becomes τ·((1 − λ)·softmax + λ·A) with A the mean "
        "attention of the middle blocks (6th to 9th of 12), not renormalised; λ <= 1",
        minimum=0.0, length=2,
    ),
    Setting(
        "attn_sfr_weights", (1.8, 0.7), "float_list", "block",
        "ResCLIP's SFR (τ, λ): the last block's scores become τ·((1 − λ)·s·k·kᵀ + λ·S) with S the patch affinity "
        "of a first pass's labels; λ <= 1",
        minimum=0.0, length=2,
    ),
    Setting(
        "use_sfr", True, "bool", "block",
        "ResCLIP: run SFR (a first pass of the last block labels the patches, patches of one region attend to "
        "each other); false = RCS only",
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
        "window_padding", "none", "str", "windows",
        "windows whose sides are not multiples of the patch size: 'none' drops the leftover pixels (a strided "
        "convolution's rule; NACLIP, SCLIP); 'centered' zero-pads the window, centred, to whole patches and crops "
        "the logits back (ClearCLIP)",
        choices=("none", "centered"),
    ),
    Setting(
        "slide_batch_size", 0, "int", "windows",
        "windows per vision-tower call (speed and memory only); 0 = by precision: 16, or on a CPU in bfloat16 or "
        "float16 about 600 tokens' worth (3 windows of 224 pixels at patch 16), which keeps each call's "
        "activations in cache",
        minimum=0, speed_only=True,
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

# The `arch` values that run the last layer as a block; any other `arch` names a dense method (`dense_methods`).
BLOCK_ARCHS = ("reduced", "vanilla")

# What `slide_batch_size=0` runs per vision-tower call (see `window_batch_size`).
WINDOW_BATCH = 16
HALF_PRECISION_CPU_WINDOW_TOKENS = 600


def window_batch_size(setting: int, window_tokens: int, element_size: int, on_cpu: bool) -> int:
    """Windows per vision-tower call: `setting` (`slide_batch_size`) when positive; else `WINDOW_BATCH`, or for
    2-byte floats on a CPU as many windows of `window_tokens` tokens as make `HALF_PRECISION_CPU_WINDOW_TOKENS`
    (at least one). Half-precision matrix products on CPUs are fast enough that the elementwise work between them,
    paced by memory, decides the speed once a call's activations outgrow the cache; float32 and GPUs keep large
    batches.

    >>> window_batch_size(0, 197, 2, on_cpu=True), window_batch_size(0, 197, 4, on_cpu=True)
    (3, 16)
    """
    if setting > 0:
        return setting
    if element_size >= 4 or not on_cpu:
        return WINDOW_BATCH
    return max(1, HALF_PRECISION_CPU_WINDOW_TOKENS // max(1, window_tokens))


SETTINGS_BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}
DEFAULTS: dict[str, Any] = {setting.name: setting.default for setting in SETTINGS}
# Settings stored in `NACLIPConfig` (all but the image processor's).
CONFIG_SETTINGS: tuple[str, ...] = tuple(s.name for s in SETTINGS if s.stage != "image")


class MethodSettings(MutableMapping):
    """Named methods as bundles of settings (`method="sclip"`): a registry in the style of transformers'
    `AttentionInterface`, a class-wide mapping that `register` extends, and per-instance overrides.

    The built-in entries are the paper's comparisons; `naclip_hf.methods` describes them (sources, published
    numbers, per-benchmark settings) and registers new ones here.

    Example:

    ```python
    >>> MethodSettings()["sclip"]["attn_strategy"]
    'csa'
    ```
    """

    _global_mapping: dict[str, Mapping[str, Any]] = {
        "naclip": {"arch": "reduced", "attn_strategy": "naclip", "gaussian_std": 5.0},
        "clip": {"arch": "vanilla", "attn_strategy": "vanilla", "pamr_steps": 0},
        "maskclip": {"arch": "vanilla", "attn_strategy": "identity", "slide_crop": 0, "pamr_steps": 0},
        "sclip": {
            "arch": "vanilla", "attn_strategy": "csa", "slide_crop": 224, "slide_stride": 112, "logit_scale": 40.0,
            "prob_thd": 0.0, "area_thd": 0.0, "pamr_steps": 0, "short_side": 336,
        },
        "clearclip": {
            "arch": "reduced", "attn_strategy": "qq", "slide_crop": 448, "slide_stride": 224,
            "window_padding": "centered", "logit_scale": 50.0, "prob_thd": 0.0, "pamr_steps": 0, "short_side": 448,
        },
        "scclip": {
            "arch": "scclip", "slide_crop": 224, "slide_stride": 112, "window_padding": "none", "logit_scale": 40.0,
            "prob_thd": 0.0, "area_thd": 0.0, "pamr_steps": 0, "short_side": 336,
        },
        "resclip": {
            "arch": "resclip", "gaussian_std": 5.0, "slide_crop": 224, "slide_stride": 112, "window_padding": "none",
            "logit_scale": 40.0, "prob_thd": 0.0, "area_thd": 0.0, "pamr_steps": 0, "short_side": 336,
            "temp_thd": 0.25, "attn_rcs_weights": (2.0, 0.4), "attn_sfr_weights": (1.8, 0.7), "use_sfr": True,
        },
        "sfp": {
            "arch": "sfp", "slide_crop": 224, "slide_stride": 112, "window_padding": "none", "logit_scale": 40.0,
            "prob_thd": 0.0, "area_thd": 0.0, "pamr_steps": 0, "short_side": 336,
        },
    }  # fmt: skip

    def __init__(self) -> None:
        self._local_mapping: dict[str, Mapping[str, Any]] = {}

    def __getitem__(self, name: str) -> dict[str, Any]:
        if name in self._local_mapping:
            return dict(self._local_mapping[name])
        if name in self._global_mapping:
            return dict(self._global_mapping[name])
        raise ValueError(
            f"Unknown method {name!r}; choose one of: {', '.join(self)} (or register one with "
            "naclip_hf.methods.register_method)."
        )

    def __setitem__(self, name: str, settings: Mapping[str, Any]) -> None:
        self._local_mapping[name] = dict(check_settings(settings))

    def __delitem__(self, name: str) -> None:
        del self._local_mapping[name]

    def __iter__(self) -> Iterator[str]:
        return iter({**self._global_mapping, **self._local_mapping})

    def __len__(self) -> int:
        return len(self._global_mapping.keys() | self._local_mapping.keys())

    @classmethod
    def register(cls, name: str, settings: Mapping[str, Any]) -> None:
        """Make `method=name` available everywhere: `settings` are names of `SETTINGS` with their values."""
        cls._global_mapping[name] = dict(check_settings(settings))


def method_settings(method: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The settings of `method` (a name of `MethodSettings`) with `overrides` on top."""
    return {**MethodSettings()[method], **(overrides or {})}


def names_of_stage(*stages: str) -> tuple[str, ...]:
    """Names of the settings that act at the given stages, in `SETTINGS` order."""
    return tuple(setting.name for setting in SETTINGS if setting.stage in stages)


_PYTHON_TYPES: dict[str, Any] = {
    "str": str, "int": int, "float": float, "bool": bool, "int_list": list[int], "float_list": list[float],
    "str_list": list[str] | None,
}  # fmt: skip


def settings_typed_dict(name: str, *stages: str) -> type:
    """A `TypedDict` (all keys optional) of the settings of `stages`, for `**kwargs: Unpack[...]` signatures."""
    fields = {s.name: _PYTHON_TYPES[s.kind] for s in SETTINGS if s.stage in stages}
    return TypedDict(name, fields, total=False)  # type: ignore[misc, operator]


# The keywords of `forward` and of `post_process_semantic_segmentation`, by stage.
FORWARD_OPTIONS: tuple[str, ...] = names_of_stage("block", "windows")
POST_PROCESSING_OPTIONS: tuple[str, ...] = names_of_stage("post")
# What one call may choose: the method, the last block, the windows, the resize and the post-processing.
CALL_OPTIONS: tuple[str, ...] = ("method", *names_of_stage("block", "windows", "post", "image"))


class _OptionsMethods:
    """Methods of `NACLIPInferenceOptions` (its fields are built from `SETTINGS`)."""

    def to_dict(self) -> dict[str, Any]:
        """Every option by name (`method` and `short_side` may be None)."""
        return {name: getattr(self, name) for name in CALL_OPTIONS}

    def of_stage(self, *stages: str) -> dict[str, Any]:
        """The options of `stages` by name, e.g. `of_stage("post")` for post-processing."""
        return {name: getattr(self, name) for name in names_of_stage(*stages)}

    def replace(self, **changes: Any) -> NACLIPInferenceOptions:
        """A copy with `changes` (names of `CALL_OPTIONS` but `method`), checked against the other options."""
        return resolve_options(self.to_dict(), changes)


def _option_field(setting: Setting) -> tuple[str, Any, Any]:
    kind = _PYTHON_TYPES[setting.kind] if setting.name != "short_side" else int | None
    default = tuple(setting.default) if isinstance(setting.default, (list, tuple)) else setting.default
    return setting.name, kind, field(default=None if setting.name == "short_side" else default)


NACLIPInferenceOptions = make_dataclass(
    "NACLIPInferenceOptions",
    [("method", str | None, field(default=None)), *(_option_field(SETTINGS_BY_NAME[n]) for n in CALL_OPTIONS[1:])],
    bases=(_OptionsMethods,),
    frozen=True,
)
NACLIPInferenceOptions.__module__ = __name__
NACLIPInferenceOptions.__doc__ = """The options of one call, resolved once (`resolve_options`) at the boundary (the
pipeline's call, `model.forward`, a segmenter's `options`, a command) and passed down unchanged: frozen, checked,
complete.

Fields: `method` (the method whose settings were taken, or None), then every setting of the stages `block`,
`windows`, `post` and `image` of `SETTINGS` (`short_side` None: the image processor's). Lists are tuples.

Example:

```python
>>> resolve_options({}, {"method": "clearclip"}).short_side
448
```
"""


def resolve_options(base: Mapping[str, Any], call: Mapping[str, Any] | None = None) -> NACLIPInferenceOptions:
    """The one place where a call's options are resolved.

    Args:
        base: the model's settings by name (a config's `naclip_settings()`, with its `method` if it has one);
            settings missing here take their defaults.
        call: this call's keywords (names of `CALL_OPTIONS`; None values are ignored).
    Layers, each on top of the one before: the defaults; `base` (with its method's `short_side`); the settings of
    the call's `method`; the call's other keywords. Raises `TypeError` for an unknown keyword (listing the known
    ones) and `ValueError` for an invalid value or an unknown method.
    """
    call = {name: value for name, value in (call or {}).items() if value is not None}
    unknown = sorted(set(call) - set(CALL_OPTIONS))
    if unknown:
        known = ", ".join(CALL_OPTIONS)
        raise TypeError(f"Unknown option(s) {', '.join(unknown)}; the options of a call are: {known}.")
    layered = {name: base[name] for name in CALL_OPTIONS if name in base}
    if layered.get("method") is not None and layered.get("short_side") is None:
        layered["short_side"] = MethodSettings()[layered["method"]].get("short_side")
    if "method" in call:
        layered.update(method_settings(call["method"]), method=call["method"])
    layered.update(call)
    method, short_side = layered.pop("method", None), layered.pop("short_side", None)
    checked = check_settings({k: v for k, v in layered.items() if k in SETTINGS_BY_NAME} | (
        {} if short_side is None else {"short_side": short_side}))  # fmt: skip
    values = {**{name: DEFAULTS[name] for name in CALL_OPTIONS[1:]}, "short_side": None, **checked}
    values = {name: tuple(value) if isinstance(value, list) else value for name, value in values.items()}
    return NACLIPInferenceOptions(method=method, **values)


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
    for name in ("attn_rcs_weights", "attn_sfr_weights"):
        if not merged[name][1] <= 1.0:
            raise ValueError(f"{name}={list(merged[name])!r} is invalid: λ (the second number) must be <= 1.")
    if merged["attn_strategy"] == "csa" and merged["arch"] == "reduced":
        raise ValueError("attn_strategy='csa' (SCLIP) keeps the residual and MLP of the block; set arch='vanilla'.")
    return checked


__all__ = [
    "BLOCK_ARCHS", "CALL_OPTIONS", "CONFIG_SETTINGS", "DEFAULTS", "DEFAULT_CHECKPOINT", "DEFAULT_URL_TIMEOUT",
    "FORWARD_OPTIONS", "POST_PROCESSING_OPTIONS", "MethodSettings", "NACLIPInferenceOptions", "SETTINGS",
    "SETTINGS_BY_NAME", "STAGES", "Setting", "check_settings", "method_settings", "names_of_stage", "resolve_options",
    "settings_typed_dict"
]
