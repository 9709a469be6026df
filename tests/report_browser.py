"""Open a job report in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven by selenium; no
browser is ever downloaded) and say what it saw: images loaded or broken, every request the page made, its text.

Flags: --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update
--disable-sync --no-first-run and a fresh --user-data-dir. Requests are read from Chromium's performance log
(DevTools `Network.requestWillBeSent` of the report's own document); the browser's start page is drained first.
Without the browser the test skips with the install command (CI installs it in .ci/run, and fails on a skip).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,900")


@dataclass
class Page:
    images: int
    broken: list[str]
    requests: list[str]
    outside: list[str] = field(default_factory=list)
    text: str = ""


def open_report(report: Path, screenshot: Path | None = None) -> Page:
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # selenium must never fetch a driver or a browser
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="report-chromium-")
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.get_log("performance")
        url = report.resolve().as_uri()
        driver.get(url)
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])")
        requests = []
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent" and message["params"].get("documentURL") == url:
                requests.append(message["params"]["request"]["url"])
        folder = report.resolve().parent.as_uri() + "/"
        text = driver.execute_script("return document.body.innerText")
        if screenshot is not None:
            height = driver.execute_script("return document.body.scrollHeight")
            driver.set_window_size(1280, min(int(height) + 40, 16000))
            driver.save_screenshot(str(screenshot))
    finally:
        driver.quit()
    return Page(images=len(images), broken=[src for src, ok in images if not ok], requests=requests,
                outside=[u for u in requests if not u.startswith(folder)], text=text)
