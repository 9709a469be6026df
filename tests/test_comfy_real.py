"""Integration tests against a REAL ComfyUI v0.3.75 (CPU, tiny random SD3 checkpoint). Marker: comfyui.

Setup once: `.venv/bin/python tests/comfyui_setup.py` (skips without it locally; fails under CI=true).
"""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from comfyui_harness import ComfyServer
from PIL import Image

from devserver_lora.comfy import ComfyClient, ComfySync, Timeouts
from devserver_lora.comfy import events as ev
from devserver_lora.config.chunks import sd35_workflow
from devserver_lora.errors import ComfyInterrupted, ComfyValidationError, LoraFileError
from devserver_lora.graph.inject import inject_loras
from devserver_lora.lora.fit import predict_not_loaded
from devserver_lora.lora.spec import LoraSpec

pytestmark = pytest.mark.comfyui

TIMEOUTS = Timeouts(overall=120, idle=60, connect=5, http=30)
TINY_ARCH = "sd3:2:te=clip_l"  # devserver_lora.lora.fit spec of the tiny checkpoint (depth 2, CLIP-L only)


def tiny_sd35_graph(checkpoint: str, *, seed: int = 1, steps: int = 3, prompt: str = "a yoruba adire cloth") -> dict:
    """DevServer's SD3.5 Large chunk graph (as `config.chunks` writes it), scaled down: 64x64, few steps, the tiny checkpoint.

    The tiny checkpoint carries only CLIP-L, so the two text encoders read the checkpoint's CLIP (output 1)
    instead of the DualCLIPLoader (clip_g + t5xxl files we do not have); the loaders stay in the graph,
    dangling, as TripleCLIPLoader already does in the real chunk. The LoRA injector must follow the real edges.
    """
    wf = sd35_workflow("dual")
    wf["5"]["inputs"]["ckpt_name"] = checkpoint
    wf["1"]["inputs"]["clip"] = ["5", 1]
    wf["6"]["inputs"]["clip"] = ["5", 1]
    wf["3"]["inputs"].update(width=64, height=64)
    wf["8"]["inputs"].update(seed=seed, steps=steps, cfg=4.5, scheduler="sgm_uniform")
    wf["10"]["inputs"]["value"] = prompt
    wf["11"]["inputs"]["value"] = "blurry"
    wf["4"]["inputs"]["filename_prefix"] = "devserver_lora_test"
    return wf


def with_lora(wf: dict, name: str, strength: float = 1.0) -> dict:
    return inject_loras(wf, [LoraSpec(name=name, strength_model=strength, strength_clip=strength)])


async def test_render_with_kohya_lora(comfyui_server: ComfyServer) -> None:
    wf = with_lora(tiny_sd35_graph(comfyui_server.checkpoint_name, seed=5), "tiny_sd3_kohya.safetensors")
    mark = comfyui_server.log_mark()
    events: list[ev.Event] = []
    async with ComfyClient(comfyui_server.url, timeouts=TIMEOUTS) as client:
        result = await client.run(
            wf,
            prompt_id="real-render-1",
            on_event=events.append,
            output_node="4",
            loras_dir=comfyui_server.loras_dir,
            arch=TINY_ARCH,
        )
    assert result.prompt_id == "real-render-1" and result.used_websocket
    assert len(result.images) == 1
    img = Image.open(io.BytesIO(result.images[0].data))
    assert img.size == (64, 64)
    # ComfyUI embeds the graph it ran: this is the image of OUR prompt (seed 5, our LoRA node).
    ran = json.loads(img.text["prompt"])
    assert ran["8"]["inputs"]["seed"] == 5
    assert any(n.get("class_type") == "LoraLoader" for n in ran.values())
    progress = [e for e in events if isinstance(e, ev.Progress)]
    assert [(p.value, p.max) for p in progress] == [(1, 3), (2, 3), (3, 3)]
    assert isinstance(events[-1], ev.Done)
    log = comfyui_server.console_log(since=mark)
    assert "lora key not loaded" not in log and "NOT LOADED" not in log


async def test_bad_keys_lora_does_log_the_warning(comfyui_server: ComfyServer) -> None:
    """Proves the console check above can fail: ComfyUI logs (and only logs) keys it cannot place."""
    wf = with_lora(tiny_sd35_graph(comfyui_server.checkpoint_name, seed=6, steps=1), "tiny_sd3_bad_keys.safetensors")
    mark = comfyui_server.log_mark()
    async with ComfyClient(comfyui_server.url, timeouts=TIMEOUTS) as client:
        result = await client.run(wf)
    assert result.images  # the API reports success...
    await asyncio.sleep(0.2)
    log = comfyui_server.console_log(since=mark)
    assert "lora key not loaded" in log  # ...only the console knows
    # Our prediction is exactly those lines, in ComfyUI's order...
    logged = [ln.strip() for ln in log.splitlines() if "lora key not loaded" in ln or "NOT LOADED" in ln]
    assert logged == predict_not_loaded(comfyui_server.loras_dir / "tiny_sd3_bad_keys.safetensors", TINY_ARCH)
    # ...and the preflight refuses the LoRA before submission, saying how many keys ComfyUI would skip.
    with pytest.raises(LoraFileError) as info:
        async with ComfyClient(comfyui_server.url, timeouts=TIMEOUTS) as client:
            await client.run(wf, loras_dir=comfyui_server.loras_dir, arch=TINY_ARCH)
    assert f"skip {len(logged)} of its keys" in str(info.value)


async def test_missing_lora_is_a_typed_validation_error(comfyui_server: ComfyServer) -> None:
    wf = with_lora(tiny_sd35_graph(comfyui_server.checkpoint_name), "yoruba_not_installed.safetensors")
    async with ComfyClient(comfyui_server.url, timeouts=TIMEOUTS) as client:
        with pytest.raises(ComfyValidationError) as server_side:
            await client.run(wf, check_loras=False)
        with pytest.raises(ComfyValidationError) as local:
            await client.run(wf)
    for info in (server_side, local):
        text = str(info.value)
        assert "LoRA 'yoruba_not_installed.safetensors' is not installed in ComfyUI; installed:" in text
        assert "tiny_sd3_kohya.safetensors" in text
    assert server_side.value.error["type"] == "prompt_outputs_failed_validation"


async def test_interrupt(comfyui_server: ComfyServer) -> None:
    wf = tiny_sd35_graph(comfyui_server.checkpoint_name, seed=7, steps=400)
    async with ComfyClient(comfyui_server.url, timeouts=TIMEOUTS) as client:
        pending: list[asyncio.Task] = []

        def on_event(e: ev.Event) -> None:
            if isinstance(e, ev.Progress) and e.value == 2 and not pending:
                pending.append(asyncio.ensure_future(client.interrupt(e.prompt_id)))

        with pytest.raises(ComfyInterrupted) as info:
            await client.run(wf, prompt_id="real-interrupt", on_event=on_event)
        await asyncio.gather(*pending)
        entry = await client.history("real-interrupt")
    assert info.value.prompt_id == "real-interrupt"
    assert entry is not None and entry.status_str == "error"


def test_sync_facade_renders(comfyui_server: ComfyServer) -> None:
    wf = with_lora(tiny_sd35_graph(comfyui_server.checkpoint_name, seed=8, steps=1), "tiny_sd3_diffusers.safetensors")
    result = ComfySync(comfyui_server.url, timeouts=TIMEOUTS).run(wf)
    assert result.images and result.images[0].data[:4] == b"\x89PNG"


@pytest.mark.slow
async def test_killed_server_ends_in_unreachable_not_a_hang(tmp_path) -> None:
    """A second, private real server is killed mid-render: the client reports it within its bounds."""
    import time

    from comfyui_harness import require_install, start_comfyui, stop_comfyui

    from devserver_lora.errors import ComfyUnreachable

    server = start_comfyui(tmp_path / "base", install=require_install())
    try:
        wf = tiny_sd35_graph(server.checkpoint_name, seed=9, steps=5000)
        quick = Timeouts(overall=60, idle=30, connect=5, http=10, unreachable_grace=2.0)
        t0 = time.monotonic()
        async with ComfyClient(server.url, timeouts=quick) as client:

            def on_event(e: ev.Event) -> None:
                if isinstance(e, ev.Progress) and e.value == 3:
                    server.process.kill()

            with pytest.raises(ComfyUnreachable) as info:
                await client.run(wf, on_event=on_event)
        assert time.monotonic() - t0 < 45
        assert "stopped answering" in str(info.value) and info.value.hint
    finally:
        stop_comfyui(server)


class _CuttingProxy:
    """A loopback TCP proxy in front of the real server that can cut the websocket connections it carries."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.ws_writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        first = await reader.read(65536)
        if first.startswith(b"GET /ws"):
            self.ws_writers.append(writer)
        up_writer.write(first)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except asyncio.CancelledError:  # the test's loop ends while a keep-alive connection idles
            up_writer.close()
            writer.close()

    def cut_websockets(self) -> None:
        for w in self.ws_writers:
            w.transport.abort()

    async def close(self) -> None:
        assert self.server is not None
        self.cut_websockets()
        self.server.close()
        await self.server.wait_closed()


async def test_dropped_websocket_falls_back_to_history(comfyui_server: ComfyServer) -> None:
    port = int(comfyui_server.url.rsplit(":", 1)[1])
    proxy = _CuttingProxy(port)
    url = await proxy.start()
    events: list[ev.Event] = []
    try:
        wf = tiny_sd35_graph(comfyui_server.checkpoint_name, seed=10, steps=20)
        async with ComfyClient(url, timeouts=TIMEOUTS) as client:

            def on_event(e: ev.Event) -> None:
                events.append(e)
                if isinstance(e, ev.Progress) and e.value == 2:
                    proxy.cut_websockets()

            result = await client.run(wf, prompt_id="real-dropped-ws", on_event=on_event)
    finally:
        await proxy.close()
    assert not result.used_websocket
    assert any(isinstance(e, ev.FallbackToPolling) for e in result.events)
    ran = json.loads(Image.open(io.BytesIO(result.images[0].data)).text["prompt"])
    assert ran["8"]["inputs"]["seed"] == 10
