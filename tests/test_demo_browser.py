"""The demo driven in a real headless Chromium (Debian's /usr/bin/chromium) with Playwright, as a user would: upload
the example photo, type classes, segment, read the table; click a point in the Attention tab and get three maps;
pick another method and see its settings in the controls.

Screenshots of both tabs go to `$NACLIP_ARTIFACTS` (default: a folder under the system's temp folder); the README's
screenshots are made with `NACLIP_ARTIFACTS=docs python -m pytest tests/test_demo_browser.py`.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("NACLIP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000
LABELS = ["table, wooden table", "saucer, plate", "coffee cup, cup", "spoon"]

pytest.importorskip("gradio", reason="the demo needs its extra: pip install -e '.[demo]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs: pip install playwright")
if shutil.which(CHROMIUM) is None and not os.path.isfile(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, as .ci/run does)", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def artifacts() -> Path:
    folder = Path(os.environ.get("NACLIP_ARTIFACTS") or Path(tempfile.gettempdir()) / "naclip-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def demo_url(tiny_checkpoint, tmp_path_factory):
    from naclip_hf.demo import DemoBackend, build_demo

    os.environ["NACLIP_CACHE"] = str(tmp_path_factory.mktemp("text-cache"))
    backend = DemoBackend.from_pretrained(str(tiny_checkpoint))
    backend.model_name = "tiny-naclip"  # the screenshots show this rather than a temporary path
    demo = build_demo(backend)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def page(demo_url, tmp_path_factory):
    with sync_api.sync_playwright() as playwright:
        # A persistent context on a fresh, empty profile folder (Playwright passes it as --user-data-dir).
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = browser.pages[0] if browser.pages else browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(demo_url)
            page.locator("#segment-button").wait_for()
            yield page
        finally:
            browser.close()


def test_segment_tab_shows_overlay_and_the_classes_found(page, artifacts):
    from naclip_hf.demo.backend import example_image_path

    page.locator("#segment-image input[type=file]").set_input_files(str(example_image_path()))
    page.locator("#segment-image img").first.wait_for()
    page.locator("#labels textarea").fill("\n".join(LABELS))
    page.locator("#segment-button").click()
    page.locator("#overlay img").first.wait_for()
    page.locator("#legend .naclip-class").first.wait_for()
    found = page.locator("#legend .naclip-class").all_inner_texts()
    assert found, "the table lists no class"
    assert set(found) <= {entry.split(",")[0] for entry in LABELS}
    shares = [float(text.rstrip("%")) for text in page.locator("#legend td:last-child").all_inner_texts()]
    assert abs(sum(shares) - 100) < 0.2 * len(shares)  # rounded to 0.1 % each
    assert page.locator("#label-map a").first.get_attribute("href"), "no label map to download"
    page.screenshot(path=str(artifacts / "demo_segment.jpg"), full_page=True, type="jpeg", quality=80)


def test_attention_tab_shows_three_maps_for_a_clicked_point(page, artifacts):
    page.get_by_role("tab", name="Attention").click()
    picture = page.locator("#attention-image img").first
    picture.wait_for()
    box = picture.bounding_box()
    assert box is not None and box["width"] > 0
    picture.click(position={"x": box["width"] * 0.3, "y": box["height"] * 0.45})
    page.locator("#attention-caption").get_by_text("Patch at row").wait_for()
    thumbnails = page.locator("#attention-maps img")
    thumbnails.nth(2).wait_for()
    assert thumbnails.count() == 3
    captions = page.locator("#attention-maps").inner_text()
    for label in ("CLIP", "SCLIP", "NACLIP"):
        assert label in captions
    page.screenshot(path=str(artifacts / "demo_attention.jpg"), full_page=True, type="jpeg", quality=80)
    # Another choice of methods redraws the maps of the same point.
    token = page.locator("#attention-methods .token").filter(has_text="SCLIP")
    token.locator(".token-remove").click()
    sync_api.expect(thumbnails).to_have_count(2)
    captions = page.locator("#attention-maps").inner_text()
    assert "SCLIP" not in captions and "NACLIP" in captions


def test_bad_input_shows_a_message_not_a_trace(page):
    page.get_by_role("tab", name="Segment").click()
    page.locator("#labels textarea").fill("")
    page.locator("#segment-button").click()
    message = page.get_by_text("No classes given").first
    message.wait_for()
    assert "Traceback" not in page.content()
    # One class (commas join synonyms) is refused with the fix, in the page.
    page.locator("#labels textarea").fill("cup, table")
    page.locator("#segment-button").click()
    page.get_by_text("commas join synonyms of one class").first.wait_for()
    assert "one per line of the box" in page.content() and "Traceback" not in page.content()


def test_picking_a_method_shows_its_settings_in_the_controls(page):
    page.get_by_role("tab", name="Segment").click()
    threshold = page.locator("#prob-thd").locator("textarea, input").first
    assert threshold.input_value() == "" and threshold.get_attribute("placeholder") == "the method's (0)"
    threshold.fill("0.3")
    page.locator("#method input").click()
    page.get_by_role("option", name="SCLIP", exact=True).click()
    page.locator("#method-note").get_by_text("correlative self-attention").wait_for()
    # Every control is back to "the method's", showing SCLIP's values; the threshold typed before is cleared.
    assert page.locator("#strategy input").input_value() == "the method's (csa)"
    assert page.locator("#arch").get_by_label("the method's (vanilla)").is_checked()
    assert threshold.input_value() == ""
    page.get_by_text("More settings").click()
    short_side = page.locator("#short-side").locator("textarea, input").first
    assert short_side.get_attribute("placeholder") == "the method's (336)"
