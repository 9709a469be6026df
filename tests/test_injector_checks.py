"""The DevServer injector's own checks: it says once when it cannot run the fit check, and a malformed object_info
is a protocol error, never "LoRAs unknown" (which would silently skip the availability check)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from conftest import COMFY_FIXTURES

from devserver_lora.devserver.injector import LoraInjector
from devserver_lora.errors import ComfyProtocolError

SD3_WORKFLOW = json.loads((COMFY_FIXTURES / "sd3_lora_workflow_api.json").read_text(encoding="utf-8"))
LORA = "tiny_sd3_kohya.safetensors"
# The graph's model, as install_into_devserver learns it from a LoRA config's meta.base_model for the file it loads.
KNOWN = {SD3_WORKFLOW["1"]["inputs"]["ckpt_name"]: "sd3:2:te=clip_l"}


def _without_lora() -> dict:
    wf = json.loads(json.dumps(SD3_WORKFLOW))
    del wf["2"]
    wf["3"]["inputs"]["model"] = ["1", 0]
    wf["4"]["inputs"]["clip"] = ["1", 1]
    wf["5"]["inputs"]["clip"] = ["1", 1]
    return wf


def _fit_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and "fit check" in r.getMessage()]


@pytest.mark.parametrize("missing", ["loras folder", "model"])
def test_injector_warns_exactly_once_when_it_cannot_run_the_fit_check(
    missing: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loras = tmp_path / "loras"
    loras.mkdir()
    shutil.copyfile(COMFY_FIXTURES / "loras" / LORA, loras / LORA)
    injector = (
        LoraInjector(loras_dir=None, known_files=KNOWN) if missing == "loras folder" else LoraInjector(loras_dir=loras)
    )
    with caplog.at_level(logging.WARNING, logger="devserver_lora"):
        for _ in range(3):  # three Stage-4 requests
            out = injector(_without_lora(), [{"name": LORA, "strength": 0.8}])
            assert any(n.get("class_type") == "LoraLoader" for n in out.values())
    warned = _fit_warnings(caplog)
    assert len(warned) == 1, [r.getMessage() for r in caplog.records]
    assert "skipped" in warned[0].getMessage() and "without effect" in warned[0].getMessage()


def test_injector_that_runs_the_fit_check_does_not_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    loras = tmp_path / "loras"
    loras.mkdir()
    shutil.copyfile(COMFY_FIXTURES / "loras" / LORA, loras / LORA)
    with caplog.at_level(logging.WARNING, logger="devserver_lora"):
        LoraInjector(loras_dir=loras, known_files=KNOWN)(_without_lora(), [{"name": LORA}])
    assert _fit_warnings(caplog) == []


@pytest.mark.parametrize(
    "object_info",
    [
        {},
        {"LoraLoader": {}},
        {"LoraLoader": {"input": {"required": {"lora_name": "not a list"}}}},
        {"LoraLoader": {"input": {"required": {"lora_name": [[1, 2]]}}}},
        {"LoraLoader": "garbage"},
        [],
    ],
    ids=["empty", "no-input", "choices-not-a-list", "choices-not-names", "node-not-an-object", "not-a-mapping"],
)
def test_malformed_object_info_is_a_protocol_error(object_info: object) -> None:
    injector = LoraInjector(object_info=object_info)  # type: ignore[arg-type]
    with pytest.raises(ComfyProtocolError) as info:
        injector(_without_lora(), [{"name": LORA}])
    assert info.value.hint
