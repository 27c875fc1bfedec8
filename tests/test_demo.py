"""The demo without a browser: its computations (segment, attention of a clicked patch), the `/segment` API called
with gradio_client from several threads, clear errors for bad input, the `naclip demo` / `naclip space` commands and
a written Space folder that starts and answers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio", reason="the demo needs its extra: pip install -e '.[demo]'")
gradio_client = pytest.importorskip("gradio_client")

from naclip_hf.demo.backend import (  # noqa: E402
    EXAMPLE_LABELS,
    DemoBackend,
    example_image_path,
    parse_labels_text,
)

LABELS_A = "table, wooden table\nsaucer, plate\ncoffee cup, cup"
LABELS_B = "spoon\ncoffee\nwall\nsky"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def backend(tiny_checkpoint) -> DemoBackend:
    return DemoBackend.from_pretrained(str(tiny_checkpoint))


@pytest.fixture(scope="module")
def demo_url(backend, tmp_path_factory):
    from naclip_hf.demo import build_demo

    demo = build_demo(backend)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(demo_url):
    return gradio_client.Client(demo_url, verbose=False)


def _classes(rows) -> dict[str, float]:
    return {row["label"]: row["share"] for row in rows}


# ----------------------------------------------------------------------------------------------- computations
def test_labels_text_parsing_and_its_errors():
    assert parse_labels_text("sky\n\n cup, mug \n") == [["sky"], ["cup", "mug"]]
    with pytest.raises(ValueError, match="No classes given.*one per line"):
        parse_labels_text(" \n\n")
    with pytest.raises(ValueError, match="given twice"):
        parse_labels_text("cat\ncat")


def test_segment_matches_the_pipeline_and_leaves_the_config_alone(backend):
    config_before = backend.model.config.to_dict()
    result = backend.segment(example_image_path(), LABELS_A, attn_strategy="kk", pamr=False, prob_thd=0.2)
    assert backend.model.config.to_dict() == config_before
    direct = backend.segmenter(
        str(example_image_path()), candidate_labels=LABELS_A.splitlines(), return_label_map=True,
        attn_strategy="kk", pamr_steps=0, prob_thd=0.2,
    )  # fmt: skip
    label_map = direct["label_map"]
    expected = {
        label: float((label_map == index).mean()) for index, label in enumerate(direct["labels"])
        if (label_map == index).any()
    }  # fmt: skip
    assert _classes(result.rows) == pytest.approx(expected)
    assert np.array_equal(np.asarray(result.label_map), label_map)
    assert result.overlay.size == (450, 300) and result.label_map.mode == "P"


def test_csa_runs_with_the_vanilla_block_and_says_so(backend):
    result = backend.segment(example_image_path(), LABELS_B, attn_strategy="csa", arch="reduced", pamr=False)
    assert result.options["arch"] == "vanilla"
    assert any("csa" in note and "vanilla" in note for note in result.notes)
    assert backend.model.config.arch == "reduced"


@pytest.mark.parametrize("point", [(0, 0), (449, 299), (300, 151)])
def test_attention_of_the_clicked_patch_peaks_at_that_patch(backend, point):
    # `nonly` attention is the Gaussian of the distance to the query patch only: its maximum is the clicked patch.
    maps = backend.attention_maps(example_image_path(), point, [("neighbours", {"attn_strategy": "nonly"})])
    (weights,) = maps.weights
    rows, columns = maps.grid
    assert weights.shape == (rows, columns)
    assert np.unravel_index(int(np.argmax(weights)), weights.shape) == maps.patch
    # The 450 × 300 photo is processed at 504 × 336 pixels: 31 × 21 patches of 16 (the last 8 columns uncovered).
    x, y = point
    assert maps.grid == (21, 31)
    assert maps.patch == (min(int(y * 336 / 300) // 16, 20), min(int(x * 504 / 450) // 16, 30))


def test_attention_comparisons_are_three_maps_of_the_image_size(backend):
    maps = backend.attention_maps(example_image_path(), (100, 150))
    assert [label for label, _ in maps.maps] == ["CLIP", "SCLIP", "NACLIP"]
    assert all(image.size == (450, 300) for _, image in maps.maps)
    # Different strategies attend differently (CLIP vs NACLIP).
    assert not np.allclose(maps.weights[0], maps.weights[2])
    with pytest.raises(ValueError, match="outside the image"):
        backend.attention_maps(example_image_path(), (450, 10))


def test_test_model_is_flagged(backend):
    assert backend.is_test_model


# ----------------------------------------------------------------------------------------------- the API
def test_segment_endpoint_from_two_threads_gets_each_calls_own_classes(client, backend):
    from gradio_client import handle_file

    image = str(example_image_path())
    jobs = [(LABELS_A, "naclip", True), (LABELS_B, "kk", False)]
    expected = [
        _classes(backend.segment(image, labels, attn_strategy=strategy, pamr=pamr).rows)
        for labels, strategy, pamr in jobs
    ]

    def call(job):
        labels, strategy, pamr = job
        return client.predict(handle_file(image), labels, attn_strategy=strategy, pamr=pamr, api_name="/segment")

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(call, jobs))
    for (labels, _, _), want, (overlay, rows, label_map) in zip(jobs, expected, results):
        got = _classes(rows)
        assert set(got) <= {line.split(",")[0] for line in labels.splitlines()}
        assert got == pytest.approx(want)
        assert Path(overlay).is_file() and Path(label_map).name == "coffee_labels.png"
    assert {label for label in _classes(results[0][1])} & {label for label in _classes(results[1][1])} == set()


def test_segment_endpoint_defaults_are_the_models_settings(client, backend):
    from gradio_client import handle_file

    _, rows, _ = client.predict(handle_file(str(example_image_path())), EXAMPLE_LABELS, api_name="/segment")
    assert _classes(rows) == pytest.approx(_classes(backend.segment(example_image_path(), EXAMPLE_LABELS).rows))


def test_bad_inputs_give_clear_messages(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    image = handle_file(str(example_image_path()))
    with pytest.raises(AppError, match="No classes given"):
        client.predict(image, "  \n", api_name="/segment")
    with pytest.raises(AppError, match="given twice"):
        client.predict(image, "cup\ncup", api_name="/segment")
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is text, not a picture")
    with pytest.raises(AppError, match=r"Could not read notes\.png as an image.*Upload a JPEG"):
        client.predict(handle_file(str(not_an_image)), "cup", api_name="/segment")
    with pytest.raises(AppError, match="1.5 is greater than maximum value 1"):
        client.predict(image, "cup", prob_thd=1.5, api_name="/segment")
    with pytest.raises(AppError, match="smaller than one 16×16 patch"):
        client.predict(image, "cup", slide_crop=8, api_name="/segment")


# ----------------------------------------------------------------------------------------------- commands
def test_demo_help_imports_neither_gradio_nor_torch():
    code = (
        "import sys\nfrom naclip_hf.cli import main\n"
        "try:\n    main(['demo', '--help'])\nexcept SystemExit:\n    pass\n"
        "print([m for m in ('gradio', 'torch', 'transformers') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert "--share" in out.stdout and "naclip-hf[demo]" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_demo_command_reports_a_missing_model_folder(tmp_path, capsys):
    from naclip_hf.cli import main

    assert main(["demo", "--model", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_space_command_refuses_a_non_empty_folder(tmp_path, tiny_checkpoint, capsys):
    from naclip_hf.cli import main

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file.txt").write_text("x")
    assert main(["space", str(tmp_path / "taken"), "--model", str(tiny_checkpoint)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert main(["space", str(tmp_path / "s"), "--model", str(tmp_path / "no-checkpoint")]) == 2
    assert not (tmp_path / "s").exists()


def test_space_for_a_hub_id_names_the_model():
    import tempfile

    from naclip_hf.demo.space import write_space

    with tempfile.TemporaryDirectory() as folder:
        space = write_space(Path(folder) / "space", "openai/clip-vit-base-patch16", requirement="naclip-hf[demo]")
        app = (space / "app.py").read_text()
        assert "MODEL = 'openai/clip-vit-base-patch16'" in app and "Path" not in app
        assert "models:\n  - openai/clip-vit-base-patch16" in (space / "README.md").read_text()
        assert not (space / "model").exists()


@pytest.fixture
def space(tmp_path, tiny_checkpoint) -> Path:
    from naclip_hf.cli import main

    space = tmp_path / "space"
    assert main(["space", str(space), "--model", str(tiny_checkpoint), "--title", "NACLIP test"]) == 0
    return space


def test_written_space_builds_the_app(space):
    import runpy

    import gradio as gr

    readme = (space / "README.md").read_text()
    front = readme.split("---")[1]
    for line in ("sdk: gradio", "app_file: app.py", "title: NACLIP test", f"sdk_version: {gr.__version__}"):
        assert line in front
    assert (space / "requirements.txt").read_text().startswith("naclip-hf[demo]")
    assert (space / "model" / "config.json").is_file() and (space / "model" / "model.safetensors").is_file()
    namespace = runpy.run_path(str(space / "app.py"))  # not as __main__: builds the app without serving it
    demo = namespace["demo"]
    assert isinstance(demo, gr.Blocks)
    assert Path(namespace["MODEL"]) == space / "model"
    assert "/segment" in {f"/{fn.api_name}" for fn in demo.fns.values() if fn.api_name}


@pytest.mark.slow
def test_written_space_starts_and_answers(space):
    port = _free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "app.py"], cwd=space, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, f"app.py exited:\n{process.stdout.read()}"
            try:
                with urllib.request.urlopen(url + "config", timeout=5) as response:
                    config = json.load(response)
                break
            except OSError:
                assert time.monotonic() < deadline, "the Space's app did not start within 180 s"
                time.sleep(0.5)
        assert "NACLIP" in json.dumps(config)
        from gradio_client import handle_file

        _, rows, _ = gradio_client.Client(url, verbose=False).predict(
            handle_file(str(example_image_path())), "cup\ntable", api_name="/segment"
        )
        assert {row["label"] for row in rows} <= {"cup", "table"} and rows
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
