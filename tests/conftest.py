"""Shared test paths and the CI skip policy.

Recorded ComfyUI and Kohya behaviour (facts of those tools) lives in `tests/fixtures/`, so a clone runs its whole
suite anywhere. DevServer's own files may not be redistributed: tests that need them read `../shared/
devserver_samples/` or a DevServer checkout named by `DEVSERVER_DIR`, and skip with a one-line reason when neither
is there. Under `CI=true` a skip for any other reason fails the run: CI must not lose a test silently.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
COMFY_FIXTURES = FIXTURES / "comfyui"
KOHYA_FIXTURES = FIXTURES / "kohya"
SCHEMAS = ROOT / "schemas"
SHARED = ROOT.parent / "shared"
SAMPLES = SHARED / "devserver_samples"
# Where each sample lives in a DevServer checkout (DEVSERVER_DIR).
SAMPLE_PATHS = {
    "sd35_large.json": "devserver/schemas/configs/output/sd35_large.json",
    "output_image_sd35_large.json": "devserver/schemas/chunks/output_image_sd35_large.json",
    "output_image.json": "devserver/schemas/chunks/output_image.json",
    "single_text_media_generation.json": "devserver/schemas/pipelines/single_text_media_generation.json",
    "cooked_negatives.json": "devserver/schemas/configs/interception/cooked_negatives.json",
}
NEEDS_DEVSERVER = "needs DevServer's own files (../shared/devserver_samples or DEVSERVER_DIR=<checkout>)"
NEEDS_SD_SCRIPTS = "needs the sd-scripts source tree"
# The only skip reasons CI accepts: what a clone may lack by licence or by size.
CI_ALLOWED_SKIPS = (NEEDS_DEVSERVER, NEEDS_SD_SCRIPTS)


def devserver_sample(name: str) -> Path:
    """A real DevServer file by its sample name; skips the test (with the reason) when none is available."""
    candidates = [SAMPLES / name]
    checkout = os.environ.get("DEVSERVER_DIR")
    if checkout and name in SAMPLE_PATHS:
        candidates.insert(0, Path(checkout) / SAMPLE_PATHS[name])
    for path in candidates:
        if path.is_file():
            return path
    pytest.skip(f"{NEEDS_DEVSERVER}: {name}")


# The DevServer commit the contract tests (`pytest -m devserver`) are written against.
DEVSERVER_COMMIT = "08a54d7225731603985098fe1ecd134d0e5b8cbc"


def devserver_checkout() -> Path:
    """The DevServer checkout named by DEVSERVER_DIR (its root, holding devserver/); skips the test when none."""
    checkout = os.environ.get("DEVSERVER_DIR")
    root = Path(checkout) if checkout else None
    if root is None or not (root / "devserver" / "schemas" / "engine" / "backend_router.py").is_file():
        pytest.skip(f"{NEEDS_DEVSERVER}: set DEVSERVER_DIR to a checkout of DevServer at {DEVSERVER_COMMIT[:8]}")
    return root


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _fail_a_ci_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not (in_ci() and report.skipped and not hasattr(report, "wasxfail")):
        return
    reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
    if any(allowed in reason for allowed in CI_ALLOWED_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = f"skipped in CI ({reason}): CI must run every test; install what it needs in .ci/run"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    _fail_a_ci_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> object:
    outcome = yield
    _fail_a_ci_skip(outcome.get_result())


from comfyui_harness import comfyui_server  # noqa: F401,E402  (re-export: the real-ComfyUI session fixture)
