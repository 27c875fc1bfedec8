"""Model cards (README.md with Hub metadata) for saved NACLIP checkpoints, optionally with evaluation results.

The template is `card_templates/model_card.md` in this package (`string.Template` placeholders such as
`$model_name`). Results are the JSON files written by `naclip evaluate --out`; the mIoU is read from
`miou_percent` (percent) or, failing that, `mean_iou` (a fraction in [0, 1]).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any

import yaml

from .benchmarks import BENCHMARKS, paper_benchmarks
from .fileio import write_text_atomic
from .models.naclip.options import CONFIG_SETTINGS, DEFAULT_CHECKPOINT, DEFAULTS

if TYPE_CHECKING:
    from .models.naclip.configuration_naclip import NACLIPConfig


@dataclass(frozen=True)
class CardResult:
    """One evaluation run for the card: `miou` in percent, the run's `settings`, where it came from."""

    preset: str
    miou: float
    settings: dict[str, Any] = field(default_factory=dict)
    split: str | None = None
    num_images: int | None = None
    dataset: str | None = None
    protocol_deviations: tuple[str, ...] = ()
    source: str = ""

    @property
    def pamr(self) -> bool:
        return int(self.settings.get("pamr_steps", 0) or 0) > 0

    @property
    def dataset_name_and_type(self) -> tuple[str, str]:
        """The dataset's display name and model-index type: the benchmark's, else the dataset or preset name."""
        benchmark = BENCHMARKS.get(self.preset)
        if benchmark is not None:
            return benchmark.display_name, benchmark.dataset_type
        name = self.dataset or self.preset
        return name, name


def parse_results(data: Mapping[str, Any], source: str = "results") -> CardResult:
    """A `CardResult` from the dict of one `naclip evaluate --out` file. Raises `ValueError` naming `source` if a
    key is missing or the mIoU is not a finite percentage."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}.")
    preset = data.get("preset")
    if not isinstance(preset, str) or not preset:
        raise ValueError(f"{source}: no 'preset' (the benchmark name, e.g. 'voc21').")
    if data.get("miou_percent") is not None:
        miou = _number(data["miou_percent"], "miou_percent", source)
    elif data.get("mean_iou") is not None:
        fraction = _number(data["mean_iou"], "mean_iou", source)
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"{source}: mean_iou={fraction} is not a fraction in [0, 1]; write percentages as "
                             "'miou_percent'.")  # fmt: skip
        miou = fraction * 100.0
    else:
        raise ValueError(f"{source}: no mIoU ('miou_percent' in percent or 'mean_iou' as a fraction).")
    if not 0.0 <= miou <= 100.0:
        raise ValueError(f"{source}: mIoU {miou}% is outside [0, 100].")
    settings = data.get("settings") or {}
    if not isinstance(settings, Mapping):
        raise ValueError(f"{source}: 'settings' must be an object.")
    num_images = data.get("num_images")
    return CardResult(
        preset=preset,
        miou=round(miou, 2),
        settings=dict(settings),
        split=data.get("split") or settings.get("split"),
        num_images=int(num_images) if isinstance(num_images, (int, float)) else None,
        dataset=settings.get("data") if isinstance(settings.get("data"), str) else None,
        protocol_deviations=tuple(str(item) for item in data.get("protocol_deviations") or ()),
        source=source,
    )


def _number(value: Any, key: str, source: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: {key}={value!r} is not a number.") from None
    if not math.isfinite(number):
        raise ValueError(f"{source}: {key}={value!r} is not a finite number.")
    return number


def load_results(paths: Sequence[str | os.PathLike]) -> list[CardResult]:
    """Read `naclip evaluate --out` JSON files (see `parse_results`)."""
    results = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Results file {path} does not exist (write one with `naclip evaluate --out`).")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error}).") from None
        results.append(parse_results(data, str(path)))
    return results


def _read_settings(model_dir: Path) -> tuple[NACLIPConfig, int]:
    """The checkpoint's NACLIP config and the image processor's short side."""
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json; give a saved NACLIP or CLIP model folder.")
    from .models.naclip.configuration_naclip import NACLIPConfig

    config = NACLIPConfig.from_pretrained(str(model_dir))
    short_side = DEFAULTS["short_side"]
    for name in ("processor_config.json", "preprocessor_config.json"):
        path = model_dir / name
        if path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            saved = saved.get("image_processor", saved)
            if saved.get("image_processor_type") == "NACLIPImageProcessor" and "short_side" in saved:
                short_side = int(saved["short_side"])
                break
    return config, short_side


def _settings_table(config: NACLIPConfig, short_side: int) -> str:
    rows = []
    for key in CONFIG_SETTINGS:  # every setting saved in the config, in this order
        value = getattr(config, key, DEFAULTS[key])
        if key == "prompt_templates":
            value = "the 80 ImageNet templates" if value is None else f"{len(value)} custom templates"
        elif key == "pamr_dilations":
            value = ", ".join(str(v) for v in value)
        rows.append(f"| `{key}` | {value} |")
    rows.append(f"| `short_side` (image processor) | {short_side} |")
    return "\n".join(rows)


def _model_index(model_name: str, results: Sequence[CardResult]) -> str:
    """The `model-index` YAML block (empty without results)."""
    if not results:
        return ""
    entries = []
    for result in results:
        name, dataset_type = result.dataset_name_and_type
        dataset: dict[str, Any] = {"name": name, "type": dataset_type, "config": result.preset}
        if result.split:
            dataset["split"] = result.split
        entries.append({
            "task": {"type": "image-segmentation", "name": "Open-vocabulary semantic segmentation"},
            "dataset": dataset,
            "metrics": [{"type": "mean_iou", "value": result.miou, "name": "mIoU"}],
        })  # fmt: skip
    return yaml.safe_dump(
        {"model-index": [{"name": model_name, "results": entries}]}, sort_keys=False, allow_unicode=True
    )


def _published_table() -> str:
    lines = ["| Benchmark | Paper, no PAMR | Paper, PAMR |", "|---|---|---|"]
    for benchmark in paper_benchmarks():
        published = benchmark.published
        lines.append(f"| {benchmark.display_name} | {published['paper_no_pamr']:.1f} | "
                     f"{published['paper_pamr']:.1f} |")  # fmt: skip
    return "\n".join(lines)


def _results_section(results: Sequence[CardResult]) -> str:
    published = (
        "Published mIoU (%) of NACLIP with CLIP ViT-B/16 (OpenAI weights), from the paper:\n\n" + _published_table()
    )
    if not results:
        return (
            "No evaluation of this checkpoint is attached. To add one, run `naclip evaluate --preset PRESET "
            "--model MODEL --out results.json`, then `naclip card MODEL --results results.json`.\n\n" + published
        )
    lines = [
        "mIoU (%) of this checkpoint, measured with `naclip evaluate`:",
        "",
        "| Benchmark | Split | Images | PAMR | mIoU | Paper (same PAMR setting) |",
        "|---|---|---|---|---|---|",
    ]
    notes = []
    for result in results:
        name, _ = result.dataset_name_and_type
        numbers = BENCHMARKS[result.preset].published if result.preset in BENCHMARKS else {}
        key = "paper_pamr" if result.pamr else "paper_no_pamr"
        paper = f"{numbers[key]:.1f}" if key in numbers else "-"
        images = "-" if result.num_images is None else str(result.num_images)
        lines.append(f"| {name} | {result.split or '-'} | {images} | {'on' if result.pamr else 'off'} | "
                     f"{result.miou:.2f} | {paper} |")  # fmt: skip
        notes.extend(f"- {name}: {deviation}" for deviation in result.protocol_deviations)
    if notes:
        lines += ["", "Deviations from the evaluation protocol of the paper:", "", *notes]
    return "\n".join(lines) + "\n\n" + published


def read_template() -> str:
    """The model card template shipped with the package."""
    return resources.files("naclip_hf").joinpath("card_templates/model_card.md").read_text(encoding="utf-8")


def render_model_card(
    model_dir: str | os.PathLike,
    results: Sequence[str | os.PathLike | Mapping[str, Any] | CardResult] = (),
    base_model: str = DEFAULT_CHECKPOINT,
    *,
    repo_id: str | None = None,
    license: str = "mit",
) -> str:
    """The model card (README.md text) of a saved checkpoint folder.

    Args:
        model_dir: folder with `config.json` (NACLIP or plain CLIP); its settings fill the card.
        results: `naclip evaluate --out` JSON files (or their dicts); one model-index entry each.
        base_model: Hub id of the CLIP checkpoint the weights come from.
        repo_id: Hub id used in the usage examples (default: `your-name/<folder name>`).
        license: license identifier of the weights for the metadata.
    """
    model_dir = Path(model_dir)
    config, short_side = _read_settings(model_dir)
    parsed = [
        item if isinstance(item, CardResult)
        else parse_results(item, f"results[{i}]") if isinstance(item, Mapping)
        else load_results([item])[0]
        for i, item in enumerate(results)
    ]  # fmt: skip
    model_name = repo_id.split("/")[-1] if repo_id else model_dir.resolve().name
    ships_pipeline = bool(getattr(config, "custom_pipelines", None)) and (model_dir / "pipeline_naclip.py").is_file()
    note = "" if ships_pipeline else (
        "\n> This folder was saved without its pipeline code, so the example above needs it added first: save it "
        "with `naclip_hf.save_for_hub(model, processor, folder)` or the pipeline's `save_pretrained(folder)`.\n"
    )  # fmt: skip
    return Template(read_template()).substitute(
        license=json.dumps(license),
        base_model=base_model,
        base_model_yaml=json.dumps(base_model),
        model_index=_model_index(model_name, parsed),
        model_name=model_name,
        model_ref=repo_id or f"your-name/{model_name}",
        remote_code_note=note,
        settings_table=_settings_table(config, short_side),
        results_section=_results_section(parsed),
    )


def write_model_card(
    model_dir: str | os.PathLike,
    results: Sequence[str | os.PathLike | Mapping[str, Any] | CardResult] = (),
    base_model: str = DEFAULT_CHECKPOINT,
    out: str | os.PathLike | None = None,
    **kwargs: Any,
) -> Path:
    """Render the card (see `render_model_card`) and write it atomically to `out` (default MODEL_DIR/README.md).
    Returns the path written."""
    text = render_model_card(model_dir, results, base_model, **kwargs)
    return write_text_atomic(Path(model_dir) / "README.md" if out is None else Path(out), text)


__all__ = ["CardResult", "load_results", "parse_results", "read_template", "render_model_card", "write_model_card"]
