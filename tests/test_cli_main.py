"""The `naclip` entry point: fast start without torch, --version, URLs, model-folder checks, Ctrl-C, templates
files, and how `import naclip_hf` registers NACLIP with transformers."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import without_own_progress_bars
from naclip_hf.cli import main

SHORT_SIDE = 32
HEAVY = ("torch", "transformers", "datasets", "evaluate", "accelerate", "numpy", "PIL", "naclip_hf.evaluation")


def run_isolated(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run Python `code` in a fresh interpreter (nothing imported yet)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


def modules_after(argv: list[str]) -> tuple[dict, str]:
    """Run `main(argv)` in a fresh interpreter; return which heavy modules got imported, the exit status and
    stderr."""
    code = (
        "import json, sys\n"
        "from naclip_hf.cli import main\n"
        "try:\n"
        f"    status = main({argv!r})\n"
        "except SystemExit as exit:\n"
        "    status = exit.code\n"
        f"print(json.dumps({{'status': status, 'loaded': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    completed = run_isolated(code)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1]), completed.stderr


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["--help"], 0, ""),
        (["segment", "--help"], 0, ""),
        (["evaluate", "--help"], 0, ""),
        (["segment", "x.png", "--labels", "a", "b", "--alpha", "2"], 2, "argument --alpha"),
        (["bogus"], 2, "invalid choice"),
        (["segment", "x.png", "--preset", "voc99"], 2, "Unknown benchmark preset 'voc99'"),
        (["segment", "x.png", "--labels-file", "/nonexistent/labels.txt"], 2, "labels.txt does not exist"),
        (["segment", "/nonexistent/x.png", "--labels", "a", "b", "--out", "{out}"], 1, "no such file or folder"),
        (["segment", "x.png", "--labels", "a", "b", "--set", "gaussian_std=-1"], 2, "gaussian_std=-1.0 is invalid"),
        (["evaluate", "--preset", "voc99"], 2, "Unknown benchmark preset 'voc99'"),
    ],
)
def test_answered_without_heavy_imports(argv, status, message, tmp_path):
    argv = [argument.replace("{out}", str(tmp_path / "out")) for argument in argv]
    result, stderr = modules_after(argv)
    assert result["status"] == status
    assert message in stderr
    assert result["loaded"] == [], f"{argv} imported {result['loaded']}"


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"naclip-hf {version('naclip-hf')}"


# --- import naclip_hf: light, and registered with transformers when transformers is there


def test_import_is_light_and_registers_when_transformers_is_imported_first():
    code = (
        "import sys\n"
        "import naclip_hf\n"
        "assert 'transformers' not in sys.modules and 'torch' not in sys.modules\n"
        "print('light')\n"
    )
    completed = run_isolated(code)
    assert completed.returncode == 0 and completed.stdout.strip() == "light", completed.stderr
    code = (
        "from transformers import pipeline\n"
        "import naclip_hf\n"
        "from transformers.pipelines import PIPELINE_REGISTRY\n"
        "assert 'naclip-segmentation' in PIPELINE_REGISTRY.get_supported_tasks()\n"
        "from transformers import AutoConfig\n"
        "assert type(AutoConfig.for_model('naclip')).__name__ == 'NACLIPConfig'\n"
        "print('ok')\n"
    )
    completed = run_isolated(code)
    assert completed.returncode == 0 and completed.stdout.strip() == "ok", completed.stderr


@pytest.mark.parametrize(
    "statement",
    [
        "import naclip_hf.inference",  # what the commands load models with
        pytest.param("from naclip_hf import NACLIPForSemanticSegmentation", marks=pytest.mark.slow),
        pytest.param("import naclip_hf; naclip_hf.register_naclip()", marks=pytest.mark.slow),
    ],
)
def test_every_way_in_registers(statement):
    code = (
        f"{statement}\n"
        "from transformers.pipelines import PIPELINE_REGISTRY\n"
        "assert 'naclip-segmentation' in PIPELINE_REGISTRY.get_supported_tasks()\n"
        "print('ok')\n"
    )
    completed = run_isolated(code)
    assert completed.returncode == 0 and completed.stdout.strip() == "ok", completed.stderr


# --- segment: model folder checks, URLs, templates, Ctrl-C


def write_image(path: Path, seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def segment(capsys, *argv) -> tuple[int, str, str]:
    code = main(["segment", *(str(argument) for argument in argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_model_folder_is_checked_before_loading(tmp_path, capsys):
    image = write_image(tmp_path / "a.png")
    code, _, err = segment(capsys, image, "--labels", "cat", "dog", "--model", tmp_path / "no-model", "--out", tmp_path)
    assert code == 2
    assert f"--model {tmp_path / 'no-model'}: no such folder" in err and "naclip convert" in err
    empty = tmp_path / "empty-model"
    empty.mkdir()
    code, _, err = segment(capsys, image, "--labels", "cat", "dog", "--model", empty, "--out", tmp_path)
    assert code == 2 and "folder has no config.json" in err and "Hub id" in err
    code, _, err = segment(capsys, image, "--labels", "cat", "dog", "--model", image, "--out", tmp_path)
    assert code == 2 and "is a file, not a folder" in err


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_folder(tmp_path):
    """A folder served on 127.0.0.1 for the duration of a test; yields (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=folder))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_urls_are_downloaded(tiny_checkpoint, http_folder, tmp_path, capsys):
    folder, base = http_folder
    local = write_image(folder / "street view.png", seed=4)
    out = tmp_path / "out"
    url = f"{base}/photos/../street%20view.png?size=large"
    missing = f"{base}/missing.png"
    code, stdout, stderr = segment(
        capsys, url, missing, "--labels", "road", "sky", "--model", tiny_checkpoint,
        "--set", f"short_side={SHORT_SIDE}", "--out", out, "--timeout", "10",
    )  # fmt: skip
    assert code == 1, stderr  # one of the two URLs does not exist
    assert f"naclip segment: error: {missing}: download failed" in stderr and "HTTP 404" in stderr
    summary = json.loads((out / "street view.json").read_text())  # stem: the file name of the URL's path
    assert summary["image"] == url and summary["size"] == {"width": 56, "height": 40}
    model = load_model_for(tiny_checkpoint)
    expected = model(local)
    with Image.open(out / "street view_labels.png") as label_map:
        np.testing.assert_array_equal(np.asarray(label_map), expected)
    assert f"{url} -> " in stdout


def test_unreachable_url_names_it(tiny_checkpoint, tmp_path, capsys):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/photo.jpg"
    code, _, stderr = segment(capsys, url, "--labels", "cat", "dog", "--model", tiny_checkpoint,
                              "--out", tmp_path / "o", "--timeout", "5")  # fmt: skip
    assert code == 1
    assert f"naclip segment: error: {url}: download failed (Could not download image {url}" in stderr
    assert "1 of 1 inputs failed" in stderr and not list((tmp_path / "o").iterdir())


def load_model_for(checkpoint: Path, templates: list[str] | None = None):
    from naclip_hf.inference import encode_classes, load_model, load_processor, segment_image

    model = load_model(checkpoint, {"prompt_templates": templates} if templates else None)
    processor = load_processor(checkpoint)
    classes = encode_classes(model=model, processor=processor, classes=["road", "sky"])

    def run(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            result = segment_image(model, processor, image.convert("RGB"), classes, short_side=SHORT_SIDE)
        return result.segmentation.numpy()

    return run


def test_templates_file(tiny_checkpoint, tmp_path, capsys):
    image = write_image(tmp_path / "a.png", seed=5)
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of a {}.\n\nthe {} in the picture\n")
    code, _, err = segment(capsys, image, "--labels", "road", "sky", "--model", tiny_checkpoint, "--templates-file",
                           templates, "--set", f"short_side={SHORT_SIDE}", "--out", tmp_path / "o")  # fmt: skip
    assert code == 0, err
    summary = json.loads((tmp_path / "o" / "a.json").read_text())
    assert summary["settings"]["prompt_templates"] == ["a photo of a {}.", "the {} in the picture"]
    expected = load_model_for(tiny_checkpoint, ["a photo of a {}.", "the {} in the picture"])(image)
    with Image.open(tmp_path / "o" / "a_labels.png") as label_map:
        np.testing.assert_array_equal(np.asarray(label_map), expected)


def test_ctrl_c_leaves_no_partial_files(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    first, second = write_image(tmp_path / "first.png", 1), write_image(tmp_path / "second.png", 2)
    out = tmp_path / "out"
    original_save = Image.Image.save
    calls = {"count": 0}

    def save_then_interrupt(self, fp, *args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 3:  # the label map of the second image: half written, then Ctrl-C
            Path(fp).write_bytes(b"\x89PNG half")
            raise KeyboardInterrupt
        return original_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_then_interrupt)
    code, _, err = segment(capsys, first, second, "--labels", "road", "sky", "--model", tiny_checkpoint,
                           "--set", f"short_side={SHORT_SIDE}", "--out", out)  # fmt: skip
    assert code == 130
    assert err.strip().splitlines()[-1] == "naclip segment: interrupted" and "Traceback" not in err
    names = sorted(path.name for path in out.iterdir())
    assert names == ["first.json", "first_labels.png", "first_overlay.png"], names  # no temporary, no half file


def test_segment_imports_only_what_it_needs(tiny_checkpoint, tmp_path):
    image = write_image(tmp_path / "a.png")
    argv = ["segment", str(image), "--labels", "road", "sky", "--model", str(tiny_checkpoint),
            "--set", f"short_side={SHORT_SIDE}", "--out", str(tmp_path / "out")]  # fmt: skip
    result, stderr = modules_after(argv)
    assert result["status"] == 0, stderr
    assert {"torch", "transformers"} <= set(result["loaded"])
    # (transformers itself imports accelerate for loading weights when it is installed)
    assert not {"datasets", "evaluate", "naclip_hf.evaluation"} & set(result["loaded"]), result["loaded"]


# --- quiet output: nothing from third-party libraries on stderr; `--help` shows values


def test_ordinary_commands_print_no_third_party_warnings(tiny_checkpoint, golden_dir, tmp_path):
    """segment, label, evaluate, compare (also attention maps), card and convert on the tiny model, in one fresh
    process as a user runs them: stderr holds nothing but the commands' own progress bars (if the machine is slow
    enough for them to appear)."""
    from synthetic_data import make_benchmark_dataset

    photos = tmp_path / "photos"
    photos.mkdir()
    first, second = write_image(photos / "first.png", 1), write_image(photos / "second.png", 2)
    voc = make_benchmark_dataset("voc21", tmp_path / "voc")
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of a {}.\n")
    model = ["--model", str(tiny_checkpoint)]
    commands = [
        ["segment", str(photos), "--labels", "road", "sky", *model, "--set", f"short_side={SHORT_SIDE}",
         "--out", str(tmp_path / "segmented")],
        ["label", str(photos), "--labels", "road", "sky", *model, "--set", f"short_side={SHORT_SIDE}",
         "--out", str(tmp_path / "labelled")],
        ["evaluate", "--preset", "voc21", "--data-root", str(voc), *model, "--limit", "2", "--pamr", "off",
         "--set", f"short_side={SHORT_SIDE}", "--templates-file", str(templates)],
        ["compare", str(first), "--labels", "road", "sky", "--methods", "clip", "naclip", *model,
         "--set", f"short_side={SHORT_SIDE}", "--out", str(tmp_path / "compare.png")],
        ["compare", str(second), "--attention-at", "10,10", "--methods", "clip", "naclip", *model,
         "--set", f"short_side={SHORT_SIDE}", "--out", str(tmp_path / "attention.png")],
        ["card", str(tiny_checkpoint), "--out", str(tmp_path / "card.md")],
        ["convert", str(golden_dir / "openai_clip_tiny.safetensors"), str(tmp_path / "converted")],
    ]  # fmt: skip
    code = (
        "import sys\n"
        "from naclip_hf.cli import main\n"
        f"for argv in {commands!r}:\n"
        "    sys.stderr.write(f'\\n=== {argv[0]}\\n'); sys.stderr.flush()\n"
        "    status = main(argv)\n"
        "    sys.stderr.write(f'\\n=== status {status}\\n'); sys.stderr.flush()\n"
    )
    env = {key: value for key, value in os.environ.items()
           if key not in ("TRANSFORMERS_VERBOSITY", "HF_HUB_VERBOSITY", "DATASETS_VERBOSITY", "TQDM_DELAY",
                          "PYTHONWARNINGS")}  # fmt: skip
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                               cwd=tmp_path)  # fmt: skip
    runs = re.findall(r"\n=== (\w+)\n(.*?)\n=== status (\S+)\n", completed.stderr, flags=re.S)
    assert [name for name, _, _ in runs] == [argv[0] for argv in commands], completed.stderr
    for name, text, status in runs:
        assert status == "0", f"naclip {name} exited with {status}:\n{text}"
        assert without_own_progress_bars(text) == "", f"naclip {name} printed on stderr:\n{text}"


def test_progress_bars_appear_only_for_long_work(monkeypatch, capsys):
    from naclip_hf.cli import _common

    clock = {"now": 0.0}
    monkeypatch.setattr(_common.time, "monotonic", lambda: clock["now"])
    quick = _common.DelayedProgress(3, "quick", "image")
    for _ in range(3):
        clock["now"] += 0.5
        quick.write("one image done")
        quick.update()
    quick.close()
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == "one image done\n" * 3

    slow = _common.DelayedProgress(3, "slow", "image")
    clock["now"] += _common.PROGRESS_DELAY + 1
    slow.update()
    slow.write("after the bar appeared")
    slow.update(2)
    slow.close()
    captured = capsys.readouterr()
    assert "slow: 100%" in captured.err and captured.out == "after the bar appeared\n"


def test_segment_help_shows_the_timeout_default_as_a_value(capsys):
    from naclip_hf.models.naclip.image_io import DEFAULT_URL_TIMEOUT

    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"seconds to wait for each URL (default: {DEFAULT_URL_TIMEOUT:g})" in help_text
    assert "DEFAULT_URL_TIMEOUT" not in help_text
