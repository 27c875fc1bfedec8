"""The README's Python examples run as written (with the tiny test checkpoint in place of the Hub id), and its
settings table lists every setting of `naclip_hf.options` with its default."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from naclip_hf.options import DEFAULT_CHECKPOINT, SETTINGS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
# A comment on the line before a block can say:
#   <!-- readme-test: skip (reason) -->        the block is not run (it needs a running server, network, a GPU);
#   <!-- readme-test: after COMMAND -->        `naclip COMMAND` runs first (e.g. an export the block reads); such
#                                              blocks are slow tests.
MARKER = re.compile(r"<!--\s*readme-test:\s*(skip|after)\b(.*?)-->")


def python_blocks() -> list[pytest.param]:
    """A test parameter per ```python block of the README that is not marked to skip."""
    blocks = []
    for match in re.finditer(r"(<!--[^\n]*-->[ \t]*\n)?```python\n(.*?)```", README, flags=re.S):
        marker = MARKER.search(match.group(1) or "")
        if marker and marker.group(1) == "skip":
            continue
        before = shlex.split(marker.group(2)) if marker else []
        line = README[: match.start(2)].count("\n") + 1
        marks = [pytest.mark.slow] if before else []
        blocks.append(pytest.param(match.group(2), before, id=f"README.md:{line}", marks=marks))
    return blocks


BLOCKS = python_blocks()


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("code,before", BLOCKS)
def test_python_example_runs(code, before, tiny_checkpoint, tmp_path):
    """Each block runs in a fresh folder holding the README's `examples/` (and what its `after` command made)."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NACLIP_CACHE": str(tmp_path / "cache")}

    def with_tiny_model(text: str) -> str:
        return text.replace(DEFAULT_CHECKPOINT, str(tiny_checkpoint))

    if before:
        command = [sys.executable, "-m", "naclip_hf.cli", *(with_tiny_model(arg) for arg in before)]
        prepared = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900)
        assert prepared.returncode == 0, prepared.stderr[-3000:]
    script = tmp_path / "example.py"
    script.write_text(with_tiny_model(code), encoding="utf-8")
    completed = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env,
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
