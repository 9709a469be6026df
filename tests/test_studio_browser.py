"""LoRA Studio page (/lora) in a real headless Chromium (Debian's chromium + chromium-driver via selenium) against
the standalone Studio server (Waitress on 127.0.0.1) with the native backend and the tiny SD3 model (issue 14,
points 3 and 6). Screenshots of the main screens go to the test's tmp folder and to /tmp/studio-shots/.

The training test is heavy (native training on the CPU): run it under the shared lock,
`flock /tmp/devserver-lora-heavy.lock .venv/bin/python -m pytest tests/test_studio_browser.py -x -q`.
"""

from __future__ import annotations

import fnmatch
import json
import re
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ROOT
from studio_browser import (
    BAD_IMAGE,
    STATIC,
    by_id,
    chromium,
    css,
    dictionary_keys,
    planted_zip,
    publish_shots,
    set_viewport,
    shot,
    sign_in,
    studio_server,
    text_of,
    tiny_models_dir,
    used_keys,
    wait_until,
)

from devserver_lora.train.card import DatasetCard
from devserver_lora.train.events import JOB_STATES
from devserver_lora.train.native.tiny import PLANTED_CARD

CARD_IDS = ("title", "source", "rights_holder", "licence", "consent", "cultural_context", "approved_by",
            "description")
CARD_TAB_ORDER = ("title", "source", "rights_holder", "licence", "consent", "approved_by", "cultural_context",
                  "description")


# --- the page's files, without a browser --------------------------------------------------------------------------

def test_both_languages_have_every_string() -> None:
    keys = dictionary_keys()
    assert set(keys) == {"en", "de"} and len(keys["en"]) > 100
    assert keys["en"] == keys["de"], keys["en"] ^ keys["de"]
    literal = {k for k in used_keys() if not k.endswith("_")}  # "state_" + state, "card_" + field are below
    assert literal and literal <= keys["en"], literal - keys["en"]
    assert {f"state_{s}" for s in JOB_STATES} | {"state_queued"} <= keys["en"]
    assert {f"card_{f}" for f in CARD_IDS} <= keys["en"]


def test_the_card_form_uses_the_packages_field_names() -> None:
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    names = set(re.findall(r'id="card-(\w+)" name="(\w+)"', html))
    assert all(a == b for a, b in names)
    fields = {a for a, _ in names}
    assert fields == set(CARD_IDS) | {"language", "tags"}
    assert fields <= set(DatasetCard.model_fields)
    required = {n for n, f in DatasetCard.model_fields.items() if f.is_required()}
    assert required == set(CARD_IDS)  # every required field of the card is a required field of the form
    for name in CARD_IDS:
        assert re.search(rf'id="card-{name}" name="{name}" required', html), name


def test_the_page_loads_nothing_from_outside_and_ships_with_the_package() -> None:
    files = sorted(p for p in STATIC.iterdir() if p.is_file())
    assert {p.suffix for p in files} == {".html", ".js", ".css"}
    for path in files:
        text = path.read_text(encoding="utf-8")
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"')]*", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, (path.name, urls)
        assert "@import" not in text and "@font-face" not in text, path.name
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    assert set(re.findall(r'(?:src|href)="(/lora/static/[^"]+)"', html)) == {
        f"/lora/static/{p.name}" for p in files if p.suffix != ".html"}
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-data"]["devserver_lora"]
    for path in files:
        rel = path.relative_to(ROOT / "devserver_lora").as_posix()
        assert any(fnmatch.fnmatch(rel, g) for g in globs), f"{rel} is not package data ({globs})"


def test_the_loss_chart_draws_what_it_is_given() -> None:
    """chart.js alone in the real browser: the path has one vertex per finite loss and ends at the last step."""
    with chromium(600, 400) as driver:
        driver.get("about:blank")
        source = (STATIC / "chart.js").read_text(encoding="utf-8")
        result = driver.execute_script(source + """
            const svg = document.createElementNS(SVG_NS, "svg"); svg.style.width = "600px";
            document.body.appendChild(svg);
            const pts = [{step: 1, loss: 2.5}, {step: 2, loss: NaN}, {step: 3, loss: 1.0}, {step: 4, loss: 0.25}];
            const n = drawLossChart(svg, pts, 8);
            const path = svg.querySelector("path.chart-line");
            const dot = svg.querySelector("circle");
            const empty = document.createElementNS(SVG_NS, "svg");
            return [n, path.getAttribute("d"), Number(dot.getAttribute("cx")), drawLossChart(empty, [], 10),
                    empty.querySelector("path") === null, formatLoss(0.0123456), formatLoss(2.27138)];""")
    n, d, cx, empty_n, no_path, small, big = result
    assert n == 3 and d.count("L") == 2 and d.startswith("M")
    ys = [float(v.split()[1]) for v in re.split(r"[ML]", d)[1:]]
    assert ys[0] < ys[1] < ys[2]  # lower loss is drawn lower (SVG y grows downwards)
    assert 56 + (4 / 8) * 532 - 1 < cx < 56 + (4 / 8) * 532 + 1  # x runs to the planned total, not the last step
    assert empty_n == 0 and no_path and small == "0.0123" and big == "2.271"


# --- the page on the real server ------------------------------------------------------------------------------------

def _set(driver: Any, element_id: str, value: object) -> None:
    field = by_id(driver, element_id)
    field.clear()
    field.send_keys(str(value))


def _choose(driver: Any, element_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(by_id(driver, element_id)).select_by_value(value)


def _visible(driver: Any, element_id: str) -> bool:
    return bool(by_id(driver, element_id).is_displayed())


def _fill_project(driver: Any, name: str, steps: int = 12) -> None:
    _set(driver, "output-name", name)
    _set(driver, "trigger", "mgsq")
    css(driver, "input[name=preset][value=quick_test]")[0].click()
    for key, value in {"resolution": 256, "max_train_steps": steps, "learning_rate": 0.002, "network_dim": 8,
                       "network_alpha": 4}.items():
        _set(driver, f"hyper-{key}", value)
    _choose(driver, "backend", "native")
    _choose(driver, "gpu", "cpu")


def _upload(driver: Any, name: str, zip_path: Path, images: int) -> None:
    _set(driver, "dataset-name", name)
    by_id(driver, "dataset-files").send_keys(str(zip_path))
    by_id(driver, "upload-button").click()
    wait_until(driver, lambda d: len(css(d, "#dataset-images > li")) == images, 120, "the checked images")


def _fill_card(driver: Any) -> None:
    for field in CARD_IDS:
        if field == "consent":
            _choose(driver, "card-consent", PLANTED_CARD["consent"])
        else:
            _set(driver, f"card-{field}", PLANTED_CARD[field])
    by_id(driver, "card-save").click()
    wait_until(driver, lambda d: text_of(d, "card-status") == "Card saved.", 30, "the saved card")


def _progress(driver: Any) -> tuple[float, float]:
    return tuple(driver.execute_script(  # type: ignore[return-value]
        "const p = document.getElementById('job-progress'); return [p.value, p.max]"))


@pytest.mark.slow
def test_a_whole_job_from_the_page(tmp_path: Path) -> None:
    shots = tmp_path / "shots"
    models = tiny_models_dir(tmp_path / "models")
    upload = planted_zip(tmp_path / "upload" / "squares.zip", n=4)
    with studio_server(tmp_path / "home", models_dir=models) as server, \
            chromium(origin=server.url) as driver:
        driver.get(server.url + "/lora")
        sign_in(driver, "alice")
        _fill_project(driver, "alice_squares")
        _upload(driver, "squares", upload, images=5)
        # The planted broken image is flagged as a blocking problem of its own; the others load as thumbnails.
        bad = css(driver, "#dataset-images > li.bad")
        assert [li.get_attribute("data-file") for li in bad] == [BAD_IMAGE], [li.text for li in bad]
        assert "Error" in bad[0].text
        # The upload sent the chosen 256 px, so the 256 px images are not called small (as they are for 1024 px).
        assert "256 px" in text_of(driver, "dataset-resolution"), text_of(driver, "dataset-resolution")
        assert "small for training" not in text_of(driver, "dataset-images"), text_of(driver, "dataset-images")
        loaded = ("return [...document.querySelectorAll(arguments[0])]"
                  ".filter(i => i.complete && i.naturalWidth > 0).length")
        wait_until(driver, lambda d: d.execute_script(loaded, "#dataset-images > li:not(.bad) img") == 4, 30,
                   "the four thumbnails")
        shot(driver, shots, "01-dataset-checked")
        _fill_card(driver)
        # The plan and its command; the copy button copies exactly what the API says the terminal runs.
        wait_until(driver, lambda d: "-m devserver_lora.train" in text_of(d, "command"), 60, "the command")
        assert css(driver, "#plan-memory > li"), "the plan shows its memory explanation"
        body = driver.execute_script("return planBody()")
        assert body["overrides"]["max_train_steps"] == 12 and body["dataset"] == "squares"
        expected = httpx.post(server.url + "/api/lora/plans", json=body, headers={"X-Studio-User": "alice"},
                              timeout=60).json()["command"]
        wait_until(driver, lambda d: text_of(d, "command") == expected, 30, "the command for these values")
        by_id(driver, "copy-command").click()
        wait_until(driver, lambda d: text_of(d, "copy-status") == "Copied.", 10, "the copy")
        copied = driver.execute_async_script(
            "const done = arguments[0]; navigator.clipboard.readText().then(done, e => done('ERR ' + e))")
        assert copied == expected
        shot(driver, shots, "02-plan-and-command")
        # Create the job, start it, and watch the bar and the chart move to the end.
        by_id(driver, "create-job").click()
        wait_until(driver, lambda d: _visible(d, "job-view"), 30, "the job page")
        job_id = driver.execute_script("return S.job.id")
        assert not by_id(driver, "job-run").get_attribute("disabled")
        shot(driver, shots, "03-job-created")
        by_id(driver, "job-run").click()
        seen: list[tuple[float, float, int]] = []
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            value, top = _progress(driver)
            points = int(by_id(driver, "loss-chart").get_attribute("data-points") or 0)
            if not seen or seen[-1] != (value, top, points):
                seen.append((value, top, points))
            if top and top / 2 <= value < top and not (shots / "04-job-running.png").exists():
                shot(driver, shots, "04-job-running")  # half way: the bar and the chart part-drawn
            state = driver.execute_script("return S.job && S.job.state")
            if state in ("done", "failed", "cancelled"):
                break
            time.sleep(0.3)
        assert state == "done", (state, text_of(driver, "job-diagnosis"), server.log_text())
        wait_until(driver, lambda d: _progress(d)[0] == _progress(d)[1] == 12, 30, "a full progress bar")
        middle = [s for s in seen if 0 < s[0] < s[1]]
        assert middle, f"the bar never showed a step between start and end: {seen}"
        assert [s[0] for s in seen] == sorted(s[0] for s in seen), seen  # it only moves forward
        whole_curve = ("const c = document.getElementById('loss-chart'), p = c.querySelector('path.chart-line');"
                       "return [Number(c.dataset.points || 0), p ? p.dataset.lastStep : null]")
        wait_until(driver, lambda d: (lambda v: v[0] >= 12 and v[1] == "12")(d.execute_script(whole_curve)), 30,
                   "the whole loss curve")
        # The chart grew while training, not only at the end: some look saw it part-drawn (the bar and the chart
        # update from the same events but not in one paint, so they are not compared with each other).
        assert any(0 < s[2] < 12 for s in seen), seen
        assert "Step 12 of 12" in text_of(driver, "job-progress-text") or "12 of 12" in text_of(
            driver, "job-progress-text")
        samples = len(css(driver, "#job-samples img"))
        assert samples > 0, "no sample images on the job page"
        wait_until(driver, lambda d: d.execute_script(loaded, "#job-samples img") == samples, 30, "the samples")
        shot(driver, shots, "05-job-done")
        # Install: the LoRA lands in the loras folder with an output config, which the page shows.
        by_id(driver, "job-install").click()
        wait_until(driver, lambda d: _visible(d, "job-install-result"), 120, "the install result")
        config_path = Path(driver.execute_script("return document.querySelector('#install-facts dd:last-of-type')"
                                                 ".textContent"))
        assert config_path.is_file() and config_path.is_relative_to(server.schemas)
        config = json.loads(config_path.read_text(encoding="utf-8"))
        assert json.loads(text_of(driver, "install-config")) == config
        lora = config["parameters"]["loras"][0]["name"]
        assert (server.loras / lora).is_file()
        shot(driver, shots, "06-installed")
        report = css(driver, "#job-report")
        if report:  # the report opens in a new tab of the same browser (the sign-in cookie), its images included
            page = driver.current_window_handle
            report[0].click()
            wait_until(driver, lambda d: len(d.window_handles) == 2, 30, "the report's tab")
            driver.switch_to.window([h for h in driver.window_handles if h != page][0])
            wait_until(driver, lambda d: d.execute_script("return document.readyState") == "complete", 30, "report")
            images = driver.execute_script("return [...document.images].map(i => i.complete && i.naturalWidth > 0)")
            assert "alice_squares" in driver.page_source and images and all(images), (driver.current_url, images)
            shot(driver, shots, "06b-report")
            driver.close()
            driver.switch_to.window(page)
        by_id(driver, "job-back").click()
        row = wait_until(driver, lambda d: css(d, f'#jobs-body tr[data-job="{job_id}"]'), 30, "the job's row")[0]
        assert row.get_attribute("data-state") == "done" and "alice" in row.text
        shot(driver, shots, "07-jobs-table")
        # Another user, in a browser of their own, does not see alice's job (nor can open it by id).
        with chromium(origin=server.url) as other:
            other.get(server.url + "/lora")
            sign_in(other, "bob")
            wait_until(other, lambda d: d.execute_script("return Array.isArray(S.jobs)"), 30, "bob's job list")
            by_id(other, "jobs-refresh").click()
            time.sleep(1)
            assert not css(other, f'#jobs-body tr[data-job="{job_id}"]') and _visible(other, "jobs-empty")
            answer = httpx.get(f"{server.url}/api/lora/jobs/{job_id}", headers={"X-Studio-User": "bob"}, timeout=30)
            assert answer.status_code in (403, 404)
            shot(other, shots, "08-other-user")
    publish_shots(shots)


@pytest.mark.slow
def test_cancel_then_resume_from_the_page(tmp_path: Path) -> None:
    """Cancel stops a running job and keeps what it learned; Resume continues it from that step to the end (the
    step count goes on, the chart grows on), all by the page's buttons."""
    shots = tmp_path / "shots"
    steps = 60  # a tiny-model step takes ~0.1 s here: enough of them that the cancel lands mid-run
    models = tiny_models_dir(tmp_path / "models")
    upload = planted_zip(tmp_path / "upload" / "squares.zip", n=4, bad=False)
    with studio_server(tmp_path / "home", models_dir=models) as server, chromium(origin=server.url) as driver:
        driver.get(server.url + "/lora")
        sign_in(driver, "carl")
        _fill_project(driver, "carl_squares", steps=steps)
        _upload(driver, "squares", upload, images=4)
        _fill_card(driver)
        wait_until(driver, lambda d: "-m devserver_lora.train" in text_of(d, "command"), 60, "the command")
        by_id(driver, "create-job").click()
        wait_until(driver, lambda d: _visible(d, "job-view"), 30, "the job page")
        assert by_id(driver, "job-cancel").get_attribute("disabled") and by_id(driver, "job-resume").get_attribute(
            "disabled"), "nothing to cancel or resume before the start"
        by_id(driver, "job-run").click()
        wait_until(driver, lambda d: 3 <= _progress(d)[0] < steps // 2, 400, "a few steps trained")
        by_id(driver, "job-cancel").click()
        wait_until(driver, lambda d: d.execute_script("return S.job && S.job.state") == "cancelled", 120,
                   "the cancelled job")
        stopped = int(_progress(driver)[0])
        assert "left" not in text_of(driver, "job-progress-text"), text_of(driver, "job-progress-text")  # no ETA
        assert 3 <= stopped < steps and not by_id(driver, "job-resume").get_attribute("disabled")
        assert by_id(driver, "job-run").get_attribute("disabled") and by_id(driver, "job-cancel").get_attribute(
            "disabled")
        shot(driver, shots, "13-job-cancelled")
        by_id(driver, "job-resume").click()
        wait_until(driver, lambda d: d.execute_script("return S.job && S.job.state") != "cancelled", 60,
                   "the resumed job")
        seen: list[float] = []
        deadline = time.monotonic() + 900
        state = None
        while time.monotonic() < deadline:
            seen.append(_progress(driver)[0])
            state = driver.execute_script("return S.job && S.job.state")
            if state in ("done", "failed", "cancelled"):
                break
            time.sleep(0.3)
        # (Once, the first cancel's request, still waiting out its grace period, killed the resumed run.)
        assert state == "done", (state, text_of(driver, "job-diagnosis"), server.log_text())
        wait_until(driver, lambda d: _progress(d)[0] == _progress(d)[1] == steps, 30, "a full progress bar")
        # The resumed run went on from where it stopped: the bar never fell back to the start.
        assert min(seen) >= stopped - 1, (stopped, seen)
        # The job's own record (the store the terminal reads too): two runs, the second going on from the first.
        from devserver_lora.train.jobs import JobStore

        job = JobStore(server.home / "jobs").get(driver.execute_script("return S.job.id"))
        states = [e["state"] for e in job.events() if e["type"] == "state"]
        assert states.count("running") == 2 and "cancelled" in states and states[-1] == "done", states
        cut = max(i for i, e in enumerate(job.events()) if e["type"] == "state" and e["state"] == "cancelled")
        before = [e["step"] for e in job.events()[:cut] if e["type"] == "progress"]
        after = [e["step"] for e in job.events()[cut:] if e["type"] == "progress"]
        assert before and after and after[0] >= max(before) - 1 and after == sorted(after) and after[-1] == steps, (
            before, after)
        shot(driver, shots, "14-job-resumed-done")
    publish_shots(shots)


def _tab_to(driver: Any, element_id: str, limit: int = 120) -> list[str]:
    """Press Tab until `element_id` has the focus; returns the ids passed. Fails when it is never reached."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    passed = []
    for _ in range(limit):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        active, name = driver.execute_script("return [document.activeElement.id || document.activeElement.tagName, "
                                             "document.activeElement.name || '']")
        passed.append(active)
        if element_id in (active, name):
            return passed
    raise AssertionError(f"Tab never reached #{element_id}: {passed}")


def _focus_ring(driver: Any) -> tuple[str, float]:
    style = driver.execute_script(
        "const s = getComputedStyle(document.activeElement); return [s.outlineStyle, parseFloat(s.outlineWidth)]")
    return style[0], style[1]


def _keys(driver: Any, *keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(*keys).perform()


def test_keyboard_phone_width_and_german(tmp_path: Path) -> None:
    from selenium.webdriver.common.keys import Keys

    shots = tmp_path / "shots"
    upload = planted_zip(tmp_path / "upload" / "set.zip", n=3, size=128, bad=False)
    with studio_server(tmp_path / "home", teachers=("tina",)) as server, chromium(origin=server.url) as driver:
        driver.get(server.url + "/lora")
        # Keyboard only: the name dialog has the focus; typing and Enter sign in.
        wait_until(driver, lambda d: d.execute_script("return document.activeElement.id") == "user-name", 30,
                   "the focused name field")
        _keys(driver, "carla", Keys.ENTER)
        wait_until(driver, lambda d: "carla" in text_of(d, "user-label"), 30, "the signed-in name")
        driver.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
        _tab_to(driver, "lang-toggle")
        assert _focus_ring(driver)[0] != "none" and _focus_ring(driver)[1] >= 2
        _keys(driver, Keys.ENTER)
        wait_until(driver, lambda d: d.execute_script("return document.documentElement.lang") == "de", 10, "German")
        _keys(driver, Keys.SPACE)
        wait_until(driver, lambda d: d.execute_script("return document.documentElement.lang") == "en", 10, "English")
        # Every main control is reached by Tab in reading order, each with a visible focus ring.
        for element_id in ("output-name", "trigger", "family", "backend", "gpu"):
            _tab_to(driver, element_id)
            assert _focus_ring(driver)[0] != "none", element_id
            if element_id == "output-name":
                _keys(driver, "kb_project")
        _tab_to(driver, "preset")  # the radio group is one stop; arrows choose within it
        before = driver.execute_script("return document.activeElement.value")
        _keys(driver, Keys.ARROW_DOWN)
        after = driver.execute_script("return document.activeElement.value")
        assert before != after and driver.execute_script("return S.preset.id") == after
        for _ in range(6):  # on to the quick test, which plans on this server's CPU
            if after == "quick_test":
                break
            _keys(driver, Keys.ARROW_DOWN)
            after = driver.execute_script("return document.activeElement.value")
        assert driver.execute_script("return S.preset.id") == "quick_test"
        _tab_to(driver, "hyper-reset")
        _tab_to(driver, "dataset-name")
        _keys(driver, "kbset")
        # The file chooser's button is the page's (the browser's own would speak the browser's language), and
        # the real input under it is a Tab stop of its own, with the focus ring on the button.
        assert text_of(driver, "dataset-files-chosen") == "No file chosen"
        _tab_to(driver, "dataset-files")
        ring = driver.execute_script("const s = getComputedStyle(document.querySelector('.file-button'));"
                                     "return [s.outlineStyle, parseFloat(s.outlineWidth)]")
        assert ring[0] != "none" and ring[1] >= 2, ring
        by_id(driver, "dataset-files").send_keys(str(upload))  # the chooser's dialog itself is the system's
        assert text_of(driver, "dataset-files-chosen") == "1 file(s): set.zip"
        _tab_to(driver, "upload-button")
        _keys(driver, Keys.ENTER)
        wait_until(driver, lambda d: len(css(d, "#dataset-images > li")) == 3, 120, "the checked images")
        _tab_to(driver, "card-title")
        for field in CARD_TAB_ORDER:  # typed field after field, moving on with Tab
            assert driver.execute_script("return document.activeElement.id") == f"card-{field}"
            if field == "consent":
                _keys(driver, Keys.ARROW_DOWN)  # the first real choice: "yes"
            else:
                _keys(driver, str(PLANTED_CARD[field]))
            _keys(driver, Keys.TAB)
        assert by_id(driver, "card-consent").get_attribute("value") == "yes"
        _tab_to(driver, "card-save")
        _keys(driver, Keys.ENTER)
        wait_until(driver, lambda d: text_of(d, "card-status") == "Card saved.", 30, "the saved card")
        wait_until(driver, lambda d: "-m devserver_lora.train" in text_of(d, "command"), 60,
                   lambda: f"the command (plan: {text_of(driver, 'plan-status')})")
        _tab_to(driver, "copy-command")
        _tab_to(driver, "create-job")
        _keys(driver, Keys.ENTER)
        wait_until(driver, lambda d: d.execute_script("return document.activeElement.id") == "job-title", 30,
                   "the job page with the focus on its title")
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(driver).key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()  # back is before
        assert driver.execute_script("return document.activeElement.id") == "job-back"
        assert _focus_ring(driver)[0] != "none"
        _keys(driver, Keys.ENTER)
        wait_until(driver, lambda d: "open-job" in (d.execute_script("return document.activeElement.className")),
                   30, "the focus back on the job's row")
        shot(driver, shots, "09-keyboard-after")
        # German: labels, buttons, headers and the lang attribute change.
        by_id(driver, "lang-toggle").click()
        assert driver.execute_script("return document.documentElement.lang") == "de"
        assert text_of(driver, "h-project") == "1. Projekt"
        assert driver.execute_script("return document.querySelector('label[for=output-name]').textContent") \
            == "Projektname"
        assert text_of(driver, "create-job") == "Job anlegen" and text_of(driver, "lang-toggle") == "English"
        assert text_of(driver, "dataset-files-label").startswith("Eine ZIP-Datei")
        assert driver.execute_script("return document.querySelector('.file-button').textContent") == "Dateien auswählen…"
        assert text_of(driver, "dataset-files-chosen") in ("Keine Datei ausgewählt", "1 Datei(en): set.zip")
        assert "Fortschritt" in by_id(driver, "jobs-table").text
        assert "Vorei" in text_of(driver, "preset-list") or "Schnelltest" in text_of(driver, "preset-list")
        shot(driver, shots, "10-german")
        # Phone width: 390 px wide, no horizontal scroll on the studio page nor on a job's page.
        set_viewport(driver, 390, 844)
        driver.refresh()
        wait_until(driver, lambda d: css(d, "#jobs-body tr"), 30, "the jobs table at 390 px")
        wide = "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        scroll, client = driver.execute_script(wide)
        assert client == 390 and scroll <= client, (scroll, client)
        shot(driver, shots, "11-phone-studio")
        css(driver, "#jobs-body button.open-job")[0].click()
        wait_until(driver, lambda d: _visible(d, "job-view"), 30, "the job page at 390 px")
        scroll, client = driver.execute_script(wide)
        assert scroll <= client, (scroll, client)
        shot(driver, shots, "12-phone-job")
        job_id = driver.execute_script("return S.job.id")
        # A teacher sees everyone's jobs (with their owner), and can narrow the list to their own.
        with chromium(origin=server.url) as teacher:
            teacher.get(server.url + "/lora")
            sign_in(teacher, "tina")
            row = wait_until(teacher, lambda d: css(d, f'#jobs-body tr[data-job="{job_id}"]'), 30, "carla's job")[0]
            assert "carla" in row.text and "(teacher)" in text_of(teacher, "user-label")
            assert _visible(teacher, "all-jobs") and by_id(teacher, "all-jobs").is_selected()
            by_id(teacher, "all-jobs").click()
            wait_until(teacher, lambda d: not css(d, f'#jobs-body tr[data-job="{job_id}"]'), 30, "only her own jobs")
    publish_shots(shots)
