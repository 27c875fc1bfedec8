"""The README's Python examples run as written (with the tiny test checkpoint in place of the Hub id), and its
settings table lists every setting of `naclip_hf.options` with its default."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from naclip_hf.options import DEFAULT_CHECKPOINT, SETTINGS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
# A block preceded by this comment is not run (it needs what the tests cannot have, e.g. network or a GPU).
SKIP_MARKER = "<!-- readme-test: skip -->"


def python_blocks() -> list[tuple[str, str]]:
    """(id, code) of every ```python block of the README that is not marked to skip."""
    blocks = []
    for match in re.finditer(r"(<!--[^\n]*-->\s*\n)?```python\n(.*?)```", README, flags=re.S):
        if match.group(1) and SKIP_MARKER in match.group(1):
            continue
        line = README[: match.start(2)].count("\n") + 1
        blocks.append((f"README.md:{line}", match.group(2)))
    return blocks


BLOCKS = python_blocks()


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("code", [code for _, code in BLOCKS], ids=[block_id for block_id, _ in BLOCKS])
def test_python_example_runs(code, tiny_checkpoint, tmp_path):
    assert DEFAULT_CHECKPOINT in code or "naclip" in code
    script = tmp_path / "example.py"
    script.write_text(code.replace(DEFAULT_CHECKPOINT, str(tiny_checkpoint)), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NACLIP_CACHE": str(tmp_path / "cache")}
    completed = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, env=env,
                               timeout=600)  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]


def test_settings_table_lists_every_setting_with_its_default():
    section = README[README.index("## Settings") :]
    section = section[: section.index("\n## ", 1)]
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", section, flags=re.M))
    for setting in SETTINGS:
        assert setting.name in rows, f"{setting.name} is missing from the README's settings table"
        default = list(setting.default) if isinstance(setting.default, tuple) else setting.default
        shown = f'"{default}"' if isinstance(default, str) else str(default)
        assert rows[setting.name] == shown, f"{setting.name}: README says {rows[setting.name]}, options.py {shown}"
    assert set(rows) <= {setting.name for setting in SETTINGS}
