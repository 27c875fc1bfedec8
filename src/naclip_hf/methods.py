"""Named methods: the training-free CLIP segmenters the NACLIP paper compares with, as bundles of settings.

A method is one `Method` entry in `METHODS`: the settings it implies (names from
`naclip_hf.models.naclip.options`), its own settings and class names per benchmark where its official code uses
others, where it comes from (paper and official code), and its published mIoU. `method="sclip"` selects one in
the config (`NACLIPConfig(method=...)`, `from_pretrained(path, method=...)`), per call
(`config.inference_options(method=...)`, the pipeline's `method=`), and on the command line (`--method`).
Settings given alongside a method override its settings. With a benchmark, the classes are named as the
method's official code names them (`Benchmark.class_names(method=...)`).

Adding a method is one `register_method(Method(...))`. This module imports only the standard library,
`naclip_hf.models.naclip.options` and `naclip_hf.benchmarks`, so that the command line can list the methods
without torch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .benchmarks import BENCHMARKS, Benchmark, get_benchmark, paper_benchmarks
from .models.naclip.options import MethodSettings, check_settings

DEFAULT_METHOD = "naclip"


@dataclass(frozen=True)
class PublishedResult:
    """Published mIoU (%) of a method: `miou` by benchmark name, with or without PAMR, and where it is printed.

    `average` is the average as printed (None when the source prints none).
    """

    source: str
    pamr: bool
    miou: Mapping[str, float]
    average: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "miou", MappingProxyType(dict(self.miou)))


@dataclass(frozen=True)
class Method:
    """A training-free segmentation method as settings of this package.

    Attributes:
        name: the name given as `method=NAME` / `--method NAME` (letters, digits and "_").
        title: the method's usual name, e.g. "SCLIP".
        summary: one line on what it changes in CLIP.
        settings: the settings it implies (names of `naclip_hf.models.naclip.options.SETTINGS`), on top of a
            benchmark's.
        benchmark_settings: benchmark name -> settings its official code uses on that benchmark, on top of
            `settings`.
        benchmark_classes: benchmark name -> class file its official code uses on that benchmark, where its names
            differ from the benchmark's own (`Benchmark.classes_file`): a path under the package's
            `benchmark_classes/` folder (e.g. "clearclip/cls_voc21.txt") or an absolute path. It must hold the
            benchmark's classes in label-id order; `Benchmark.class_names(method=...)` reads it.
        paper: the paper (authors, title, venue).
        code_url: the official code.
        published: its published mIoU (`PublishedResult`s), e.g. without and with PAMR.
    """

    name: str
    title: str
    summary: str
    settings: Mapping[str, Any]
    benchmark_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    benchmark_classes: Mapping[str, str] = field(default_factory=dict)
    paper: str = ""
    code_url: str = ""
    published: tuple[PublishedResult, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9_]+", self.name):
            raise ValueError(f"Method name {self.name!r} must be a non-empty name of letters, digits and '_'.")
        where = f"Method {self.name!r}"
        try:
            settings = check_settings(self.settings)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        per_benchmark = {}
        for benchmark, values in self.benchmark_settings.items():
            try:
                per_benchmark[benchmark] = MappingProxyType(check_settings(values, context=settings))
            except ValueError as error:
                raise ValueError(f"{where}, benchmark {benchmark!r}: {error}") from None
        for benchmark, classes_file in self.benchmark_classes.items():
            if not isinstance(classes_file, str) or not classes_file.strip():
                raise ValueError(
                    f"{where}, benchmark {benchmark!r}: class file {classes_file!r} must be a file name under "
                    "benchmark_classes/ (e.g. 'clearclip/cls_voc21.txt') or an absolute path."
                )
        object.__setattr__(self, "settings", MappingProxyType(settings))
        object.__setattr__(self, "benchmark_settings", MappingProxyType(per_benchmark))
        object.__setattr__(self, "benchmark_classes", MappingProxyType(dict(self.benchmark_classes)))
        object.__setattr__(self, "published", tuple(self.published))

    def settings_for(self, benchmark: str | Benchmark | None = None) -> dict[str, Any]:
        """The method's settings, with its own settings for `benchmark` (a name or `Benchmark`) on top."""
        settings = dict(self.settings)
        if benchmark is not None:
            name = benchmark.name if isinstance(benchmark, Benchmark) else benchmark
            settings.update(self.benchmark_settings.get(name, {}))
        return settings

    def published_result(self, pamr: bool) -> PublishedResult | None:
        """The published result with (`pamr=True`) or without PAMR, or None."""
        return next((result for result in self.published if result.pamr == pamr), None)


METHODS: dict[str, Method] = {}
"""Every known method by name, in registration order."""


def register_method(method: Method, replace: bool = False) -> Method:
    """Add `method` to `METHODS` (a name already registered raises `ValueError` unless `replace`).

    Its per-benchmark settings, class files and published numbers must name registered benchmarks.
    """
    if not isinstance(method, Method):
        raise TypeError(f"register_method needs a Method, got {type(method).__name__}.")
    if method.name in METHODS and not replace:
        raise ValueError(f"A method named {method.name!r} is already registered; pass replace=True.")
    named = set(method.benchmark_settings).union(method.benchmark_classes, *(r.miou for r in method.published))
    unknown = sorted(named - set(BENCHMARKS))
    if unknown:
        raise ValueError(
            f"Method {method.name!r} names unknown benchmark(s) {', '.join(unknown)}; use one of "
            f"{', '.join(BENCHMARKS)} (or register the benchmark first)."
        )
    METHODS[method.name] = method
    MethodSettings.register(method.name, method.settings)  # `method=NAME` in the config and per call
    return method


def method_names() -> tuple[str, ...]:
    """The names of the registered methods, in registration order."""
    return tuple(METHODS)


def get_method(name: str | Method) -> Method:
    """The method called `name` (a `Method` is returned as is); `ValueError` listing the valid names."""
    if isinstance(name, Method):
        return name
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown method {name!r}; choose one of: {', '.join(METHODS)} (or register one with "
            "naclip_hf.methods.register_method)."
        ) from None


def combine_settings(
    benchmark: str | Benchmark | None = None,
    method: str | Method | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The settings of a run, checked: the benchmark's, then the method's, then the method's own for that
    benchmark, then `overrides` (each later one wins).

    Example:

    ```python
    >>> combine_settings("voc21", "sclip")["logit_scale"]
    65.0
    ```
    """
    settings: dict[str, Any] = {}
    if benchmark is not None:
        benchmark = get_benchmark(benchmark)
        settings.update(benchmark.settings())
    if method is not None:
        settings.update(get_method(method).settings_for(benchmark))
    settings.update(overrides or {})
    return check_settings(settings)


def describe_methods() -> str:
    """One line per method for help texts: name, title and what it changes."""
    return "; ".join(f"{m.name} ({m.title}: {m.summary})" for m in METHODS.values())


def format_settings(settings: Mapping[str, Any]) -> str:
    """Settings as `key=value` pairs, for tables and help texts."""

    def show(value: Any) -> str:
        if isinstance(value, (list, tuple)):
            return ",".join(str(item) for item in value)
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)

    return ", ".join(f"{key}={show(value)}" for key, value in settings.items())


# -------------------------------------------------------------------------------------------- comparison table
def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def comparison_table(
    measured: Mapping[tuple[str, bool], Mapping[str, float]],
    benchmarks: Iterable[str | Benchmark] | None = None,
) -> str:
    """A markdown table in the layout of the NACLIP paper's Tables 1 and 5: one row per (method, PAMR) measured,
    a column per benchmark and the average, each cell "ours (published)".

    Args:
        measured: (method name, PAMR on) -> benchmark name -> mIoU (%) measured here; missing benchmarks show "–".
        benchmarks: the columns (default: the paper's eight benchmarks, in its order).
    The average is over the columns and shown only when the row has all of them; the published average is the
    one printed by the source when it printed one.
    """
    columns = [get_benchmark(b) for b in benchmarks] if benchmarks is not None else list(paper_benchmarks())
    names = [benchmark.name for benchmark in columns]
    lines = [
        "| method | PAMR | " + " | ".join(names) + " | average |",
        "|---|---|" + "---|" * (len(names) + 1),
    ]
    for (method_name, pamr), results in measured.items():
        method = get_method(method_name)
        published = method.published_result(pamr)
        reference = dict(published.miou) if published is not None else {}
        cells = []
        for name in names:
            ours = f"{results[name]:.1f}" if name in results else "–"
            cells.append(f"{ours} ({reference[name]:.1f})" if name in reference else ours)
        ours_avg = f"{_mean(results[name] for name in names):.1f}" if all(n in results for n in names) else "–"
        printed_only = not reference and names == [b.name for b in paper_benchmarks()]  # an average alone
        if published is not None and published.average is not None and (set(names) == set(reference) or
                                                                          printed_only):
            ours_avg += f" ({published.average:.1f})"
        elif reference and all(name in reference for name in names):
            ours_avg += f" ({_mean(reference[name] for name in names):.1f})"
        lines.append(f"| {method.title} | {'yes' if pamr else 'no'} | " + " | ".join(cells) + f" | {ours_avg} |")
    lines.append("")
    lines.append("Cells: ours (published). Published numbers: " + "; ".join(
        sorted({f"{get_method(m).title}: {r.source}" for (m, pamr) in measured
                for r in [get_method(m).published_result(pamr)] if r is not None})
    ) + ".")  # fmt: skip
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- the methods
_ORDER = ("voc21", "context60", "coco_object", "voc20", "cityscapes", "context59", "ade20k", "coco_stuff")


def _row(*values: float) -> dict[str, float]:
    """mIoU values in the paper's column order (V21 PC60 C-Obj V20 City PC59 ADE C-Stf) by benchmark name."""
    return dict(zip(_ORDER, values))


def _naclip_published() -> tuple[PublishedResult, ...]:
    # NACLIP's own numbers live in the benchmark descriptors (`Benchmark.published`).
    results = []
    for key, pamr in (("paper_no_pamr", False), ("paper_pamr", True)):
        miou = {b.name: b.published[key] for b in BENCHMARKS.values() if key in b.published}
        if miou:
            results.append(PublishedResult("NACLIP paper, Table 1", pamr, miou))
    return tuple(results)


# The settings of the built-in methods are the model package's (`method=` works in Hub folders too).
_BUILT_IN = MethodSettings()

_NACLIP_PAPER = "NACLIP paper (Hajimiri, Ben Ayed and Dolz, WACV 2025)"

for _method in (
    Method(
        "naclip", "NACLIP",
        "last block reduced to its attention, key-key similarity plus a Gaussian neighbourhood bias",
        settings=_BUILT_IN["naclip"],
        paper="Hajimiri, Ben Ayed and Dolz, Pay Attention to Your Neighbours: Training-Free Open-Vocabulary "
        "Semantic Segmentation, WACV 2025",
        code_url="https://github.com/sinahmr/NACLIP",
        published=_naclip_published(),
    ),
    Method(
        "clip", "CLIP", "plain CLIP: every patch token of the usual last block compared with the class names",
        settings=_BUILT_IN["clip"],
        paper="Radford et al., Learning Transferable Visual Models From Natural Language Supervision, ICML 2021",
        code_url="https://github.com/openai/CLIP",
    ),
    Method(
        "maskclip", "MaskCLIP",
        "last attention replaced by each token's own value (residual and MLP kept), one whole-image pass",
        settings=_BUILT_IN["maskclip"],
        paper="Zhou, Loy and Dai, Extract Free Dense Labels from CLIP, ECCV 2022",
        code_url="https://github.com/chongzhou96/MaskCLIP",
        published=(
            PublishedResult(_NACLIP_PAPER + ", Table 1", False,
                            _row(43.4, 23.2, 20.6, 74.9, 24.9, 26.4, 11.9, 16.7), 30.3),
        ),  # fmt: skip
    ),
    Method(
        "sclip", "SCLIP",
        "correlative self-attention softmax(s·q·qᵀ) + softmax(s·k·kᵀ) in the usual last block (residual and MLP "
        "kept)",
        settings=_BUILT_IN["sclip"],
        benchmark_settings={
            "voc21": {"logit_scale": 65.0, "prob_thd": 0.1, "area_thd": 0.1},
            "context60": {"logit_scale": 50.0, "prob_thd": 0.1},
            "coco_object": {"logit_scale": 50.0, "prob_thd": 0.1},
            "cityscapes": {"short_side": 560},
            "coco_stuff": {"short_side": 448},
        },
        paper="Wang, Mei and Yuille, SCLIP: Rethinking Self-Attention for Dense Vision-Language Inference, "
        "ECCV 2024",
        code_url="https://github.com/wangf3014/SCLIP",
        published=(
            PublishedResult(_NACLIP_PAPER + ", Table 5", False,
                            _row(59.1, 30.4, 30.5, 80.4, 32.2, 34.2, 16.1, 22.4), 38.2),
            PublishedResult(_NACLIP_PAPER + ", Table 5", True,
                            _row(61.7, 31.5, 32.1, 83.5, 34.1, 36.1, 17.8, 23.9), 40.1),
        ),
    ),  # fmt: skip
    Method(
        "clearclip", "ClearCLIP",
        "last block reduced to its attention (no residual, no MLP) with self-self attention softmax(s·q·qᵀ)",
        settings=_BUILT_IN["clearclip"],
        benchmark_settings={
            "voc21": {"prob_thd": 0.5},
            "context60": {"prob_thd": 0.15},
            "coco_object": {"prob_thd": 0.4},
            "cityscapes": {"slide_crop": 224},
        },
        # One "background" class where the presets list background things; "person" and "tvmonitor" alone.
        benchmark_classes={
            name: f"clearclip/cls_{name}.txt" for name in ("voc21", "coco_object", "voc20")
        },
        paper="Lan et al., ClearCLIP: Decomposing CLIP Representations for Dense Vision-Language Inference, "
        "ECCV 2024",
        code_url="https://github.com/mc-lan/ClearCLIP",
        published=(
            PublishedResult("ClearCLIP's README (ViT-B/16, benchmarks without background)", False,
                            {"voc20": 80.9, "context59": 35.9, "coco_stuff": 23.9, "cityscapes": 30.0,
                             "ade20k": 16.7}),
        ),
    ),  # fmt: skip
    Method(
        "scclip", "SC-CLIP",
        "last block replaced: LOF outlier tokens repaired, intermediate-layer similarities as aggregation and "
        "attention prior, multi-level fusion",
        settings=_BUILT_IN["scclip"],
        # The official configs (configs/cfg_*.py); the others use the defaults (short side 336, no threshold).
        benchmark_settings={
            "voc21": {"logit_scale": 50.0, "prob_thd": 0.15, "area_thd": 0.1},
            "context60": {"prob_thd": 0.15},
            "coco_object": {"logit_scale": 55.0, "prob_thd": 0.35},
            "cityscapes": {"short_side": 560},
        },
        paper="Bai, Liu, Han, Zhang and Tang, Self-Calibrated CLIP for Training-Free Open-Vocabulary "
        "Segmentation, arXiv 2411.15869",
        code_url="https://github.com/SuleBai/SC-CLIP",
        published=(
            # Only the average is cited here; the official repository prints no per-benchmark table.
            PublishedResult("SC-CLIP paper (ViT-B/16, average over the eight benchmarks), as cited", False, {},
                            43.9),
        ),
    ),  # fmt: skip
    Method(
        "sfp", "SFP",
        "last block replaced: outlier tokens the CLS token over-attends repaired, key-key, query-query and "
        "similarity-prior attention, multi-level fusion",
        settings=_BUILT_IN["sfp"],
        # The official configs (SFP_ICCV/configs/cfg_*.py, ViT-B/16 values).
        benchmark_settings={
            "voc21": {"logit_scale": 50.0, "prob_thd": 0.15, "area_thd": 0.1},
            "context60": {"prob_thd": 0.15},
            "coco_object": {"logit_scale": 55.0, "prob_thd": 0.35},
            "cityscapes": {"short_side": 560},
            "ade20k": {"short_side": 384},
        },
        # SFP names the person class "people".
        benchmark_classes={name: f"sfp/cls_{name}.txt" for name in ("voc21", "voc20")}
        | {"cityscapes": "sfp/cls_city_scapes.txt"},
        paper="Jin, Yu, Zhang, Sun, Dong and Xiao, Feature Purification Matters: Suppressing Outlier Propagation "
        "for Training-Free Open-Vocabulary Semantic Segmentation, ICCV 2025",
        code_url="https://github.com/Kimsure/SFP",
        published=(
            PublishedResult("SFP repository, evaluation log SFP_ICCV/test/20251207_184940 (ViT-B/16)", False,
                            {"voc21": 61.4}),
        ),
    ),  # fmt: skip
    Method(
        "resclip", "ResCLIP",
        "NACLIP's last block blended with the mid-layer attention (RCS) and, in a second pass, with an affinity of "
        "the first pass's labels (SFR)",
        settings=_BUILT_IN["resclip"],
        # The official configs (configs/cfg_*.py); the defaults above are cfg_context59.py's.
        benchmark_settings={
            "voc21": {"slide_crop": 0, "prob_thd": 0.1, "temp_thd": 0.5, "attn_rcs_weights": (2.0, 0.3),
                      "attn_sfr_weights": (2.2, 0.7)},
            "context60": {"prob_thd": 0.1, "temp_thd": 0.3, "attn_rcs_weights": (2.0, 0.3)},
            "coco_object": {"prob_thd": 0.1, "temp_thd": 0.11},
            "voc20": {"slide_crop": 0, "temp_thd": 0.1, "attn_rcs_weights": (2.0, 0.6),
                      "attn_sfr_weights": (2.1, 0.6)},
            "cityscapes": {"short_side": 560, "temp_thd": 0.1, "attn_rcs_weights": (2.0, 0.2),
                           "attn_sfr_weights": (2.1, 0.6)},
            "ade20k": {"attn_rcs_weights": (2.0, 0.3), "attn_sfr_weights": (2.1, 0.7)},
            "coco_stuff": {"temp_thd": 0.11},
        },
        paper="Yang, Deng, Li and Duan, ResCLIP: Residual Attention for Training-free Dense Vision-language "
        "Inference, CVPR 2025",
        code_url="https://github.com/yvhangyang/ResCLIP",
        published=(
            PublishedResult("ResCLIP's README, main results figure (NACLIP + ResCLIP, ViT-B/16)", False,
                            _row(61.1, 33.5, 35.0, 86.0, 35.9, 36.8, 18.0, 24.7)),
        ),
    ),  # fmt: skip
):
    register_method(_method)
del _method


__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "Method",
    "PublishedResult",
    "combine_settings",
    "comparison_table",
    "describe_methods",
    "format_settings",
    "get_method",
    "method_names",
    "register_method",
]
