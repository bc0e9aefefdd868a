"""`tadsr serve` in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by Selenium.

Skipped where Chromium, ChromeDriver or Selenium is missing; CI installs them (`.ci/run`). With TADSR_SCREENSHOT
set, the page with its result is also saved there (docs/serve.png is made so).
"""

from __future__ import annotations

import io
import os
import shutil
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path

import pytest
from PIL import Image

from conftest import WebServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip("needs Chromium and ChromeDriver (Debian: apt install chromium chromium-driver)",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="needs Selenium (the test extra)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

# What a clean headless run on a closed network needs: no sandbox as root, no calls to Google's services.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--window-size=1400,1080")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """One Chromium for this file's tests (each opens the page afresh: a page of its own, a session of its own)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium') / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def cat(tmp_path: Path) -> Path:
    """A 128x128 crop of the packaged cat photo (the embedded student makes it 512x512)."""
    path = tmp_path / "cat.png"
    Image.open(str(files("tadsr") / "demo_photos" / "chelsea.png")).crop((64, 32, 192, 160)).save(path)
    return path


def _open_page(driver, url: str) -> None:
    driver.get(url)
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#tadsr-input input[type=file]"))


def _summary(driver) -> str:
    boxes = driver.find_elements(By.CSS_SELECTOR, "#tadsr-summary textarea")
    return (boxes[0].get_attribute("value") or "") if boxes else ""


def test_upload_upscale_and_download_in_chromium(browser, web_server: WebServer, cat: Path, tmp_path: Path) -> None:
    _open_page(browser, web_server.url)
    browser.find_element(By.CSS_SELECTOR, "#tadsr-input input[type=file]").send_keys(str(cat))
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#tadsr-input img"))
    browser.find_element(By.CSS_SELECTOR, "#tadsr-upscale").click()
    WebDriverWait(browser, 180).until(lambda d: "->" in _summary(d))
    assert _summary(browser).startswith("128x128 -> 512x512 (8-bit RGB PNG") and "student (embedded)" in _summary(
        browser)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#tadsr-slider img")) == 2  # before and after
    link = browser.find_element(By.CSS_SELECTOR, "#tadsr-download a").get_attribute("href")
    with urllib.request.urlopen(link, timeout=30) as response:
        downloaded = Image.open(io.BytesIO(response.read()))
    assert downloaded.format == "PNG" and downloaded.size == (512, 512)
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(tmp_path / "serve.png"))
    if os.environ.get("TADSR_SCREENSHOT"):
        shutil.copy(tmp_path / "serve.png", os.environ["TADSR_SCREENSHOT"])
    # Closing the page deletes its upload and result on the server.
    result = Path(urllib.parse.unquote(link.split("file=", 1)[1]))
    assert result.is_file() and web_server.root in result.parents
    assert _uploads_of(cat, web_server.root)
    browser.get("about:blank")
    deadline = time.monotonic() + 60
    while (result.exists() or _uploads_of(cat, web_server.root)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not result.exists(), "the closed page's result was not deleted"
    assert not _uploads_of(cat, web_server.root), "the closed page's upload was not deleted"


def _uploads_of(photo: Path, root: Path) -> list[Path]:
    """The server's copies of ``photo`` (Gradio keeps uploads in a folder named by their hash)."""
    return [p for p in root.rglob(photo.name) if p.read_bytes() == photo.read_bytes()]


def test_a_bad_upload_shows_the_one_line_message(browser, web_server: WebServer, tmp_path: Path) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("no pixels here")
    _open_page(browser, web_server.url)
    browser.find_element(By.CSS_SELECTOR, "#tadsr-input input[type=file]").send_keys(str(bad))
    time.sleep(1)
    browser.find_element(By.CSS_SELECTOR, "#tadsr-upscale").click()
    message = "notes.png: not a readable image"
    WebDriverWait(browser, 60).until(lambda d: message in d.find_element(By.TAG_NAME, "body").text)
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "Traceback" not in text and _summary(browser) == ""


def test_choosing_the_teacher_offers_its_steps(browser, web_server: WebServer) -> None:
    _open_page(browser, web_server.url)

    def steps() -> str:
        return browser.find_element(By.CSS_SELECTOR, "#tadsr-steps input").get_attribute("value")

    assert steps() == "1"
    browser.find_element(By.CSS_SELECTOR, "#tadsr-model input").click()
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "li[data-testid=dropdown-option]"))
    options = browser.find_elements(By.CSS_SELECTOR, "li[data-testid=dropdown-option]")
    assert [o.get_attribute("aria-label") for o in options] == [
        "student (embedded)", "teacher (embedded)", "tiny-student.safetensors", "teacher.safetensors"]
    options[1].click()
    WebDriverWait(browser, 10).until(lambda d: steps() != "1")
    assert steps() == "15 (the schedule's T)"
