"""Hub folders: a model and its processor saved with the code that loads them, for `trust_remote_code=True`
where naclip-hf is not installed. Imports only the standard library at module level (the file-mode helpers serve
the torch-free runtime too)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process's file-mode creation mask (e.g. 0o022)."""
    try:  # Linux reports it without changing it, which is safe with other threads running
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_default_modes(root: str | os.PathLike) -> None:
    """Give a folder written by other code (e.g. `save_pretrained`, which writes weights with mode 0o600) the
    usual permissions: `root` and every folder below it get 0o777 without the umask's bits, every file 0o666
    without them (plus the execute bits it already had, also without the umask's). Symbolic links are left
    alone."""
    umask = current_umask()
    os.chmod(root, 0o777 & ~umask)
    for folder, folders, files in os.walk(root):
        for name in folders:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o777 & ~umask)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                executable = os.stat(path).st_mode & 0o111
                os.chmod(path, (0o666 | executable) & ~umask)


def custom_pipelines_entry() -> dict[str, dict[str, Any]]:
    """The `custom_pipelines` entry of a Hub folder's config: loads this pipeline and the model (via `AutoModel`
    and the config's `auto_map`) from the folder's own code."""
    from .pipeline_naclip import TASK, NACLIPSegmentationPipeline

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
    from transformers.dynamic_module_utils import custom_object_save

    from .pipeline_naclip import NACLIPSegmentationPipeline

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


__all__ = ["apply_default_modes", "current_umask", "custom_pipelines_entry", "save_for_hub"]
