"""`tadsr serve`: time from upload to result, as a user of the page and of the API sees it, and the server's memory.

Starts `tadsr serve` (the embedded models) on a free local port, then for a photo (default: the packaged 256x256
cat) measures, over --runs runs each:
  * api:     gradio_client's predict, from the upload to the full-resolution PNG downloaded;
  * browser: headless Chromium (Selenium; skipped without it), from setting the file to the result on the page;
and the server process's resident memory (VmRSS, and the peak VmHWM) after start and after the jobs (Linux /proc).

Usage: python benchmarks/serve_latency.py [--photo PATH] [--runs 3] [--model "student (embedded)"]
Needs: pip install 'tadsr[web]' (and selenium + Debian's chromium and chromium-driver for the browser row).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib.resources import files
from pathlib import Path


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def start(log: Path) -> tuple[subprocess.Popen, str, float]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    begin = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "tadsr.cli", "serve", "--port", str(port)], stdout=out,
                                   stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}/"
    while True:
        if process.poll() is not None:
            sys.exit(f"tadsr serve exited:\n{log.read_text()}")
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return process, url, time.perf_counter() - begin
        except OSError:
            time.sleep(0.2)


def time_api(url: str, photo: Path, model: str, runs: int, downloads: Path) -> tuple[list[float], list[str]]:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, download_files=str(downloads), analytics_enabled=False)
    seconds, summaries = [], []
    for _ in range(runs):
        begin = time.perf_counter()
        _, _, summary = client.predict(handle_file(str(photo)), model, 1, 0, 256, 4, "none", api_name="/upscale")
        seconds.append(time.perf_counter() - begin)
        summaries.append(summary)
    return seconds, summaries


def time_browser(url: str, photo: Path, runs: int, profile: Path) -> list[float] | None:
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError:
        return None
    if chromium is None or driver_path is None:
        return None
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(driver_path), options=options)
    seconds = []
    try:
        for _ in range(runs):
            driver.get(url)
            WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#tadsr-input input[type=file]"))
            begin = time.perf_counter()
            driver.find_element(By.CSS_SELECTOR, "#tadsr-input input[type=file]").send_keys(str(photo))
            WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#tadsr-input img"))
            driver.find_element(By.CSS_SELECTOR, "#tadsr-upscale").click()
            WebDriverWait(driver, 300, poll_frequency=0.05).until(
                lambda d: "->" in (d.find_element(By.CSS_SELECTOR, "#tadsr-summary textarea").get_attribute("value")
                                   or ""))
            seconds.append(time.perf_counter() - begin)
    finally:
        driver.quit()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photo", type=Path, default=Path(str(files("tadsr") / "demo_photos" / "chelsea.png")))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", default="student (embedded)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        process, url, startup = start(tmp_path / "serve.log")
        try:
            idle = memory_mib(process.pid)
            api, summaries = time_api(url, args.photo.resolve(), args.model, args.runs, tmp_path / "downloads")
            browser = time_browser(url, args.photo.resolve(), args.runs, tmp_path / "profile")
            busy = memory_mib(process.pid)
        finally:
            process.terminate()
            process.wait(60)
    print(f"{os.cpu_count()} CPUs; photo {args.photo.name}; model {args.model}; {args.runs} runs")
    print(f"server start to first answer: {startup:.1f} s")
    print(f"api     upload -> result: median {statistics.median(api):.2f} s (runs: "
          f"{', '.join(f'{s:.2f}' for s in api)})")
    if browser is None:
        print("browser upload -> result: skipped (needs selenium, chromium and chromedriver)")
    else:
        print(f"browser upload -> result: median {statistics.median(browser):.2f} s (runs: "
              f"{', '.join(f'{s:.2f}' for s in browser)})")
    print(f"server's own time for the job: {summaries[-1]}")
    print(f"server memory after start: {idle[0]:.0f} MiB resident; after the jobs: {busy[0]:.0f} MiB resident, "
          f"peak {busy[1]:.0f} MiB")


if __name__ == "__main__":
    main()
