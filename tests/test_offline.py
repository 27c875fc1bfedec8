"""A first run without the Hub: the default checkpoint cannot be downloaded, so the command stops at once with what
to do (no retries, no traceback), offers an offline try on the tiny test CLIP, and `HF_HUB_OFFLINE=1` never
contacts the Hub. The Hub here is a local stand-in that answers 503, or a port nothing listens on.

How long the failure takes is printed (`pytest -s`), not asserted; `scripts/offline_first_run.py` times the README
command on this machine."""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from naclip_hf.checkpoints import CheckpointUnavailableError, check_checkpoint, is_hub_id, resolve_checkpoint
from naclip_hf.cli import main
from naclip_hf.models.naclip.options import DEFAULT_CHECKPOINT

REPO = Path(__file__).resolve().parents[1]
README_COMMAND = ["segment", "examples/coffee.jpg", "--labels-file", "examples/labels.txt"]


def run_naclip(argv: list[str], endpoint: str, tmp_path: Path, cwd: Path = REPO, **env: str) -> tuple:
    """`naclip ARGV` in a fresh process with the Hub at `endpoint`, an empty Hugging Face cache, and none of the
    test suite's offline switches (telemetry on, as for a user): (completed process, seconds taken)."""
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")}  # fmt: skip
    environment.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf-home"), **env)
    start = time.perf_counter()
    completed = subprocess.run([sys.executable, "-m", "naclip_hf.cli", *argv], cwd=cwd, env=environment,
                               capture_output=True, text=True, timeout=300)  # fmt: skip
    return completed, time.perf_counter() - start


def assert_how_to_get_it(message: str, option: str | None = "--model") -> None:
    assert "Traceback" not in message and "Retrying" not in message and "Retry" not in message
    assert f"hf download {DEFAULT_CHECKPOINT} --local-dir" in message  # download elsewhere
    assert "naclip convert ViT-B-16.pt" in message  # convert OpenAI weights
    assert "save_pretrained (config.json + model.safetensors)" in message  # any local folder
    assert ("pass its folder with --model DIR" if option else "load its folder instead of the Hub id") in message
    assert "tiny CLIP of the test suite" in message and "Its weights are RANDOM" in message
    assert "segmentation is meaningless" in message and "openai_clip_tiny.safetensors tiny-clip" in message


def test_first_run_without_the_hub_stops_at_once_and_offers_an_offline_try(fake_hub, tmp_path, capsys, monkeypatch):
    endpoint = fake_hub.url
    work = tmp_path / "work"
    work.mkdir()
    argv = ["segment", str(REPO / "examples/coffee.jpg"), "--labels-file", str(REPO / "examples/labels.txt"),
            "--out", "naclip_out"]  # fmt: skip
    completed, seconds = run_naclip(argv, endpoint, tmp_path, cwd=work)
    with capsys.disabled():
        print(f"\nfirst run without the Hub (Hub answering 503): failed after {seconds:.1f} s")
    assert completed.returncode == 2 and completed.stdout == ""
    error = completed.stderr
    assert error.startswith("naclip segment: error: The checkpoint openai/clip-vit-base-patch16 could not be "
                            "downloaded: the Hugging Face Hub"), error  # fmt: skip
    assert f"({endpoint}) cannot be reached (the Hub answered HTTP 503; no network, or the Hub is down)" in error
    assert_how_to_get_it(error)
    assert fake_hub.paths == ["/openai/clip-vit-base-patch16/resolve/main/config.json"]  # asked once

    # The offered try works as written: convert the tiny CLIP, then run the same command with --model tiny-clip.
    (convert_line,) = [line for line in error.splitlines() if line.strip().startswith("naclip convert ")]
    convert = shlex.split(convert_line.split("#")[0])
    assert convert[-1] == "tiny-clip"
    assert Path(convert[2]) == REPO / "tests" / "fixtures" / "golden" / "openai_clip_tiny.safetensors"
    monkeypatch.chdir(work)
    assert main(convert[1:]) == 0
    assert main([*argv, "--model", "tiny-clip", "--set", "short_side=64"]) == 0
    assert (work / "naclip_out" / "coffee_overlay.png").is_file()
    capsys.readouterr()


def test_no_network_fails_at_once_without_retries(closed_port_url, tmp_path):
    endpoint = closed_port_url.rsplit("/", 1)[0]  # nothing listens there: the connection is refused
    completed, seconds = run_naclip([*README_COMMAND, "--out", str(tmp_path / "out")], endpoint, tmp_path)
    print(f"\nfirst run without network (connection refused): failed after {seconds:.1f} s")
    assert completed.returncode == 2 and completed.stdout == ""
    assert "could not be downloaded" in completed.stderr and "cannot be reached" in completed.stderr
    assert_how_to_get_it(completed.stderr)
    # The offline try is named relative to the working folder (the README's: the repository).
    assert "naclip convert tests/fixtures/golden/openai_clip_tiny.safetensors tiny-clip" in completed.stderr


def test_offline_mode_never_contacts_the_hub(fake_hub, tmp_path):
    completed, seconds = run_naclip([*README_COMMAND, "--out", str(tmp_path / "out")], fake_hub.url, tmp_path,
                                    HF_HUB_OFFLINE="1")  # fmt: skip
    print(f"\nHF_HUB_OFFLINE=1: failed after {seconds:.1f} s")
    assert completed.returncode == 2 and fake_hub.paths == []
    assert "is not in the local cache" in completed.stderr
    assert "offline mode is on (HF_HUB_OFFLINE=1), so it is not downloaded" in completed.stderr
    assert_how_to_get_it(completed.stderr)


def test_a_cached_checkpoint_loads_from_the_cache_when_the_hub_is_down(fake_hub, tmp_path, tiny_checkpoint):
    """A Hub checkpoint downloaded earlier is read from its cache folder: the Hub is asked once, briefly."""
    repo = tmp_path / "hf-home" / "hub" / "models--naclip-test--tiny"
    shutil.copytree(tiny_checkpoint, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    out = tmp_path / "out"
    completed, seconds = run_naclip(
        ["segment", str(REPO / "examples/coffee.jpg"), "--labels", "cup", "table", "--model", "naclip-test/tiny",
         "--set", "short_side=64", "--out", str(out)], fake_hub.url, tmp_path,
    )  # fmt: skip
    print(f"\ncached checkpoint, Hub down: {seconds:.1f} s")
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == "" and (out / "coffee_overlay.png").is_file()
    assert fake_hub.paths == ["/naclip-test/tiny/resolve/main/config.json"]


def test_a_hub_id_the_hub_does_not_have_is_named(fake_hub, tmp_path):
    fake_hub.answer = (401, {"X-Error-Code": "RepoNotFound"})  # as the Hub answers for an unknown repository
    completed, _ = run_naclip([*README_COMMAND, "--model", "clip-b16", "--out", str(tmp_path / "out")], fake_hub.url,
                              tmp_path)  # fmt: skip
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert completed.stderr.startswith(
        "naclip segment: error: --model clip-b16 is not a folder here, and there is no model clip-b16 on the Hub"
    ), completed.stderr
    assert fake_hub.paths == ["/clip-b16/resolve/main/config.json"]


def test_the_library_and_the_pipeline_fail_at_once_in_offline_mode(monkeypatch, tmp_path, capsys):
    """`load_model`, the pipeline's default checkpoint and the demo go through the same check (HF_HUB_OFFLINE=1 is
    set for the test suite, and the Hugging Face cache here is empty)."""
    from huggingface_hub import constants
    from transformers import pipeline

    from naclip_hf.inference import load_model

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert constants.is_offline_mode()
    with pytest.raises(CheckpointUnavailableError) as raised:
        load_model()
    assert_how_to_get_it(str(raised.value), option=None)
    transformers_logger = logging.getLogger("transformers")
    monkeypatch.setattr(transformers_logger, "level", logging.ERROR)  # its notice that the default model is used
    with pytest.raises(CheckpointUnavailableError, match="offline mode is on"):
        pipeline("naclip-segmentation")
    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 2
    assert capsys.readouterr().err.startswith(f"naclip demo: error: The checkpoint {DEFAULT_CHECKPOINT} is not in")


def test_one_rule_tells_a_folder_from_a_hub_id(tmp_path, monkeypatch):
    for text in ("openai/clip-vit-base-patch16", "bert-base-uncased", "org/name.v2", "models/clip"):
        assert is_hub_id(text), text
    for text in ("./clip", "~/clip", "/abs/clip", "a/b/c", "x--y", "x..y", "-x", "x.", "x.git", "my model", "a\\b",
                 "clip/", ""):  # fmt: skip
        assert not is_hub_id(text), text
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "clip").mkdir(parents=True)  # on disk: a folder, whatever its name looks like
    with pytest.raises(OSError, match=r"--model models/clip: folder has no config\.json"):
        check_checkpoint("models/clip", "--model")
    assert check_checkpoint("models/other").repo_id == "models/other"
    with pytest.raises(OSError, match=r"The checkpoint ./missing: no such folder; .*naclip convert"):
        resolve_checkpoint("./missing")
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"")
    with pytest.raises(OSError, match=re.escape(f"{weights} is a file, not a folder")):
        resolve_checkpoint(weights)
