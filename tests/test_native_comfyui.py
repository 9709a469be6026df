"""Round trip through a REAL ComfyUI: train a LoRA with the native backend on the very checkpoint the test
server loads (SAI single file, through our offline loader), install it, render with and without it.
Marker: comfyui (setup once: `.venv/bin/python tests/comfyui_setup.py`)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from comfy_double import sd3_workflow
from comfyui_harness import ComfyServer
from comfyui_setup import comfy_main, install_dir
from native_training import TRIGGER_PROMPT, train_planted_lora
from PIL import Image

from devserver_lora.comfy import ComfyClient, Timeouts
from devserver_lora.lora.fit import predict_not_loaded
from devserver_lora.lora.keys import ArchSpec

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]
TIMEOUTS = Timeouts(overall=180, idle=90, connect=5, http=30)
# Mean absolute difference (0-255 scale) between the renders with and without the LoRA. Rendering the same seed
# twice gives exactly 0 (ComfyUI on CPU is deterministic); a LoRA that loads and does something moves far more.
MIN_PIXEL_DIFFERENCE = 1.0


def _graph(checkpoint: str, *, lora: str | None, seed: int, prompt: str) -> dict:
    wf = sd3_workflow(seed=seed, steps=4, lora=lora)  # the recorded graph's own step count
    wf["1"]["inputs"]["ckpt_name"] = checkpoint
    wf["4"]["inputs"]["text"] = prompt
    wf["9"]["inputs"]["filename_prefix"] = "native_roundtrip"
    return wf


async def _render(server: ComfyServer, wf: dict) -> np.ndarray:
    async with ComfyClient(server.url, timeouts=TIMEOUTS) as client:
        result = await client.run(wf, output_node="9")
    return np.asarray(Image.open(io.BytesIO(result.images[0].data)).convert("RGB"), dtype=np.float32)


async def test_native_lora_renders_in_real_comfyui_with_zero_key_warnings(
    comfyui_server: ComfyServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ComfyUI's own tokenizer files: the conditioning we train on is the one ComfyUI computes at render time.
    monkeypatch.setenv("COMFYUI_DIR", str(comfy_main(install_dir()).parent))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checkpoint = (comfyui_server.base_dir / "models" / "checkpoints" / comfyui_server.checkpoint_name).resolve()
    lora = train_planted_lora(tmp_path, checkpoint)
    assert predict_not_loaded(lora, ArchSpec.sd3(2, text_encoders=("clip_l",))) == []

    name = comfyui_server.install_lora(lora, "native_magenta.safetensors")
    prompt = TRIGGER_PROMPT
    mark = comfyui_server.log_mark()
    with_lora = await _render(comfyui_server, _graph(comfyui_server.checkpoint_name, lora=name, seed=11, prompt=prompt))
    log = comfyui_server.console_log(since=mark)
    assert "lora key not loaded" not in log and "NOT LOADED" not in log, log[-3000:]
    without = await _render(comfyui_server, _graph(comfyui_server.checkpoint_name, lora=None, seed=11, prompt=prompt))
    again = await _render(comfyui_server, _graph(comfyui_server.checkpoint_name, lora=None, seed=11, prompt=prompt + " "))
    assert with_lora.shape == without.shape == (64, 64, 3)
    # Control: the same render re-executed (a trailing space defeats ComfyUI's cache, not the tokens) is the same image.
    noise_floor = float(np.abs(again - without).mean())
    diff = float(np.abs(with_lora - without).mean())
    print(f"mean abs pixel difference: with/without LoRA {diff:.2f}, control {noise_floor:.2f}")
    assert noise_floor < MIN_PIXEL_DIFFERENCE / 4, noise_floor
    assert diff > MIN_PIXEL_DIFFERENCE, diff
