"""Hub folders: a model and its processor saved with the code that loads them (the model package), for
`trust_remote_code=True` where naclip-hf is not installed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from transformers.dynamic_module_utils import custom_object_save

from .fileio import apply_default_modes
from .models.naclip.pipeline_naclip import TASK, NACLIPSegmentationPipeline


def custom_pipelines_entry() -> dict[str, dict[str, Any]]:
    """The `custom_pipelines` entry of a Hub folder's config: loads this pipeline and the model (via `AutoModel`
    and the config's `auto_map`) from the folder's own code."""
    return {
        TASK: {
            "impl": f"{NACLIPSegmentationPipeline.__module__.rsplit('.', 1)[-1]}.{NACLIPSegmentationPipeline.__name__}",
            "pt": ["AutoModel"],
            "type": "multimodal",
        }
    }


def save_for_hub(model: Any, processor: Any, save_directory: str | os.PathLike) -> Path:
    """Save a model and its processor as a Hub-ready folder that needs only transformers (with
    `trust_remote_code=True`), not naclip-hf: weights, config with `auto_map` and `custom_pipelines`, tokenizer,
    processor, and the code files (`configuration_naclip.py`, `modeling_naclip.py`, `pipeline_naclip.py` and the
    modules they import). Returns the folder.

    With naclip-hf imported, the auto classes know the model's code already; without it, `auto_map` points
    `AutoConfig`, `AutoModel`, `AutoImageProcessor` and `AutoProcessor` at the copied files and `custom_pipelines`
    makes `pipeline(model=folder, trust_remote_code=True)` build this pipeline. The model's config is not changed.
    """
    save_directory = Path(save_directory)
    if save_directory.is_file():
        raise ValueError(f"{save_directory} is a file; give a folder to save into.")
    save_directory.mkdir(parents=True, exist_ok=True)
    for component in (type(model.config), type(model), type(processor), type(processor.image_processor)):
        if getattr(component, "_auto_class", None) is None:
            raise ValueError(
                f"{component.__name__} is not registered for an auto class; import naclip_hf (which registers NACLIP "
                "with transformers) before saving."
            )
    model.save_pretrained(save_directory)
    config_path = save_directory / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["custom_pipelines"] = custom_pipelines_entry()
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    processor.save_pretrained(save_directory)
    custom_object_save(NACLIPSegmentationPipeline, save_directory)
    apply_default_modes(save_directory)  # transformers writes the weights readable by their owner only
    return save_directory


__all__ = ["custom_pipelines_entry", "save_for_hub"]
