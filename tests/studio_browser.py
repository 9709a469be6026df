"""Helpers for the LoRA Studio browser tests: the standalone Studio server (a real Waitress on 127.0.0.1, started
as `devserver-lora studio` in a subprocess) and real headless Chromium from Debian (`/usr/bin/chromium` +
`/usr/bin/chromedriver`, driven by selenium; nothing downloads a browser or a driver).

Chromium flags: --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update
--no-first-run --disable-sync and a fresh --user-data-dir per session (two sessions = two users with their own
localStorage). Without the browser a test skips with the install command; CI installs it (.ci/run) and fails on a
skip.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync")
STATIC = Path(__file__).resolve().parents[1] / "devserver_lora" / "studio" / "static"
SHOTS_FOR_LEAD = Path("/tmp/studio-shots")
BAD_IMAGE = "broken_99.png"


def require_browser() -> None:
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium.webdriver")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StudioServer:
    """`devserver-lora studio` on 127.0.0.1 with everything under one temporary home (and `tiny_models_dir`)."""

    def __init__(self, home: Path, *, teachers: tuple[str, ...] = (), models_dir: Path | None = None) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loras = home / "comfyui_models" / "loras"
        self.schemas = home / "schemas"
        self.log = home / "studio.log"
        self.teachers = teachers
        self.models_dir = models_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "devserver_lora", "studio", "--host", "127.0.0.1", "--port", str(self.port),
                "--home", str(self.home), "--loras-dir", str(self.loras), "--schemas", str(self.schemas)]
        if self.models_dir is not None:
            argv += ["--models-dir", str(self.models_dir)]
        for name in self.teachers:
            argv += ["--teacher", name]
        return argv

    def start(self, timeout_s: float = 60) -> StudioServer:
        for folder in (self.loras, self.schemas):
            folder.mkdir(parents=True, exist_ok=True)
        log = self.log.open("ab")
        self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, cwd=self.home)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the Studio server exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if httpx.get(self.url + "/api/lora/me", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"the Studio server did not answer within {timeout_s} s:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-4000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


@contextmanager
def studio_server(home: Path, **kwargs: Any) -> Iterator[StudioServer]:
    # The page is built against STUDIO_API.md while studio-api lands the routes; until then this says so (and
    # fails under CI, which must run it).
    spec = importlib.util.find_spec("devserver_lora.studio")
    if spec is None or spec.origin is None:  # only static/ there: a namespace package, no routes
        pytest.skip("the Studio API (devserver_lora.studio) has not landed yet")
    server = StudioServer(home, **kwargs)
    try:
        yield server.start()
    finally:
        server.stop()


@contextmanager
def chromium(width: int = 1280, height: int = 900, *, origin: str | None = None) -> Iterator[Any]:
    """One headless Chromium session with its own profile; the clipboard is allowed for `origin`."""
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # selenium must never fetch a driver or a browser
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="studio-chromium-")
    for flag in (*FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.set_page_load_timeout(60)
        set_viewport(driver, width, height)
        if origin:
            driver.execute_cdp_cmd("Browser.grantPermissions", {
                "origin": origin, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
        yield driver
    finally:
        driver.quit()


def set_viewport(driver: Any, width: int, height: int) -> None:
    """The CSS viewport exactly (window size includes no chrome in headless, but emulate to be sure)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 700})


def wait_until(driver: Any, condition: Callable[[Any], Any], timeout_s: float = 30,
               what: str | Callable[[], str] = "") -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout_s, poll_frequency=0.2).until(condition)
    except TimeoutException as exc:
        said = what() if callable(what) else what
        raise AssertionError(f"timed out after {timeout_s} s waiting for {said or condition}; "
                             f"console: {console(driver)}") from exc


def console(driver: Any) -> list[str]:
    try:
        return [e["message"] for e in driver.get_log("browser")]
    except Exception:  # noqa: BLE001 - only diagnostics
        return []


def by_id(driver: Any, element_id: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def text_of(driver: Any, element_id: str) -> str:
    return str(driver.execute_script("return document.getElementById(arguments[0]).textContent", element_id))


def shot(driver: Any, folder: Path, name: str) -> Path:
    """A screenshot of the whole page (the window grows to the page height for the shot, then returns)."""
    folder.mkdir(parents=True, exist_ok=True)
    size = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    set_viewport(driver, size[0], min(max(height, size[1]), 12000))
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    set_viewport(driver, size[0], size[1])
    return path


def publish_shots(folder: Path) -> None:
    """Copy the screenshots to /tmp/studio-shots/ for a person to look at."""
    SHOTS_FOR_LEAD.mkdir(parents=True, exist_ok=True)
    for png in sorted(folder.glob("*.png")):
        (SHOTS_FOR_LEAD / png.name).write_bytes(png.read_bytes())


def sign_in(driver: Any, name: str) -> None:
    """The page asks once for a name; it keeps it in localStorage."""
    dialog = by_id(driver, "user-dialog")
    wait_until(driver, lambda d: dialog.get_attribute("open") is not None, what="the name dialog")
    field = by_id(driver, "user-name")
    field.clear()
    field.send_keys(name)
    by_id(driver, "user-save").click()
    wait_until(driver, lambda d: name in text_of(d, "user-label"), what="the signed-in name")


def planted_zip(path: Path, *, n: int = 4, size: int = 256, trigger: str = "mgsq", bad: bool = True) -> Path:
    """A ZIP as a student uploads it: images with same-stem captions, and (bad=True) one cut-off PNG."""
    from devserver_lora.train.native.tiny import write_planted_images

    folder = write_planted_images(path.parent / (path.stem + "_src"), n=n, size=size, trigger=trigger)
    with zipfile.ZipFile(path, "w") as zf:
        for file in sorted(folder.iterdir()):
            if file.suffix in (".png", ".txt"):
                zf.write(file, file.name)
        if bad:
            whole = (folder / "square_00.png").read_bytes()
            zf.writestr(BAD_IMAGE, whole[: len(whole) // 3])  # the upload was cut off
            zf.writestr(BAD_IMAGE.replace(".png", ".txt"), f"{trigger}, a broken upload\n")
    return path


def tiny_models_dir(folder: Path) -> Path:
    """A models folder as the native backend looks it up for sd35_large (`native.models.resolve_source`): the tiny
    SD3 checkpoint under the real file name, and the tiny CLIP tokenizer's files under tokenizers/clip."""
    from devserver_lora.train.native.tiny import tiny_clip_tokenizer, tiny_sai_checkpoint

    checkpoints = folder / "checkpoints"
    target = checkpoints / "sd3.5_large.safetensors"
    if not target.is_file():
        tiny_sai_checkpoint(checkpoints).rename(target)
    tiny_clip_tokenizer().save_pretrained(str(folder / "tokenizers" / "clip"))
    return folder


# --- the page's own files ----------------------------------------------------------------------------------------

def dictionary_keys() -> dict[str, set[str]]:
    """The keys of each language in static/i18n.js (one `key: "text",` per line inside `en: {` / `de: {`)."""
    keys: dict[str, set[str]] = {}
    current: str | None = None
    for line in (STATIC / "i18n.js").read_text(encoding="utf-8").splitlines():
        start = re.match(r"^  (\w+): \{$", line)
        if start:
            current = start.group(1)
            keys[current] = set()
            continue
        if current and line.startswith("  },"):
            current = None
            continue
        entry = re.match(r"^    (\w+): \"", line)
        if current and entry:
            keys[current].add(entry.group(1))
    return keys


def used_keys() -> set[str]:
    """Every literal key the page uses: data-i18n in the HTML, t("key") in the scripts."""
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    used = set(re.findall(r'data-i18n="(\w+)"', html))
    for js in STATIC.glob("*.js"):
        text = js.read_text(encoding="utf-8")
        used |= set(re.findall(r'\bt\("(\w+)"', text))  # t("key", ...)
        used |= set(re.findall(r'\bsay\("[\w-]+", "(\w+)"', text))  # say("status-id", "key", ...)
        for pair in re.findall(r'\bsay\("[\w-]+", [^;]*?\? "(\w+)" : "(\w+)"', text):  # say(id, c ? "a" : "b")
            used |= set(pair)
    return used
