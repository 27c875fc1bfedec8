"""Write a Hugging Face Space folder that runs the demo: `app.py` (builds the app with `build_demo`),
`requirements.txt` (naclip-hf with its `demo` extra), `README.md` (the Space's front matter: Gradio SDK, app file,
title) and, for a local checkpoint, a copy of it in `model/`.

Standard library only: writing a Space needs neither Gradio nor torch.
"""

from __future__ import annotations

import os
import re
import shutil
from importlib import metadata
from pathlib import Path

from ..fileio import write_atomic

DEFAULT_TITLE = "NACLIP segmentation"
MODEL_FOLDER = "model"
"""Where a local checkpoint is copied inside the Space folder."""
# Files of a checkpoint folder that a Space needs (config, weights, tokenizer, processor); nothing else is copied.
CHECKPOINT_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.model", "*.py")
_GRADIO_REQUIREMENT = re.compile(r"^gradio\s*>=\s*([0-9][0-9.]*)")


def _package_version() -> str:
    try:
        return metadata.version("naclip-hf")
    except metadata.PackageNotFoundError:
        return ""


def default_requirement() -> str:
    """The pip requirement that installs naclip-hf with the demo's dependencies, at least this version."""
    version = _package_version()
    return f"naclip-hf[demo]>={version}" if version else "naclip-hf[demo]"


def gradio_sdk_version() -> str:
    """The Gradio version for the Space's `sdk_version`: the installed one, else the minimum of the `demo` extra."""
    try:
        return metadata.version("gradio")
    except metadata.PackageNotFoundError:
        pass
    try:
        requirements = metadata.requires("naclip-hf") or []
    except metadata.PackageNotFoundError:
        requirements = []
    for requirement in requirements:
        found = _GRADIO_REQUIREMENT.match(requirement)
        if found:
            return found.group(1)
    raise ValueError(
        "Cannot tell which Gradio version the Space should use: Gradio is not installed. Install the demo's "
        "dependencies with `pip install \"naclip-hf[demo]\"` and run the command again."
    )


def _app_source(model_expression: str, model_text: str) -> str:
    imports = "from pathlib import Path\n\n" if "Path(" in model_expression else ""
    return f'''"""Hugging Face Space: the NACLIP open-vocabulary segmentation demo (naclip-hf) on {model_text}."""

{imports}from naclip_hf.demo import build_demo

MODEL = {model_expression}

demo = build_demo(MODEL)

if __name__ == "__main__":
    demo.launch()
'''


def _readme(title: str, model_text: str, hub_model: str | None, sdk_version: str) -> str:
    models = f"models:\n  - {hub_model}\n" if hub_model else ""
    return f"""---
title: {title}
emoji: 🧩
colorFrom: indigo
colorTo: green
sdk: gradio
sdk_version: {sdk_version}
app_file: app.py
pinned: false
license: mit
short_description: Open-vocabulary semantic segmentation with NACLIP
{models}tags:
  - naclip
  - clip
  - semantic-segmentation
  - open-vocabulary
---

# {title}

Training-free open-vocabulary semantic segmentation with NACLIP on {model_text}: upload an image, name the
classes in text (one per line, synonyms after commas), pick a method (NACLIP, CLIP, SCLIP, ...) and get a per-pixel
segmentation. The **Attention** tab shows where one clicked patch looks in CLIP's last layer under the methods you
choose (CLIP, SCLIP and NACLIP at first).

The app is `naclip_hf.demo.build_demo` from naclip-hf. It also serves an API endpoint:

```python
from gradio_client import Client, handle_file

client = Client("<owner>/<this-space>")
overlay, classes, label_map = client.predict(
    handle_file("photo.jpg"), "sky\\nroad\\nperson", method="sclip", api_name="/segment"
)
```
"""


def _copy_checkpoint(source: Path, target: Path) -> None:
    target.mkdir()
    copied = 0
    for pattern in CHECKPOINT_PATTERNS:
        for path in sorted(source.glob(pattern)):
            if path.is_file():
                shutil.copy2(path, target / path.name)
                copied += 1
    if not any(target.glob("*.safetensors")):
        raise ValueError(
            f"The checkpoint folder {source} has no .safetensors weights to copy into the Space; save the model with "
            "save_pretrained (safetensors) or convert it with `naclip convert`."
        )


def write_space(
    out_dir: str | os.PathLike,
    model: str | os.PathLike,
    title: str = DEFAULT_TITLE,
    requirement: str | None = None,
) -> Path:
    """Write a Space folder running the demo on `model`, atomically (complete or not at all). Returns the folder.

    Args:
        out_dir: the folder to create; it must not exist, or be empty.
        model: a Hub id (the Space downloads it when it starts) or a local checkpoint folder (copied into
            `out_dir/model`: config, weights, tokenizer and processor files).
        title: the Space's title.
        requirement: the pip requirement installing naclip-hf (default: `naclip-hf[demo]>=<this version>`; e.g. a
            `naclip-hf[demo] @ git+https://...` URL for an unreleased version).

    Example:
        >>> write_space("my-space", "openai/clip-vit-base-patch16")  # doctest: +SKIP
        PosixPath('my-space')

    Upload it with `hf upload <owner>/<space> my-space --repo-type space`.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"{out_dir} already exists and is not an empty folder; choose a new folder for the Space.")
    if not out_dir.parent.is_dir():
        raise ValueError(f"The folder {out_dir.parent} does not exist; create it, or write {out_dir.name} elsewhere.")
    if "\n" in title or not title.strip():
        raise ValueError(f"The Space title {title!r} must be one non-empty line.")
    model_text = os.fspath(model)
    local = Path(model_text).expanduser()
    is_local = local.exists() or model_text.startswith((".", "/", "~"))
    if is_local and not (local / "config.json").is_file():
        raise ValueError(
            f"{model_text} is not a checkpoint folder (no config.json); give a folder saved with save_pretrained or "
            "written by `naclip convert`, or a Hub id such as openai/clip-vit-base-patch16."
        )
    sdk_version = gradio_sdk_version()
    requirement = requirement or default_requirement()
    if "\n" in requirement or not requirement.strip():
        raise ValueError(f"The requirement {requirement!r} must be one non-empty line (a pip requirement).")

    def build(folder: Path) -> None:
        folder.mkdir()
        if is_local:
            _copy_checkpoint(local, folder / MODEL_FOLDER)
            expression, shown, hub_model = f'Path(__file__).parent / "{MODEL_FOLDER}"', "a bundled checkpoint", None
        else:
            expression, shown, hub_model = repr(model_text), f"`{model_text}`", model_text
        (folder / "app.py").write_text(_app_source(expression, shown), encoding="utf-8")
        (folder / "requirements.txt").write_text(requirement.strip() + "\n", encoding="utf-8")
        (folder / "README.md").write_text(_readme(title.strip(), shown, hub_model, sdk_version), encoding="utf-8")

    if out_dir.exists():
        out_dir.rmdir()  # empty: replaced by the complete folder
    return write_atomic(out_dir, build)


__all__ = ["DEFAULT_TITLE", "MODEL_FOLDER", "default_requirement", "gradio_sdk_version", "write_space"]
