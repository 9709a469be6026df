"""The async client against the faithful double: results, typed errors, fallbacks, fault injection."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time

import pytest
from comfy_double import ComfyDouble, sd3_workflow
from PIL import Image

from devserver_lora.comfy import events as ev
from devserver_lora.comfy.client import ComfyClient, Timeouts
from devserver_lora.errors import (
    ComfyExecutionError,
    ComfyInterrupted,
    ComfyProtocolError,
    ComfyTimeout,
    ComfyUnreachable,
    ComfyValidationError,
)

FAST = Timeouts(overall=20, idle=10, connect=2, http=5, poll_interval=0.05, poll_interval_max=0.2, unreachable_grace=1.5)


@pytest.fixture
def double():
    with ComfyDouble() as d:
        yield d


def embedded_graph(png: bytes) -> dict:
    """The graph ComfyUI (and the double) embed in a saved PNG: proves which prompt an image belongs to."""
    return json.loads(Image.open(io.BytesIO(png)).text["prompt"])


async def test_run_returns_the_image_of_our_prompt_with_progress(double: ComfyDouble) -> None:
    got: list[ev.Event] = []
    async with ComfyClient(double.url, timeouts=FAST) as client:
        result = await client.run(sd3_workflow(seed=7), prompt_id="my-own-id", on_event=got.append)
    assert result.prompt_id == "my-own-id" and result.used_websocket
    assert len(result.images) == 1
    image = result.images[0]
    assert image.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert embedded_graph(image.data)["7"]["inputs"]["seed"] == 7
    assert image.ref.node == "9" and image.ref.filename == "tiny_sd3_00001_.png"
    steps = [(e.value, e.max) for e in got if isinstance(e, ev.Progress)]
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert isinstance(got[0], ev.Queued) and isinstance(got[-1], ev.Done)
    assert [e.node for e in got if isinstance(e, ev.Executing)] == ["1", "6", "2", "5", "4", "3", "7", "8", "9"]
    # We asked /history for OUR prompt and /view for ITS file, never a directory listing.
    assert ("GET", "/history/my-own-id") in double.requests


async def test_path_prefix_like_swarmui() -> None:
    with ComfyDouble(prefix="/ComfyBackendDirect") as d:
        async with ComfyClient(d.url, timeouts=FAST) as client:
            result = await client.run(sd3_workflow())
        assert result.used_websocket and result.images
        assert all(path.startswith("/ComfyBackendDirect/") for _, path in d.requests)


async def test_concurrent_jobs_each_get_their_own_image(double: ComfyDouble) -> None:
    async def one(seed: int) -> tuple[int, bytes]:
        async with ComfyClient(double.url, timeouts=FAST) as client:
            result = await client.run(sd3_workflow(seed=seed))
        return seed, result.images[0].data

    results = await asyncio.gather(*(one(s) for s in range(8)))
    for seed, png in results:
        assert embedded_graph(png)["7"]["inputs"]["seed"] == seed


async def test_cached_rerun_still_returns_the_image(double: ComfyDouble) -> None:
    async with ComfyClient(double.url, timeouts=FAST) as client:
        first = await client.run(sd3_workflow())
        events: list[ev.Event] = []
        second = await client.run(sd3_workflow(), on_event=events.append)
    assert second.images[0].ref.filename == first.images[0].ref.filename
    cached = next(e for e in events if isinstance(e, ev.Cached))
    assert set(cached.nodes) == set(sd3_workflow())


async def test_missing_lora_is_refused_before_submission(double: ComfyDouble) -> None:
    async with ComfyClient(double.url, timeouts=FAST) as client:
        with pytest.raises(ComfyValidationError) as info:
            await client.run(sd3_workflow(lora="not_there.safetensors"))
    text = str(info.value)
    assert "LoRA 'not_there.safetensors' is not installed in ComfyUI; installed: tiny_sd3_bad_keys.safetensors" in text
    assert info.value.node_errors["2"]["class_type"] == "LoraLoader"
    assert not double.submissions  # refused locally, nothing queued


async def test_missing_lora_400_from_server_is_typed_too(double: ComfyDouble) -> None:
    async with ComfyClient(double.url, timeouts=FAST) as client:
        with pytest.raises(ComfyValidationError) as info:
            await client.run(sd3_workflow(lora="not_there.safetensors"), check_loras=False)
    assert "node 2 (LoraLoader): LoRA 'not_there.safetensors' is not installed in ComfyUI" in str(info.value)
    assert info.value.error["type"] == "prompt_outputs_failed_validation"
    assert info.value.hint and "models/loras" in info.value.hint


async def test_execution_error_names_node_and_exception(double: ComfyDouble) -> None:
    double.faults.fail_node = "7"
    async with ComfyClient(double.url, timeouts=FAST) as client:
        with pytest.raises(ComfyExecutionError) as info:
            await client.run(sd3_workflow())
    e = info.value
    assert (e.node_id, e.node_type, e.exception_type) == ("7", "KSampler", "AssertionError")
    assert "node 7 (KSampler)" in str(e) and e.traceback


async def test_execution_error_found_via_history_when_websocket_is_down(double: ComfyDouble) -> None:
    double.faults.fail_node = "7"
    double.faults.refuse_ws = True
    async with ComfyClient(double.url, timeouts=FAST) as client:
        with pytest.raises(ComfyExecutionError) as info:
            await client.run(sd3_workflow())
    assert info.value.node_id == "7"


async def test_interrupt_our_prompt(double: ComfyDouble) -> None:
    double.faults.step_delay = 0.02
    async with ComfyClient(double.url, timeouts=FAST) as client:
        tasks: list[asyncio.Task] = []

        def on_event(e: ev.Event) -> None:
            if isinstance(e, ev.Progress) and e.value == 2:
                tasks.append(asyncio.ensure_future(client.interrupt(e.prompt_id)))

        with pytest.raises(ComfyInterrupted) as info:
            await client.run(sd3_workflow(steps=200), prompt_id="stop-me", on_event=on_event)
        await asyncio.gather(*tasks)
    assert info.value.prompt_id == "stop-me" and "node 7 (KSampler)" in str(info.value)


async def test_websocket_refused_falls_back_to_polling(double: ComfyDouble) -> None:
    double.faults.refuse_ws = True
    events: list[ev.Event] = []
    async with ComfyClient(double.url, timeouts=FAST) as client:
        result = await client.run(sd3_workflow(seed=3), on_event=events.append)
    assert not result.used_websocket
    assert embedded_graph(result.images[0].data)["7"]["inputs"]["seed"] == 3
    assert any(isinstance(e, ev.FallbackToPolling) for e in events) and isinstance(events[-1], ev.Done)


async def test_websocket_dropped_mid_run_falls_back_to_polling(double: ComfyDouble) -> None:
    double.faults.drop_ws_after_frames = 6
    double.faults.step_delay = 0.01
    events: list[ev.Event] = []
    async with ComfyClient(double.url, timeouts=FAST) as client:
        result = await client.run(sd3_workflow(seed=11, steps=20), on_event=events.append)
    fallback = [e for e in events if isinstance(e, ev.FallbackToPolling)]
    assert fallback and "closed" in fallback[0].reason
    assert embedded_graph(result.images[0].data)["7"]["inputs"]["seed"] == 11


async def test_garbage_frames_are_skipped(double: ComfyDouble) -> None:
    double.faults.garbage_frames = True
    async with ComfyClient(double.url, timeouts=FAST) as client:
        result = await client.run(sd3_workflow(seed=5))
    assert result.used_websocket and embedded_graph(result.images[0].data)["7"]["inputs"]["seed"] == 5


async def test_slow_server_still_works(double: ComfyDouble) -> None:
    double.faults.slow_http = 0.2
    async with ComfyClient(double.url, timeouts=FAST) as client:
        result = await client.run(sd3_workflow())
    assert result.images


async def test_unreachable_server_is_typed() -> None:
    with ComfyDouble() as d:
        url = d.url
    async with ComfyClient(url, timeouts=FAST) as client:
        with pytest.raises(ComfyUnreachable) as info:
            await client.run(sd3_workflow())
    assert "cannot reach ComfyUI" in str(info.value) and info.value.hint


async def test_server_killed_after_submit_ends_unreachable(double: ComfyDouble) -> None:
    double.faults.drop_http_after_submit = True
    double.faults.step_delay = 0.2
    t0 = time.monotonic()
    async with ComfyClient(double.url, timeouts=FAST) as client:
        with pytest.raises(ComfyUnreachable) as info:
            await client.run(sd3_workflow(steps=50))
    assert "stopped answering" in str(info.value)
    assert time.monotonic() - t0 < 10


async def test_server_restarted_mid_run_is_noticed(double: ComfyDouble) -> None:
    double.faults.step_delay = 0.05
    restarted = threading.Event()

    def on_event(e: ev.Event) -> None:
        if isinstance(e, ev.Progress) and e.value == 2 and not restarted.is_set():
            restarted.set()
            threading.Thread(target=double.restart, args=(0.2,)).start()

    async with ComfyClient(double.url, timeouts=FAST) as client:
        with pytest.raises(ComfyUnreachable) as info:
            await client.run(sd3_workflow(steps=100), on_event=on_event)
    assert "lost prompt" in str(info.value) or "stopped answering" in str(info.value)


async def test_idle_timeout(double: ComfyDouble) -> None:
    double.faults.step_delay = 3.0
    quick = Timeouts(overall=20, idle=0.6, connect=2, http=5)
    async with ComfyClient(double.url, timeouts=quick) as client:
        with pytest.raises(ComfyTimeout) as info:
            await client.run(sd3_workflow(steps=3))
    assert "no progress for" in str(info.value)


async def test_overall_timeout(double: ComfyDouble) -> None:
    double.faults.step_delay = 0.1
    quick = Timeouts(overall=0.8, idle=10, connect=2, http=5)
    t0 = time.monotonic()
    async with ComfyClient(double.url, timeouts=quick) as client:
        with pytest.raises(ComfyTimeout) as info:
            await client.run(sd3_workflow(steps=100))
    assert "did not finish within" in str(info.value) and time.monotonic() - t0 < 5


async def test_foreign_prompt_without_client_id_does_not_confuse_us(double: ComfyDouble) -> None:
    import httpx

    double.faults.step_delay = 0.005
    async with httpx.AsyncClient(trust_env=False) as http:
        await http.post(double.url + "/prompt", json={"prompt": sd3_workflow(seed=99, steps=30)})
    events: list[ev.Event] = []
    async with ComfyClient(double.url, timeouts=FAST) as client:
        result = await client.run(sd3_workflow(seed=1), on_event=events.append)
    assert embedded_graph(result.images[0].data)["7"]["inputs"]["seed"] == 1
    # The other prompt's broadcast progress (sid None) never reaches our callback.
    assert all(getattr(e, "prompt_id", result.prompt_id) == result.prompt_id for e in events)
    assert len([e for e in events if isinstance(e, ev.Progress)]) == 4


async def test_queries(double: ComfyDouble) -> None:
    async with ComfyClient(double.url, timeouts=FAST) as client:
        assert "tiny_sd3_kohya.safetensors" in await client.loras()
        assert (await client.system_stats())["system"]["comfyui_version"] == "0.3.75"
        assert "LoraLoader" in await client.object_info("LoraLoader")
        assert await client.queue() == {"queue_running": [], "queue_pending": []}
        await client.free()
        await client.interrupt()
        assert await client.history("nope") is None


async def test_interrupt_removes_a_waiting_prompt_from_the_queue(double: ComfyDouble) -> None:
    double.faults.step_delay = 0.02
    async with ComfyClient(double.url, timeouts=FAST) as client:
        first = await client.submit(sd3_workflow(seed=1, steps=100))
        second = await client.submit(sd3_workflow(seed=2))
        await client.interrupt(second.prompt_id)
        q = await client.queue()
        await client.interrupt(first.prompt_id)
    assert all(item[1] != second.prompt_id for item in q["queue_pending"])


async def test_bad_url_and_non_comfy_server(double: ComfyDouble) -> None:
    with pytest.raises(Exception, match="must start with http"):
        ComfyClient("127.0.0.1:8188")
    async with ComfyClient(double.url + "/not-comfy", timeouts=FAST) as client:
        with pytest.raises(ComfyProtocolError):
            await client.run(sd3_workflow(), check_loras=False)


async def test_lora_that_does_not_fit_is_refused_before_submission(double: ComfyDouble) -> None:
    from conftest import COMFY_FIXTURES

    from devserver_lora.errors import LoraFileError

    loras = COMFY_FIXTURES / "loras"
    async with ComfyClient(double.url, timeouts=FAST) as client:
        with pytest.raises(LoraFileError) as info:
            await client.run(sd3_workflow(lora="tiny_sd3_bad_keys.safetensors"), loras_dir=loras, arch="sd3:2:te=clip_l")
        ok = await client.run(sd3_workflow(lora="tiny_sd3_kohya.safetensors"), loras_dir=loras, arch="sd3:2:te=clip_l")
    assert "lora key not loaded: lora_unet_joint_blocks_0_x_block_attn_qkvv.alpha" in str(info.value)
    assert "does not fit the model" in str(info.value) and info.value.hint
    assert ok.images and len(double.submissions) == 1  # only the good one was submitted


def test_sync_facade_from_many_worker_threads(double: ComfyDouble) -> None:
    """DevServer calls from Waitress worker threads: each call gets its own private loop; results never mix."""
    from concurrent.futures import ThreadPoolExecutor

    from devserver_lora.comfy import ComfySync

    sync = ComfySync(double.url, timeouts=FAST)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda s: (s, sync.run(sd3_workflow(seed=s))), range(6)))
    for seed, result in results:
        assert embedded_graph(result.images[0].data)["7"]["inputs"]["seed"] == seed
    assert "tiny_sd3_kohya.safetensors" in sync.loras() and sync.history("nope") is None


async def test_previews_reach_only_their_prompt(double: ComfyDouble) -> None:
    double.faults.previews = True
    got: list[ev.Event] = []
    async with ComfyClient(double.url, timeouts=FAST) as client:
        result = await client.run(sd3_workflow(steps=3), on_event=got.append)
    previews = [e for e in got if isinstance(e, ev.Preview)]
    assert len(previews) == 3 and {p.node for p in previews} == {"7"}
    assert all(p.prompt_id == result.prompt_id and p.data[:2] == b"\xff\xd8" for p in previews)


async def test_timed_out_prompt_is_interrupted_not_left_running(double: ComfyDouble) -> None:
    double.faults.step_delay = 0.05
    quick = Timeouts(overall=0.5, idle=10, connect=2, http=5)
    async with ComfyClient(double.url, timeouts=quick) as client:
        with pytest.raises(ComfyTimeout):
            await client.run(sd3_workflow(steps=200), prompt_id="abandoned")
        for _ in range(100):  # bounded wait for the double to finish the interrupted prompt
            entry = await client.history("abandoned")
            if entry is not None:
                break
            await asyncio.sleep(0.05)
    assert entry is not None and entry.failure() is not None  # interrupted, not rendered to the end
    assert ("POST", "/interrupt") in double.requests
