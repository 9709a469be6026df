"""Shared test paths. CI clones the repo with `shared/` beside it, so recorded data lives at ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures"
COMFY_FIXTURES = FIXTURES / "comfyui"
KOHYA_FIXTURES = FIXTURES / "kohya"
SAMPLES = SHARED / "devserver_samples"
SCHEMAS = ROOT / "schemas"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"recorded fixtures not found at {FIXTURES}: clone the project with shared/ beside it")
    return FIXTURES


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    if not SAMPLES.is_dir():
        pytest.fail(f"DevServer samples not found at {SAMPLES}: clone the project with shared/ beside it")
    return SAMPLES

from comfyui_harness import comfyui_server  # noqa: F401,E402  (re-export: the real-ComfyUI session fixture)
