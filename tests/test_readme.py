"""The README's examples run as written, and its settings table lists every setting of
`naclip_hf.models.naclip.options` with its default.

Every ```bash and ```python block of the README is a test. A block runs unless the line before it is
`<!-- readme-test: skip (REASON) -->`, where REASON starts with one of `SKIP_REASONS`; `pytest -rs` lists the
skipped blocks with their reasons. `<!-- readme-test: after COMMAND -->` runs `naclip COMMAND` first (e.g. the
export a block reads). Such blocks, blocks that export a model and blocks marked `<!-- readme-test: slow -->`
(several model runs) are slow tests.

A block runs as a reader would run it, except that:
- it runs in a fresh folder holding links to the repository's `examples/` and `tests/`;
- the default checkpoint (`openai/clip-vit-base-patch16`, written out or implied by a missing `--model`) is the
  tiny test model;
- `/tmp/...` paths are under the test's own temporary folder.
`naclip` commands run in this process (`naclip_hf.cli.main`); `python` commands and blocks run in a subprocess.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from naclip_hf.cli import _common, main
from naclip_hf.models.naclip.options import DEFAULT_CHECKPOINT, SETTINGS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
MARKER = re.compile(r"<!--\s*readme-test:\s*(skip|after|slow)\b(.*?)-->")
FENCE = re.compile(r"^```(\S*)[ \t]*\n(.*?)^```[ \t]*$", flags=re.S | re.M)
# The only reasons a README block may be left out; keep this list, and the skipped blocks, short.
SKIP_REASONS = (
    "installs packages",
    "starts a server",
    "needs the demo running",
    "needs network",
    "needs GPUs",
    "needs OpenAI's weights",
    "needs the datasets",
    "runs for minutes",
)
MAX_SKIPPED = 10
# Languages of the README's code blocks that are not examples (plain text, citations).
NOT_EXAMPLES = ("", "bibtex", "text")


def _blocks() -> list[tuple[str, str, int, str]]:
    """(language, code, line of the code's first line, the line before the opening fence) per fenced block."""
    blocks = []
    for match in FENCE.finditer(README):
        before = README[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        blocks.append((match.group(1), match.group(2), README[: match.start(2)].count("\n") + 1, before))
    return blocks


def example_params() -> list[pytest.param]:
    """A test parameter per ```bash and ```python block: (language, code, `after` command words)."""
    params = []
    for language, code, line, before in _blocks():
        if language not in ("bash", "python"):
            continue
        marker = MARKER.fullmatch(before)
        marks, after = [], []
        if marker and marker.group(1) == "skip":
            marks.append(pytest.mark.skip(reason=marker.group(2).strip().strip("()")))
        elif marker and marker.group(1) == "after":
            after = shlex.split(marker.group(2))
        if after or (marker and marker.group(1) == "slow") or re.search(r"^\s*naclip export\b", code, flags=re.M):
            marks.append(pytest.mark.slow)
        params.append(pytest.param(language, code, after, id=f"README.md:{line}-{language}", marks=marks))
    return params


EXAMPLES = example_params()


def test_every_code_block_is_an_example_or_plain_text():
    languages = {language for language, *_ in _blocks()}
    assert languages <= {"bash", "python", *NOT_EXAMPLES}, f"blocks in {languages} would be neither run nor skipped"
    assert len(EXAMPLES) >= 15


def test_skipped_blocks_are_few_and_say_why():
    skipped = [example for example in EXAMPLES if any(mark.name == "skip" for mark in example.marks)]
    for example in skipped:
        (reason,) = [mark.kwargs["reason"] for mark in example.marks if mark.name == "skip"]
        assert reason.startswith(SKIP_REASONS), f"{example.id}: skip reason {reason!r} is not one of SKIP_REASONS"
    assert len(skipped) <= MAX_SKIPPED, [example.id for example in skipped]


def commands(script: str) -> list[list[str]]:
    """The commands of a bash block: continued lines joined, comments dropped, split at `&&`."""
    found = []
    for line in script.replace("\\\n", " ").splitlines():
        command: list[str] = []
        for word in [*shlex.split(line, comments=True), "&&"]:
            if word != "&&":
                command.append(word)
            elif command:
                found.append(command)
                command = []
    return found


@pytest.fixture
def example_folder(tmp_path, tiny_checkpoint, monkeypatch):
    """The folder an example runs in, and the function mapping its text to what runs there."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    (tmp_path / "tmp").mkdir()
    for name in ("examples", "tests"):
        (folder / name).symlink_to(ROOT / name)
    monkeypatch.chdir(folder)
    monkeypatch.setattr(_common, "DEFAULT_CHECKPOINT", str(tiny_checkpoint))

    def as_tested(text: str) -> str:
        text = re.sub(r"(?<![\w./-])/tmp/", lambda _: f"{tmp_path}/tmp/", text)
        return text.replace(DEFAULT_CHECKPOINT, str(tiny_checkpoint))

    return folder, as_tested


def run_naclip(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, f"naclip {shlex.join(argv)} exited with {code}:\n{captured.err[-3000:]}"


def run_python(arguments: list[str], folder: Path) -> None:
    completed = subprocess.run([sys.executable, *arguments], cwd=folder, capture_output=True, text=True,
                               timeout=600)  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]


@pytest.mark.parametrize("language,code,after", EXAMPLES)
def test_example_runs(language, code, after, example_folder, capsys):
    folder, as_tested = example_folder
    if after:
        run_naclip([as_tested(word) for word in after], capsys)
    if language == "python":
        script = folder / "example.py"
        script.write_text(as_tested(code), encoding="utf-8")
        run_python([str(script)], folder)
        return
    for program, *arguments in commands(as_tested(code)):
        if program == "naclip":
            run_naclip(arguments, capsys)
        elif program == "python":
            run_python(arguments, folder)
        else:
            pytest.fail(f"The README runs {program!r}, which this test cannot run; mark the block skip with a reason.")


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


def test_methods_table_has_a_row_per_method_with_its_cited_numbers():
    from naclip_hf.methods import DEFAULT_METHOD, METHODS

    section = README[README.index("## Methods") :]
    section = section[: section.index("\n## ", 1)]
    rows = {match.group(1): match.group(0) for match in re.finditer(r"^\| `(\w+)`.*$", section, flags=re.M)}
    assert list(rows) == list(METHODS), "one row per registered method, in registration order"
    results = README[README.index("## Results") :]
    for name, method in METHODS.items():
        where = results if name == DEFAULT_METHOD else rows[name]  # NACLIP's own numbers are in Results
        for published in method.published:
            for benchmark, value in published.miou.items():
                assert f"{value:.1f}" in where, f"{name}: published {benchmark} {value} is not in the README"
            if published.average is not None:
                assert f"({published.average:.1f})" in where, f"{name}: published average {published.average}"

