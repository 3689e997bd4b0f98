"""ofa-demo end to end in a real headless browser (Debian's chromium + chromedriver, driven by Selenium): start
the server, upload a synthetic image, pick a task, type the text, submit, read the answer from the page,
screenshot it into the test's tmp dir. `OFA_DEMO_CHECKPOINT=PATH` serves another checkpoint than the test's
trained ofa_nano and `OFA_DEMO_SCREENSHOT=FILE` keeps the grounding screenshot: docs/API.md has the command
that made docs/demo_grounding.png.

Skipped, with the reason, where no browser or driver is installed (`apt-get install -y chromium chromium-driver`).
"""
from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from ofa.datamodules.synthetic import SyntheticConfig, make_sample

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
uvicorn = pytest.importorskip("uvicorn", reason="the demo extra is not installed (pip install -e '.[demo]')")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no chromium/chromedriver on PATH "
                                "(apt-get install -y chromium chromium-driver)")


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest) -> Iterator[str]:
    """The demo app on a free 127.0.0.1 port, served from a thread; yields its URL."""
    import ofa
    from ofa.demo import HOST, build_app

    checkpoint = os.environ.get("OFA_DEMO_CHECKPOINT") or request.getfixturevalue("trained_nano").folder
    model = ofa.from_pretrained(checkpoint, device="cpu")
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(build_app(model, str(checkpoint)), host=HOST, port=port,
                                       log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "the demo server did not start"
    yield f"http://{HOST}:{port}/"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=900,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def synthetic_upload(tmp_path: Path) -> Path:
    """A synthetic-world picture (256 px, shapes on a plain background) as a PNG file to upload."""
    _, jpeg = make_sample(SyntheticConfig(image_size=256), "val", 0)
    path = tmp_path / "shapes.png"
    Image.open(io.BytesIO(jpeg)).convert("RGB").save(path)
    return path


def submit(browser, url: str, image: Path, task: str, text: str) -> str:
    """Fill the form as a person would and return the answer the page shows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(url)
    browser.find_element(By.ID, "image").send_keys(str(image))
    Select(browser.find_element(By.ID, "task")).select_by_value(task)
    field = browser.find_element(By.ID, "text")
    field.clear()
    field.send_keys(text)
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "answer") or d.find_elements(By.ID, "error"))
    errors = browser.find_elements(By.ID, "error")
    assert not errors, errors[0].text
    return browser.find_element(By.ID, "answer").text


def test_grounding_answer_is_drawn_on_the_page(server, browser, tmp_path) -> None:
    from selenium.webdriver.common.by import By

    answer = submit(browser, server, synthetic_upload(tmp_path), "grounding", "the orange circle at the top left")
    coords = [float(c) for c in answer.removeprefix("box ").split(",")]
    assert len(coords) == 4 and all(0 <= c <= 256 for c in coords)
    picture = browser.find_element(By.ID, "picture")
    assert picture.get_attribute("src").startswith("data:image/png;base64,")
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", picture) == 256
    shot = tmp_path / "demo_grounding.png"
    assert browser.save_screenshot(str(shot)) and Image.open(shot).size[0] > 0
    if os.environ.get("OFA_DEMO_SCREENSHOT"):
        shutil.copy(shot, os.environ["OFA_DEMO_SCREENSHOT"])


def test_caption_and_a_bad_upload(server, browser, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    assert submit(browser, server, synthetic_upload(tmp_path), "caption", "")  # a non-empty caption
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    browser.get(server)
    browser.find_element(By.ID, "image").send_keys(str(bad))
    browser.find_element(By.ID, "submit").click()
    # the POST answers with a new page: wait for it (under load the old page is still there for a while)
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "error") or d.find_elements(By.ID, "answer"))
    assert "UnidentifiedImageError" in browser.find_element(By.ID, "error").text
