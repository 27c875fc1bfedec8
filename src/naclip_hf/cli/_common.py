"""What several commands share: their parsers' options (`--preset`, `--method`, labels, `--model`, `--dtype`,
`--set KEY=VALUE` and its help text, `--templates-file`), a run's settings and classes from them, checking `--model`
before loading it, keeping third-party libraries quiet. Standard library and `naclip_hf.models.naclip.options`
only at import."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..models.naclip.options import DEFAULT_CHECKPOINT, SETTINGS, SETTINGS_BY_NAME, Setting, check_settings

# Settings that `--set` does not take, and the option that sets them instead.
SET_REFUSED: dict[str, str] = {
    "prompt_templates": "--templates-file FILE (one template per line, '{}' where the class name goes)",
}
HELP_WIDTH = 100
# The values of --dtype (see `add_dtype_option`); "auto" is resolved by `naclip_hf.inference.resolve_dtype`.
DTYPE_CHOICES = ("float32", "bfloat16", "float16", "auto")
# Seconds of work after which a progress bar appears: shorter work shows none.
PROGRESS_DELAY = 3.0
# Libraries whose warnings and hints a command keeps quiet, and the variable each reads its log level from.
LIBRARY_VERBOSITY: dict[str, str] = {
    "transformers": "TRANSFORMERS_VERBOSITY",
    "huggingface_hub": "HF_HUB_VERBOSITY",
    "datasets": "DATASETS_VERBOSITY",
}


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
    error = ValueError(f"--set {pair}: {setting.name}={text!r} is invalid: it must be {setting.valid_range()}.")
    try:
        if setting.kind == "int":
            return int(text)
        if setting.kind == "float":
            return float(text)
        if setting.kind in ("int_list", "float_list"):
            convert = int if setting.kind == "int_list" else float
            return [convert(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise error from None
    if setting.kind == "bool":
        if text.lower() not in ("true", "false"):
            raise error
        return text.lower() == "true"
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


def set_options(args: argparse.Namespace, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The settings of `--set` on top of `base` (`parse_set_options`), with the `prompt_templates` of
    `--templates-file` when it is given."""
    settings = parse_set_options(args.settings, base)
    if args.templates_file is not None:
        from ..label_files import read_templates_file

        settings["prompt_templates"] = read_templates_file(args.templates_file)
    return settings


def add_command(
    subparsers: argparse._SubParsersAction, name: str, help: str, description: str, epilog: str | None = None,
    wrap: bool = True,
) -> argparse.ArgumentParser:
    """The parser of the command `name`; with `wrap` its description is filled to `HELP_WIDTH` columns and shown,
    like `epilog`, as written (else argparse wraps both to the terminal)."""
    if not wrap:
        return subparsers.add_parser(name, help=help, description=description, epilog=epilog)
    return subparsers.add_parser(name, help=help, description=textwrap.fill(description, width=HELP_WIDTH),
                                 epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip


def number_type(
    convert: Callable[[str], Any], valid: Callable[[Any], bool], not_a_number: str, invalid: str
) -> Callable[[str], Any]:
    """An argparse type: `convert(text)`, which must be `valid`; the messages are formatted with `text` and (for
    `invalid`) `value`."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(not_a_number.format(text=text)) from None
        if not valid(value):
            raise argparse.ArgumentTypeError(invalid.format(text=text, value=value))
        return value

    return parse


def add_preset_option(parser: argparse.ArgumentParser, what: str, after: str = "", required: bool = False) -> None:
    """`--preset NAME` (a benchmark of `naclip_hf.benchmarks`); its help is `what`, the benchmarks, then `after`."""
    from ..benchmarks import BENCHMARKS

    parser.add_argument("--preset", default=None, required=required, metavar="NAME",
                        help=f"{what}: {', '.join(BENCHMARKS)}{after}")  # fmt: skip


def add_method_option(parser: argparse.ArgumentParser, what: str) -> None:
    """`--method NAME` (a method of `naclip_hf.methods`, default None); its help is `what`, then the methods."""
    from ..methods import describe_methods, method_names

    parser.add_argument("--method", default=None, choices=method_names(), metavar="NAME",
                        help=f"{what}: {describe_methods()}")  # fmt: skip


def settings_and_classes(
    args: argparse.Namespace, classes_required: bool = True, method_names_classes: bool = True
) -> tuple[dict[str, Any], int | None, list[list[str]] | None, str | None]:
    """A run's settings from --preset, --method, --set and --templates-file, without `short_side`; the short side
    (None when none of them sets it); the classes (`classes_from_options`, named as `--method`'s official code
    names them when `method_names_classes`); and the preset's name.

    The preset's settings come first, then the method's, then --set; --labels / --labels-file replace the preset's
    classes. With `classes_required`, no classes at all raise `ValueError`.
    """
    from ..benchmarks import get_benchmark
    from ..methods import combine_settings

    benchmark = get_benchmark(args.preset) if args.preset is not None else None
    base = combine_settings(benchmark, args.method) if benchmark is not None or args.method is not None else None
    settings = set_options(args, base)
    classes = classes_from_options(args, benchmark, args.method if method_names_classes else None)
    if classes is None and classes_required:
        raise ValueError(
            'No labels given; name the classes with --labels cat "dog, puppy" ..., --labels-file FILE (one class '
            "per line) or --preset NAME (a benchmark's classes)."
        )
    short_side = settings.pop("short_side", None)
    return settings, short_side, classes, None if benchmark is None else benchmark.name


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


def add_preset_classes_option(parser: argparse.ArgumentParser) -> None:
    """`--preset-classes`: keep the preset's class names under `--method` (see `names_method`)."""
    parser.add_argument(
        "--preset-classes", action="store_true",
        help="with --preset and --method, name the classes as the preset does; by default a method uses the names "
        "its official code uses on that benchmark where they differ (e.g. ClearCLIP's one 'background' class on "
        "voc21)",
    )  # fmt: skip


def names_method(args: argparse.Namespace, method: str | None) -> str | None:
    """The method whose class names a preset's run uses: `method`, or None (the preset's own names) with
    `--preset-classes`. Pass it to `Benchmark.class_names(method=...)`."""
    return None if getattr(args, "preset_classes", False) else method


def classes_from_options(
    args: argparse.Namespace, benchmark: Any = None, method: str | None = None
) -> list[list[str]] | None:
    """The classes of `--labels` / `--labels-file`, else the benchmark's (when given; named as `method`'s official
    code names them unless `--preset-classes`), else None. `--preset-classes` without a benchmark, with labels
    that replace its classes, or labels naming fewer than two classes (`parse_label_set`) raise `ValueError`."""
    from ..label_files import read_labels_file
    from ..models.naclip.labels import parse_label_set

    if getattr(args, "preset_classes", False):
        if benchmark is None:
            raise ValueError("--preset-classes keeps a preset's class names; add --preset NAME or drop it.")
        if args.labels is not None or args.labels_file is not None:
            raise ValueError(
                "--preset-classes keeps the preset's class names but --labels / --labels-file replace them; drop one."
            )
    if args.labels is not None:
        return parse_label_set(args.labels, "--labels")
    if args.labels_file is not None:
        return read_labels_file(args.labels_file)
    return None if benchmark is None else benchmark.class_names(method=names_method(args, method))


def add_model_option(parser: argparse.ArgumentParser) -> None:
    """`--model ID_OR_DIR`, defaulting to `options.DEFAULT_CHECKPOINT`."""
    parser.add_argument(
        "--model", default=DEFAULT_CHECKPOINT, metavar="ID_OR_DIR",
        help="checkpoint folder (config.json + weights) or Hub id (default: %(default)s)",
    )  # fmt: skip


DTYPE_HELP = (
    "precision of the model: float32 (the default; exact to the official code), bfloat16 (fast on CPUs with AMX or "
    "AVX512-BF16 and on GPUs; slow on other CPUs), float16 (GPUs only), or auto (the fastest this machine runs: "
    "float16 on a CUDA GPU, bfloat16 on a CPU with AMX or AVX512-BF16, else float32). Similarities, softmax and PAMR "
    "run in float32 whatever the choice"
)


def add_dtype_option(parser: argparse.ArgumentParser, dtype_help: str = "", help_text: str = DTYPE_HELP) -> None:
    """`--dtype {float32,bfloat16,float16,auto}` (default None: float32), the precision the model runs in (see
    `naclip_hf.inference.resolve_dtype`); `dtype_help` is added to its help, `help_text` replaces the rest of it."""
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default=None, help=help_text + dtype_help)


def add_segmentation_options(
    parser: argparse.ArgumentParser, preset_help: tuple[str, str], method_help: str, labels_help: str = "",
    dtype_help: str = "",
) -> None:
    """The options of a command that segments with one model (`naclip segment`, `naclip label`), in the order of
    its help: the labels, `--preset` (help: `preset_help`'s two parts, see `add_preset_option`), `--method`,
    `--preset-classes`, `--model`, `--dtype`, `--quantized` (run an export's int8 graph; see
    `naclip_hf.segmenter.load_segmenter`), `--set` and `--templates-file`."""
    add_label_options(parser, labels_help)
    add_preset_option(parser, *preset_help)
    add_method_option(parser, method_help)
    add_preset_classes_option(parser)
    add_model_option(parser)
    add_dtype_option(parser, dtype_help)
    parser.add_argument(
        "--quantized", action="store_true",
        help="with --model EXPORT (a folder written by `naclip export --quantize`): run its int8 graph instead of "
        "onnx/model.onnx (onnx/model_int8.onnx on CPUs with VNNI or AMX, else onnx/model_quantized.onnx)",
    )  # fmt: skip
    add_set_option(parser)


def check_model_source(model: str, option: str = "--model") -> Any:
    """Resolve `model` once, before anything heavy is imported (see `naclip_hf.checkpoints.resolve_checkpoint`): a
    folder must exist and hold config.json; a Hub id must be cached or downloadable (the Hub is asked once,
    briefly). Returns the `Checkpoint`, which the command loads from (`load_segmenter(checkpoint)`) without
    resolving it again. Raises `OSError` with the fix."""
    from ..checkpoints import resolve_checkpoint

    return resolve_checkpoint(model, option)


class DelayedProgress:
    """A progress bar (tqdm, on stderr) that appears only once the work has lasted `delay` seconds, at an update:
    short work shows none. `write` prints a line above the bar (or plainly while there is none).

    tqdm's own `delay` is not enough: its `write` redraws a bar that was not shown yet.
    """

    def __init__(self, total: int, description: str, unit: str, disable: bool = False,
                 delay: float = PROGRESS_DELAY) -> None:  # fmt: skip
        self.total, self.description, self.unit = total, description, unit
        self.disable, self.delay = disable, delay
        self.done = 0
        self._start = time.monotonic()
        self._bar: Any = None

    def update(self, count: int = 1) -> None:
        """`count` more items done; shows the bar if the work has lasted `delay` seconds and is not finished."""
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        elif not self.disable and self.done < self.total and time.monotonic() - self._start >= self.delay:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.done, desc=self.description, unit=self.unit,
                             file=sys.stderr, dynamic_ncols=True, delay=0)  # fmt: skip

    def write(self, line: str, file: Any = None) -> None:
        """Print `line` to `file` (default stdout) without breaking the bar."""
        file = sys.stdout if file is None else file
        if self._bar is None:
            print(line, file=file, flush=True)
        else:
            self._bar.write(line, file=file)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """For the duration of a command: no warnings or hints from third-party libraries (their errors still show),
    and progress bars only for work longer than `PROGRESS_DELAY` seconds.

    transformers, huggingface_hub and datasets read their `*_VERBOSITY` variable, and tqdm its `TQDM_DELAY`, when
    first imported, which in a `naclip` process happens inside the command; libraries imported earlier get the log
    level directly. A variable the user set wins. Everything is restored on exit.
    """
    saved_env = {name: os.environ.get(name) for name in (*LIBRARY_VERBOSITY.values(), "TQDM_DELAY")}
    saved_levels = {library: logging.getLogger(library).level for library in LIBRARY_VERBOSITY}
    for library, variable in LIBRARY_VERBOSITY.items():
        if variable not in os.environ:
            os.environ[variable] = "error"
            if library in sys.modules:
                logging.getLogger(library).setLevel(logging.ERROR)
    os.environ.setdefault("TQDM_DELAY", str(PROGRESS_DELAY))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"(?!naclip_hf)")  # warnings raised outside naclip_hf
            yield
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for library, variable in LIBRARY_VERBOSITY.items():
            default = logging.getLevelName(os.environ.get(variable, "warning").upper())
            level = saved_levels[library] or (default if isinstance(default, int) else logging.WARNING)
            logging.getLogger(library).setLevel(level)


def run_options(segmenter: Any, short_side: int | None) -> tuple[Any, dict[str, Any]]:
    """A run's options, resolved once (`segmenter.options`, at `short_side`, by default the model's), and the
    settings its outputs record (the model's config settings and that short side, JSON-friendly)."""
    from ..models.naclip.options import CONFIG_SETTINGS

    short_side = segmenter.short_side if short_side is None else short_side
    recorded = {key: jsonable(getattr(segmenter.config, key)) for key in CONFIG_SETTINGS}
    return segmenter.options(short_side=short_side), {**recorded, "short_side": short_side}


def jsonable(value: Any) -> Any:
    """A JSON-friendly copy of a setting's value (tuples become lists)."""
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    return value


__all__ = [
    "CommandError",
    "DelayedProgress",
    "LIBRARY_VERBOSITY",
    "PROGRESS_DELAY",
    "DTYPE_CHOICES",
    "SET_REFUSED",
    "add_command",
    "add_dtype_option",
    "add_label_options",
    "add_method_option",
    "add_model_option",
    "add_preset_classes_option",
    "add_preset_option",
    "add_segmentation_options",
    "add_set_option",
    "check_model_source",
    "classes_from_options",
    "jsonable",
    "number_type",
    "names_method",
    "parse_set_options",
    "quiet_libraries",
    "run_options",
    "set_options",
    "settable",
    "settings_and_classes",
    "settings_epilog",
]
