"""The demo without a browser: its computations (segment with a method, attention of a clicked patch under the
methods chosen), the `/segment` API called with gradio_client from several threads, the methods offered by the page,
clear errors for bad input, the `naclip demo` / `naclip space` commands and a written Space folder that starts and
answers."""

from __future__ import annotations

import json
import os
import re
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
from naclip_hf.methods import METHODS, Method, method_names, register_method  # noqa: E402

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
def pipeline(backend):
    """The `transformers` pipeline on the backend's model: the reference of the demo's segmentations."""
    from naclip_hf.models.naclip.pipeline_naclip import NACLIPSegmentationPipeline

    model = backend.segmenter.model
    return NACLIPSegmentationPipeline(model=model, processor=backend.segmenter.processor, device=model.device)


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


def _shares(output) -> dict[str, float]:
    """The share of the pixels of each class present in a pipeline output with a label map."""
    label_map = output["label_map"]
    return {
        label: float((label_map == index).mean()) for index, label in enumerate(output["labels"])
        if (label_map == index).any()
    }  # fmt: skip


@pytest.fixture
def neighbours_method():
    """A method registered for the test: `nonly` attention, the Gaussian of the distance to the query patch only."""
    method = register_method(
        Method("demo_test_neighbours", "Neighbours only", "attention to the nearest patches only",
               settings={"arch": "reduced", "attn_strategy": "nonly", "gaussian_std": 3.0})
    )  # fmt: skip
    try:
        yield method
    finally:
        METHODS.pop(method.name, None)


def _component(demo, elem_id: str):
    (component,) = [block for block in demo.blocks.values() if getattr(block, "elem_id", None) == elem_id]
    return component


# ----------------------------------------------------------------------------------------------- computations
def test_labels_text_parsing_and_its_errors():
    assert parse_labels_text("sky\n\n cup, mug \n") == [["sky"], ["cup", "mug"]]
    with pytest.raises(ValueError, match="No classes given.*one per line"):
        parse_labels_text(" \n\n")
    with pytest.raises(ValueError, match="given twice"):
        parse_labels_text("cat\ncat")
    one_line = "Classes: one class given ('cup, table': commas join synonyms of one class); name at least two classes, "
    fix = "one per line of the box (e.g. 'cup' and 'table' on separate lines)"
    with pytest.raises(ValueError, match=re.escape(one_line + fix)):
        parse_labels_text("cup, table\n\n")
    with pytest.raises(ValueError, match=re.escape("Classes: one class given ('cup', which every pixel would get)")):
        parse_labels_text("cup")


def test_segment_matches_the_pipeline_and_leaves_the_config_alone(backend, pipeline):
    config_before = backend.segmenter.config.to_dict()
    result = backend.segment(example_image_path(), LABELS_A, attn_strategy="kk", pamr=False, prob_thd=0.2)
    assert backend.segmenter.config.to_dict() == config_before
    direct = pipeline(
        str(example_image_path()), candidate_labels=LABELS_A.splitlines(), return_label_map=True,
        attn_strategy="kk", pamr_steps=0, prob_thd=0.2,
    )  # fmt: skip
    assert _classes(result.rows) == pytest.approx(_shares(direct))
    assert np.array_equal(np.asarray(result.label_map), direct["label_map"])
    assert result.overlay.size == (450, 300) and result.label_map.mode == "P"


def test_csa_runs_with_the_vanilla_block_and_says_so(backend):
    result = backend.segment(example_image_path(), LABELS_B, attn_strategy="csa", arch="reduced", pamr=False)
    assert result.options.arch == "vanilla" and result.options.attn_strategy == "csa"
    assert any("csa" in note and "vanilla" in note for note in result.notes)
    assert backend.segmenter.config.arch == "reduced"


def test_a_method_with_settings_over_it_matches_the_pipeline(backend, pipeline):
    # SCLIP's settings (csa, its logit scale, windows and short side), the threshold given over them.
    result = backend.segment(example_image_path(), LABELS_A, method="sclip", prob_thd=0.3)
    assert result.options == backend.segmenter.options(method="sclip", prob_thd=0.3) and not result.notes
    direct = pipeline(str(example_image_path()), candidate_labels=LABELS_A.splitlines(), return_label_map=True,
                      method="sclip", prob_thd=0.3)  # fmt: skip
    assert np.array_equal(np.asarray(result.label_map), direct["label_map"])
    plain = pipeline(str(example_image_path()), candidate_labels=LABELS_A.splitlines(), return_label_map=True,
                     prob_thd=0.3)  # fmt: skip
    assert not np.array_equal(direct["label_map"], plain["label_map"])  # the method did change the result
    # The controls left at "the method's" stand for the method's values over the model's, as the segmenter resolves
    # them.
    options, notes = backend.options("sclip")
    shown = (options.attn_strategy, options.arch, options.pamr_steps, options.prob_thd, options.short_side,
             options.slide_crop, options.gaussian_std)  # fmt: skip
    assert shown == ("csa", "vanilla", 0, 0.0, 336, 224, backend.segmenter.config.gaussian_std) and not notes
    with pytest.raises(ValueError, match="Unknown method 'nope'.*sclip"):
        backend.segment(example_image_path(), LABELS_A, method="nope")


@pytest.mark.parametrize("point", [(0, 0), (449, 299), (300, 151)])
def test_attention_of_the_clicked_patch_peaks_at_that_patch(backend, neighbours_method, point):
    # `nonly` attention is the Gaussian of the distance to the query patch only: its maximum is the clicked patch.
    maps = backend.attention_maps(example_image_path(), point, [neighbours_method.name])
    assert [label for label, _ in maps.maps] == ["Neighbours only"]
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
    assert maps.methods == ["clip", "sclip", "naclip"]
    assert [label for label, _ in maps.maps] == ["CLIP", "SCLIP", "NACLIP"]
    assert all(image.size == (450, 300) for _, image in maps.maps)
    # Different strategies attend differently (CLIP vs NACLIP).
    assert not np.allclose(maps.weights[0], maps.weights[2])
    with pytest.raises(ValueError, match="outside the image"):
        backend.attention_maps(example_image_path(), (450, 10))
    with pytest.raises(ValueError, match="pick at least one method"):
        backend.attention_maps(example_image_path(), (10, 10), [])
    with pytest.raises(ValueError, match="Unknown method 'nope'"):
        backend.attention_maps(example_image_path(), (10, 10), ["nope"])


def test_attention_maps_of_chosen_methods_are_the_models_rows_and_the_compare_figures(backend, neighbours_method):
    import torch

    from naclip_hf.attention_maps import attention_maps, block_settings

    methods = ["maskclip", "clearclip", neighbours_method.name, "clip"]
    point = (200, 100)
    maps = backend.attention_maps(example_image_path(), point, methods)
    assert maps.methods == methods
    assert [label for label, _ in maps.maps] == ["MaskCLIP", "ClearCLIP", "Neighbours only", "CLIP"]
    # Recomputed from the model: each method's last block, head-averaged row of the clicked patch's token.
    model = backend.segmenter.model
    pixel_values = backend.segmenter.processor.image_processor(np.asarray(load_example()))["pixel_values"]
    rows, columns = maps.grid
    token = 1 + maps.patch[0] * columns + maps.patch[1]
    for name, weights in zip(methods, maps.weights):
        with torch.no_grad():
            attention = model.encode_patches(pixel_values, output_attentions=True,
                                             **block_settings(name)).attentions[-1]  # fmt: skip
        expected = attention[0].float().mean(dim=0)[token, 1:].reshape(rows, columns).numpy()
        np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-7)
    assert not np.allclose(maps.weights[0], maps.weights[2])
    # `naclip compare --attention-at` draws the same maps for the same point and methods, whatever the image size.
    for image in (np.asarray(load_example()), np.asarray(load_example())[:250, :301]):
        shown = backend.attention_maps(image, point[::-1], methods)
        compared = attention_maps(model, backend.segmenter.processor, image, point[::-1], methods)
        for heat, same in zip(shown.heat, compared.heat):
            np.testing.assert_array_equal(heat, same)


def load_example():
    from PIL import Image

    return Image.open(example_image_path()).convert("RGB")


def test_page_offers_the_registered_methods(backend, neighbours_method):
    from naclip_hf.demo import build_demo

    demo = build_demo(backend, method="sclip", attention_methods=["naclip", neighbours_method.name])
    try:
        offered = [value for _, value in _component(demo, "method").choices]
        assert offered == list(method_names()) and neighbours_method.name in offered
        assert _component(demo, "method").value == "sclip"
        compared = _component(demo, "attention-methods")
        assert [value for _, value in compared.choices] == offered
        assert compared.value == ["naclip", neighbours_method.name]
        # The controls start at "the method's", showing SCLIP's values.
        assert _component(demo, "strategy").value == "" and _component(demo, "strategy").choices[0][0] == (
            "the method's (csa)"
        )
        assert _component(demo, "prob-thd").value == ""
        assert _component(demo, "short-side").placeholder == "the method's (336)"
        assert "SCLIP" in _component(demo, "method-note").value
    finally:
        demo.close()
    with pytest.raises(ValueError, match="Unknown method 'nope'"):
        build_demo(backend, method="nope")
    with pytest.raises(ValueError, match="Unknown method 'nope'"):
        build_demo(backend, attention_methods=["nope"])
    with pytest.raises(ValueError, match="Method 'bad_block'.*arch='vanilla'"):
        register_method(Method("bad_block", "Bad", "csa in the reduced block", {"attn_strategy": "csa"}))


def test_test_model_is_flagged(backend):
    assert "tiny test model with random weights" in " ".join(backend.segmenter.describe().note)


def test_a_second_request_with_the_same_classes_embeds_nothing(backend, monkeypatch):
    embedded = []
    embed = backend.segmenter._embed_classes  # what the segmenter runs for a label set it does not keep

    def counting(classes, *args):
        embedded.append([list(names) for names in classes])
        return embed(classes, *args)

    monkeypatch.setattr(backend.segmenter, "_embed_classes", counting)
    first = backend.segment(example_image_path(), "lamp\nchair, stool", pamr=False)
    second = backend.segment(example_image_path(), "lamp\nchair,stool", pamr=False)  # the same classes
    assert embedded == [[["lamp"], ["chair", "stool"]]]
    assert np.array_equal(np.asarray(first.label_map), np.asarray(second.label_map))
    backend.segment(example_image_path(), "lamp\nchair", pamr=False)  # another set of classes
    assert len(embedded) == 2


# ----------------------------------------------------------------------------------------------- the API
def test_segment_endpoint_from_two_threads_gets_each_calls_own_classes(client, backend):
    from gradio_client import handle_file

    image = str(example_image_path())
    jobs = [(LABELS_A, "naclip", "on"), (LABELS_B, "kk", "off")]
    expected = [
        _classes(backend.segment(image, labels, method="naclip", attn_strategy=strategy, pamr=pamr == "on").rows)
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
    (info,) = [e for name, e in client.view_api(print_info=False, return_format="dict")["named_endpoints"].items()
               if name == "/segment"]  # fmt: skip
    parameters = [(p["parameter_name"], p["parameter_default"]) for p in info["parameters"]]
    assert [name for name, _ in parameters[:3]] == ["image", "labels", "method"]
    assert parameters[2:] == [("method", "naclip"), ("attn_strategy", ""), ("arch", ""), ("pamr", ""),
                              ("prob_thd", ""), ("short_side", ""), ("slide_crop", ""), ("gaussian_std", "")]


def test_segment_endpoint_with_a_method_equals_the_pipeline_with_it(client, backend, pipeline):
    from gradio_client import handle_file

    image = str(example_image_path())
    overlay, rows, label_map = client.predict(handle_file(image), LABELS_A, method="sclip", api_name="/segment")
    direct = pipeline(image, candidate_labels=LABELS_A.splitlines(), return_label_map=True, method="sclip")
    assert _classes(rows) == pytest.approx(_shares(direct))
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(label_map)), direct["label_map"])
    # A setting given over the method overrides it, as in the pipeline.
    _, rows, label_map = client.predict(handle_file(image), LABELS_A, method="sclip", prob_thd=0.4, pamr="on",
                                        api_name="/segment")  # fmt: skip
    direct = pipeline(image, candidate_labels=LABELS_A.splitlines(), return_label_map=True, method="sclip",
                      prob_thd=0.4, pamr_steps=backend.segmenter.config.pamr_steps)  # fmt: skip
    assert np.array_equal(np.asarray(Image.open(label_map)), direct["label_map"])


def test_bad_inputs_give_clear_messages(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    image = handle_file(str(example_image_path()))
    with pytest.raises(AppError, match="No classes given"):
        client.predict(image, "  \n", api_name="/segment")
    with pytest.raises(AppError, match="given twice"):
        client.predict(image, "cup\ncup", api_name="/segment")
    with pytest.raises(AppError, match=re.escape("one class given ('cup, table': commas join synonyms of one class)")):
        client.predict(image, "cup, table", api_name="/segment")
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is text, not a picture")
    with pytest.raises(AppError, match=r"Could not read notes\.png as an image.*Upload a JPEG"):
        client.predict(handle_file(str(not_an_image)), "cup\ntable", api_name="/segment")
    with pytest.raises(AppError, match=r"prob_thd=1.5 is invalid: it must be a number >= 0 and <= 1"):
        client.predict(image, "cup\ntable", prob_thd=1.5, api_name="/segment")
    with pytest.raises(AppError, match=r"Probability threshold: 'high' is not a number; type one.*or empty the box"):
        client.predict(image, "cup\ntable", prob_thd="high", api_name="/segment")
    with pytest.raises(AppError, match="smaller than one 16×16 patch"):
        client.predict(image, "cup\ntable", slide_crop=8, api_name="/segment")
    with pytest.raises(AppError, match="nope is not in the list of choices.*'sclip'"):
        client.predict(image, "cup\ntable", method="nope", api_name="/segment")


# ----------------------------------------------------------------------------------------------- commands
def test_demo_help_imports_neither_gradio_nor_torch():
    code = (
        "import sys\nfrom naclip_hf.cli import main\n"
        "try:\n    main(['demo', '--help'])\nexcept SystemExit:\n    pass\n"
        "print([m for m in ('gradio', 'torch', 'transformers') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert "--share" in out.stdout and "naclip-hf[demo]" in out.stdout
    assert "--method NAME" in out.stdout and all(name in out.stdout for name in method_names())
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_demo_command_reports_a_missing_model_folder(tmp_path, capsys):
    from naclip_hf.cli import main

    assert main(["demo", "--model", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_demo_command_sets_the_pages_method(tiny_checkpoint, monkeypatch, capsys):
    import naclip_hf.demo.app as app
    from naclip_hf.cli import main

    built = {}

    class Served:
        local_url, share_url = "http://127.0.0.1:7999/", None

        def launch(self, **kwargs):
            built["launch"] = kwargs

        def block_thread(self):
            built["served"] = True

    def build(model, **kwargs):
        built.update(kwargs, model=model)
        return Served()

    monkeypatch.setattr(app, "build_demo", build)
    assert main(["demo", "--model", str(tiny_checkpoint), "--method", "clearclip", "--port", "7999"]) == 0
    assert built["method"] == "clearclip" and str(built["model"]) == str(tiny_checkpoint)
    assert built["launch"]["server_port"] == 7999 and built["launch"]["quiet"] and built["served"]
    served = f"naclip demo: serving {tiny_checkpoint} on http://127.0.0.1:7999/ (Ctrl-C to stop)\n"
    assert capsys.readouterr().out == served
    with pytest.raises(SystemExit):
        main(["demo", "--model", str(tiny_checkpoint), "--method", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


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


# ----------------------------------------------------------------------------------------------- exported models
@pytest.fixture(scope="module")
def exported_demo(tiny_export):
    """The demo built on `naclip export` of the tiny checkpoint with the golden classes (see tests/conftest.py)."""
    from naclip_hf.demo import build_demo

    return tiny_export, build_demo(str(tiny_export), method=None)


def _segment_function(demo):
    (function,) = [fn.fn for fn in demo.fns.values() if fn.api_name == "segment"]
    return lambda *args, **kwargs: function(*args, progress=lambda *a, **k: None, **kwargs)


def test_exported_demo_segments_as_the_runtime(exported_demo):
    from PIL import Image

    from naclip_hf.export.runtime import ExportedSegmenter

    out, demo = exported_demo
    segment = _segment_function(demo)
    image = str(example_image_path())
    runtime = ExportedSegmenter(out)
    cases = (({}, {}), ({"pamr": "off", "prob_thd": "0.5"}, {"pamr_steps": 0, "prob_thd": 0.5}))
    for options, runtime_options in cases:
        _, rows, label_map_path = segment(image, "cat\nsky", **options)
        expected = runtime.segment(image, ["cat", "sky"], **runtime_options).segmentation
        assert np.array_equal(np.asarray(Image.open(label_map_path)), expected)
        shares = {label: float((expected == index).mean()) for index, label in enumerate(["cat", "sky"])}
        assert _classes(rows) == pytest.approx({k: v for k, v in shares.items() if v > 0})
    assert not np.array_equal(  # the options reach the runtime
        runtime.segment(image, ["cat", "sky"], pamr_steps=0, prob_thd=0.5).segmentation,
        runtime.segment(image, ["cat", "sky"]).segmentation,
    )


# The tiny random model may label every pixel alike: the page's toast saying so is a warning outside a request.
@pytest.mark.filterwarnings("ignore:Every pixel is")
def test_exported_demo_takes_new_classes_and_explains_the_fixed_block(exported_demo):
    import gradio as gr
    from PIL import Image

    from naclip_hf.export.runtime import ExportedSegmenter

    out, demo = exported_demo
    segment = _segment_function(demo)
    image = str(example_image_path())
    _, rows, label_map_path = segment(image, "cat\nbird")  # 'bird' is not stored: the exported text model embeds it
    expected = ExportedSegmenter(out).segment(image, ["cat", "bird"]).segmentation
    assert np.array_equal(np.asarray(Image.open(label_map_path)), expected)
    assert "exported text model embeds them" in _component(demo, "model-note").value
    fixed = r"cannot be changed on an exported model: its graph was built with {}.*--set {}=.*PyTorch checkpoint"
    with pytest.raises(gr.Error, match="arch='vanilla' " + fixed.format("arch='reduced'", "arch")):
        segment(image, "cat\nsky", method="sclip")
    with pytest.raises(gr.Error, match="attn_strategy='kk' " + fixed.format("attn_strategy='naclip'", "attn_strategy")):
        segment(image, "cat\nsky", attn_strategy="kk")


def test_exported_demo_page_prefills_the_classes_and_disables_the_last_block(exported_demo):
    _, demo = exported_demo
    stored = "sky, wall, tree, grass\ncat\ndog\nperson, person in shirt\ncar\ntelevision monitor, tv monitor, monitor"
    assert _component(demo, "labels").value == stored
    for elem_id in ("method", "strategy", "arch", "gaussian-std"):
        assert _component(demo, elem_id).interactive is False
    for elem_id in ("pamr", "prob-thd", "short-side", "slide-crop"):
        assert _component(demo, elem_id).interactive is not False
    assert "fixed in the exported graph" in _component(demo, "method-note").value
    # The model's note says where attention maps are; the Attention tab says it where its maps would be.
    assert "no attention maps" in _component(demo, "model-note").value
    (methods_changed,) = [fn.fn for fn in demo.fns.values() if fn.fn.__name__ == "methods_changed"]
    maps, caption = methods_changed(str(example_image_path()), ["naclip"], (10, 10))
    assert maps["value"] is None
    assert re.search("No attention maps.*cannot show attention maps.*PyTorch checkpoint", caption), caption


def test_demo_command_runs_an_export_with_its_stored_settings(exported_demo, monkeypatch):
    import naclip_hf.demo.app as app
    from naclip_hf.cli import main

    out, _ = exported_demo
    built = {}

    class Served:
        local_url, share_url = "http://127.0.0.1:7999/", None

        def launch(self, **kwargs):
            built["launch"] = kwargs

        def block_thread(self):
            built["served"] = True

    monkeypatch.setattr(app, "build_demo", lambda model, **kwargs: built.update(kwargs, model=model) or Served())
    assert main(["demo", "--model", str(out)]) == 0
    assert built["method"] is None and str(built["model"]) == str(out)


def test_one_backend_class_for_checkpoints_and_exports(tiny_checkpoint, tiny_export):
    import naclip_hf.demo.backend as backend_module
    from naclip_hf.demo.backend import load_backend

    assert not hasattr(backend_module, "ExportedDemoBackend")
    checkpoint, export = load_backend(tiny_checkpoint), load_backend(tiny_export)
    assert type(checkpoint) is DemoBackend and type(export) is DemoBackend
    # What the page shows comes from the segmenter's description: plain data.
    exported, plain = export.segmenter.describe(), checkpoint.segmenter.describe()
    assert exported.fixed_settings and not plain.fixed_settings
    assert exported.default_labels[1] == ("cat",) and not plain.default_labels
    assert exported.attention_strategies == (exported.fixed_settings["attn_strategy"],)
    assert {"naclip", "csa", "kk"} <= set(plain.attention_strategies)
    with pytest.raises(ValueError, match="device='cuda'.*onnxruntime on the CPU"):
        load_backend(tiny_export, device="cuda")


def test_both_backends_give_the_same_options_when_the_exports_block_matches(tiny_checkpoint, tiny_export):
    from naclip_hf.demo.backend import load_backend
    from naclip_hf.export.runtime import ExportedSegmenter
    from naclip_hf.methods import get_method
    from naclip_hf.models.naclip.options import names_of_stage

    checkpoint, export = load_backend(tiny_checkpoint), load_backend(tiny_export)
    fixed = export.segmenter.describe().fixed_settings
    assert {name: checkpoint.segmenter.config.to_dict()[name] for name in fixed} == fixed
    assert {name: get_method("naclip").settings.get(name, value) for name, value in fixed.items()} == fixed
    cases = [
        {},
        {"method": "naclip"},
        {"method": "naclip", "pamr": False, "prob_thd": 0.3, "slide_crop": 64},
        {"pamr": True, "attn_strategy": fixed["attn_strategy"], "arch": fixed["arch"]},
    ]

    def resolved(backend, case):
        options, notes = backend.options(**case)
        return {**options.to_dict(), "short_side": options.short_side or backend.segmenter.short_side}, notes

    for case in cases:
        assert resolved(checkpoint, case) == resolved(export, case), case
    # The method's options reach the exported graph: its per-call settings, as the runtime takes them.
    image = str(example_image_path())
    result = export.segment(image, "cat\nsky", method="naclip", pamr=False)
    assert result.options.method == "naclip" and result.options.pamr_steps == 0
    stages = names_of_stage("block", "windows", "post", "image")
    settings = {name: value for name, value in get_method("naclip").settings.items() if name in stages}
    short_side = settings.pop("short_side", None)
    expected = ExportedSegmenter(tiny_export).segment(image, ["cat", "sky"], short_side=short_side,
                                                      **{**settings, "pamr_steps": 0}).segmentation  # fmt: skip
    assert np.array_equal(np.asarray(result.label_map), expected)
    assert expected.shape == (300, 450)  # the photo's size
    with pytest.raises(ValueError, match=r"arch='vanilla' cannot be changed on an exported model.*--set arch="):
        export.options("sclip")
    with pytest.raises(ValueError, match="cannot show attention maps.*PyTorch checkpoint"):
        export.attention_maps(image, (10, 10))
