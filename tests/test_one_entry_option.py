"""A new inference option is one `options.SETTINGS` entry plus the one function that reads it.

The test copies the package, adds a synthetic post-processing option `synthetic_temperature` (it multiplies
`logit_scale`) to `options.py` and reads it in `post_process_image`, then runs the copy: the option is a config
field, a pipeline keyword and a `--set` key, and it changes the result, with no other file edited.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import naclip_hf

PACKAGE = Path(naclip_hf.__file__).parent

ENTRY_ANCHOR = '    Setting("pamr_dilations",'
ENTRY = (
    '    Setting("synthetic_temperature", 1.0, "float", "post", "multiplies logit_scale", minimum=0.0,\n'
    "            exclusive_minimum=True),\n"
)
SIGNATURE_ANCHOR = "    area_thd: float = 0.0,\n    return_probabilities: bool = False,\n"
USE_ANCHOR = "    if logits.ndim != 4 or logits.shape[0] != 1:\n"


def add_synthetic_option(root: Path) -> Path:
    """A copy of the package with the option added in its two places; returns the folder to put on sys.path."""
    copy = root / "site" / "naclip_hf"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    options = copy / "models" / "naclip" / "options.py"
    text = options.read_text()
    assert text.count(ENTRY_ANCHOR) == 1
    options.write_text(text.replace(ENTRY_ANCHOR, ENTRY + ENTRY_ANCHOR))
    engine = copy / "models" / "naclip" / "postprocessing_naclip.py"
    text = engine.read_text()
    assert text.count(SIGNATURE_ANCHOR) == 1 and text.count(USE_ANCHOR) == 1
    parameter = "    synthetic_temperature: float = 1.0,\n    area_thd"
    text = text.replace(SIGNATURE_ANCHOR, SIGNATURE_ANCHOR.replace("    area_thd", parameter))
    text = text.replace(USE_ANCHOR, "    logit_scale = logit_scale * synthetic_temperature\n" + USE_ANCHOR)
    engine.write_text(text)
    return copy.parent


def run_copy(site: Path, code: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(site)}
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd,
                               timeout=600)  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


def test_a_synthetic_option_reaches_config_pipeline_and_cli_from_one_entry(tmp_path, tiny_checkpoint):
    site = add_synthetic_option(tmp_path)
    image = tmp_path / "image.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(image)
    code = f"""
import json
import naclip_hf
from naclip_hf import NACLIPConfig
from naclip_hf.cli import main
from transformers import pipeline
assert naclip_hf.__file__.startswith({str(site)!r}), naclip_hf.__file__
print(json.dumps({{"config": NACLIPConfig().synthetic_temperature}}))
segmenter = pipeline("naclip-segmentation", model={str(tiny_checkpoint)!r}, pamr_steps=0, text_cache_dir=None)
plain = segmenter({str(image)!r}, candidate_labels=["cat", "dog", "car"], return_probabilities=True)
flat = segmenter({str(image)!r}, candidate_labels=["cat", "dog", "car"], return_probabilities=True,
                 synthetic_temperature=1e-6)
print(json.dumps({{"plain": float(plain["probabilities"].max()), "flat": float(flat["probabilities"].max())}}))
status = main(["segment", {str(image)!r}, "--model", {str(tiny_checkpoint)!r}, "--labels", "cat", "dog",
               "--out", {str(tmp_path / "out")!r}, "--set", "synthetic_temperature=0.5", "--set", "pamr_steps=0"])
print(json.dumps({{"status": status}}))
"""
    lines = [json.loads(line) for line in run_copy(site, code, tmp_path).splitlines() if line.startswith("{")]
    values = {key: value for line in lines for key, value in line.items()}
    assert values["config"] == 1.0
    assert values["plain"] > 0.34 and abs(values["flat"] - 1 / 3) < 1e-4  # a temperature near 0: uniform
    assert values["status"] == 0
    summary = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert summary["settings"]["synthetic_temperature"] == 0.5
