"""What several commands share: `--set KEY=VALUE` parsing and its help text, `--templates-file`, checking
`--model` before loading it. Standard library and `naclip_hf.options` only."""

from __future__ import annotations

import argparse
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..options import DEFAULT_CHECKPOINT, SETTINGS, SETTINGS_BY_NAME, Setting, check_settings

# Settings that `--set` does not take, and the option that sets them instead.
SET_REFUSED: dict[str, str] = {
    "prompt_templates": "--templates-file FILE (one template per line, '{}' where the class name goes)",
}
HELP_WIDTH = 100


class CommandError(ValueError):
    """An error of a command, printed as one `naclip COMMAND: error: ...` line, with its own exit status."""

    def __init__(self, message: str, exit_status: int = 2) -> None:
        super().__init__(message)
        self.exit_status = exit_status


def settable() -> tuple[Setting, ...]:
    """The settings `--set` accepts, in `options.SETTINGS` order."""
    return tuple(setting for setting in SETTINGS if setting.name not in SET_REFUSED)


def settings_epilog() -> str:
    """The help text listing every `--set` key with its meaning, default and valid values (from `options`)."""
    lines = ["Settings for --set KEY=VALUE (lists as 8,16):"]
    for setting in settable():
        default = setting.default
        if isinstance(default, (list, tuple)):
            default = ",".join(str(item) for item in default)
        text = f"{setting.help}. Default {default}; {setting.valid_range()}."
        lines.append(
            textwrap.fill(text, width=HELP_WIDTH, initial_indent=f"  {setting.name:<24}", subsequent_indent=" " * 26)
        )
    for name, option in SET_REFUSED.items():
        lines.append(textwrap.fill(f"{name}: set with {option}.", width=HELP_WIDTH, initial_indent="  ",
                                   subsequent_indent="    "))  # fmt: skip
    return "\n".join(lines)


def _convert(setting: Setting, text: str, pair: str) -> Any:
    """The typed value of `text` for `setting`; `ValueError` naming the option, setting and valid range."""
    error = ValueError(
        f"--set {pair}: {setting.name}={text!r} is invalid: it must be {setting.valid_range()}."
    )
    try:
        if setting.kind == "int":
            return int(text)
        if setting.kind == "float":
            return float(text)
        if setting.kind == "int_list":
            return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise error from None
    return text


def parse_set_options(
    pairs: Sequence[str], base: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The settings given as `KEY=VALUE` strings, typed and checked (later pairs win), on top of `base`.

    `base` (e.g. a benchmark's settings) comes first so that the pairs override it; the result holds both, checked
    together with `options.check_settings`. Raises `ValueError` naming the pair, the setting and the valid values.
    """
    values: dict[str, Any] = dict(base or {})
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key:
            raise ValueError(f"--set {pair!r} is not of the form KEY=VALUE (e.g. --set attn_strategy=kk).")
        if key in SET_REFUSED:
            raise ValueError(f"--set {key}=... is not taken; set {key} with {SET_REFUSED[key]}.")
        setting = SETTINGS_BY_NAME.get(key)
        if setting is None:
            valid = ", ".join(setting.name for setting in settable())
            raise ValueError(f"Unknown setting {key!r} in --set {pair}; valid settings: {valid}.")
        value = _convert(setting, text, pair)
        try:
            values[key] = setting.check(value)
        except ValueError as error:
            raise ValueError(f"--set {pair}: {error}") from None
    try:
        return check_settings(values)
    except ValueError as error:
        raise ValueError(f"{error} (from --set{' and the preset' if base else ''})") from None


def read_templates_option(path: Path | None) -> list[str] | None:
    """The templates of `--templates-file`, or None when it is not given."""
    if path is None:
        return None
    from ..labels import read_templates_file

    return read_templates_file(path)


def add_set_option(parser: argparse.ArgumentParser) -> None:
    """`--set KEY=VALUE` (repeatable) and `--templates-file FILE`."""
    parser.add_argument(
        "--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
        help="override a NACLIP setting (repeatable), e.g. --set attn_strategy=kk --set short_side=448; the keys "
        "are listed below",
    )  # fmt: skip
    parser.add_argument(
        "--templates-file", type=Path, default=None, metavar="FILE",
        help="prompt templates, one per line, '{}' where the class name goes (default: the model's; the 80 "
        "ImageNet templates)",
    )  # fmt: skip


def add_label_options(parser: argparse.ArgumentParser, labels_help: str = "") -> None:
    """`--labels CLASS ...` or `--labels-file FILE` (one of them); `labels_help` is added to `--labels`' help."""
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument(
        "--labels", nargs="+", default=None, metavar="CLASS",
        help="class names, one argument per class (class id = position); synonyms of a class go in the same "
        'argument, separated by commas, e.g. --labels cat "dog, puppy" sky' + labels_help,
    )  # fmt: skip
    labels.add_argument(
        "--labels-file", type=Path, default=None, metavar="FILE",
        help="text file, one class per line (line index = class id), synonyms separated by ', '",
    )  # fmt: skip


def classes_from_options(args: argparse.Namespace, benchmark: Any = None) -> list[list[str]] | None:
    """The classes of `--labels` / `--labels-file`, else the benchmark's (when given), else None."""
    from ..labels import parse_class_entries, read_labels_file

    if args.labels is not None:
        return parse_class_entries(args.labels)
    if args.labels_file is not None:
        return read_labels_file(args.labels_file)
    return None if benchmark is None else benchmark.class_names()


def add_model_option(parser: argparse.ArgumentParser) -> None:
    """`--model ID_OR_DIR`, defaulting to `options.DEFAULT_CHECKPOINT`."""
    parser.add_argument(
        "--model", default=DEFAULT_CHECKPOINT, metavar="ID_OR_DIR",
        help="checkpoint folder (config.json + weights) or Hub id (default: %(default)s)",
    )  # fmt: skip


def looks_like_local_path(model: str) -> bool:
    """Whether `--model` names a folder rather than a Hub id ("org/name" or "name")."""
    return (
        os.path.exists(model)
        or model.startswith((".", "/", "~"))
        or "\\" in model
        or model.count("/") > 1
        or os.path.isabs(model)
    )


def check_model_source(model: str, option: str = "--model") -> None:
    """Raise `OSError` for a local `model` folder that does not exist or has no config.json (before loading)."""
    if not looks_like_local_path(model):
        return
    path = Path(model).expanduser()
    fix = (
        f"give a checkpoint folder (config.json + model.safetensors), a Hub id such as {DEFAULT_CHECKPOINT}, or "
        "convert OpenAI CLIP weights with `naclip convert WEIGHTS.pt OUT_DIR --tokenizer TOKENIZER_DIR`"
    )
    if not path.exists():
        raise OSError(f"{option} {model}: no such folder; {fix}.")
    if not path.is_dir():
        raise OSError(f"{option} {model} is a file, not a folder; {fix}.")
    if not (path / "config.json").is_file():
        raise OSError(f"{option} {model}: folder has no config.json; {fix}.")


def stage_split(settings: Mapping[str, Any]) -> tuple[dict[str, Any], int | None]:
    """Config overrides (every stage but "image") and the image stage's `short_side` (None if not given)."""
    overrides = {key: value for key, value in settings.items() if SETTINGS_BY_NAME[key].stage != "image"}
    return overrides, settings.get("short_side")


def jsonable(value: Any) -> Any:
    """A JSON-friendly copy of a setting's value (tuples become lists)."""
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    return value


__all__ = [
    "CommandError",
    "SET_REFUSED",
    "add_model_option",
    "add_set_option",
    "check_model_source",
    "jsonable",
    "parse_set_options",
    "read_templates_option",
    "settable",
    "settings_epilog",
    "stage_split",
]
