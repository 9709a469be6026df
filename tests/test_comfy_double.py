"""The double must behave like the recorded ComfyUI: same bodies, same message order, same history shapes."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import websockets
from comfy_double import ComfyDouble, sd3_workflow
from conftest import COMFY_FIXTURES


def _recorded(name: str) -> list[dict]:
    return [json.loads(line) for line in (COMFY_FIXTURES / name).read_text().splitlines() if line.strip()]


def _shape(msg: dict) -> tuple:
    """What must match between a recorded and a replayed message (ids and timestamps differ)."""
    kind, data = msg["type"], msg["data"]
    if kind == "progress_state":
        return kind, tuple((k, v["state"], v["value"], v["max"]) for k, v in data["nodes"].items())
    if kind == "progress":
        return kind, data["value"], data["max"], data["node"]
    if kind == "executing":
        return kind, data.get("node")
    if kind == "execution_cached":
        return kind, tuple(data["nodes"])
    if kind == "status":
        return kind, data["status"]["exec_info"]["queue_remaining"]
    if kind in ("execution_error", "execution_interrupted"):
        return kind, data["node_id"], data["node_type"], tuple(sorted(k for k in data if k != "timestamp"))
    if kind == "executed":
        return kind, data["node"], tuple(data["output"])
    return kind, tuple(sorted(data))


@pytest.fixture
def double():
    with ComfyDouble() as d:
        yield d


async def _trace(double: ComfyDouble, workflow: dict, *, client_id: str = "t", until_done: bool = True, on=None):
    """Submit `workflow` with `client_id` and collect the websocket messages of that run."""
    got: list[dict] = []
    async with websockets.connect(f"ws://127.0.0.1:{double.port}/ws?clientId={client_id}", proxy=None) as ws:
        hello = json.loads(await ws.recv())
        assert hello["type"] == "status" and hello["data"]["sid"] == client_id
        async with httpx.AsyncClient(trust_env=False) as http:
            body = {"prompt": workflow, "client_id": client_id}
            r = await http.post(double.url + "/prompt", json=body)
            assert r.status_code == 200, r.text
            pid = r.json()["prompt_id"]
        for _ in range(500):
            msg = json.loads(await ws.recv())
            got.append(msg)
            if on:
                await on(msg, pid)
            if msg["type"] == "executing" and msg["data"]["node"] is None:
                break
    return pid, got


async def test_success_trace_matches_recording(double: ComfyDouble) -> None:
    _, got = await _trace(double, sd3_workflow(seed=42, steps=4))
    recorded = _recorded("ws_trace_success.jsonl")
    assert [_shape(m) for m in got] == [_shape(m) for m in recorded]


async def test_cached_rerun_trace_and_same_filename(double: ComfyDouble) -> None:
    wf = sd3_workflow()
    first_pid, first = await _trace(double, wf)
    _, got = await _trace(double, wf)
    assert [_shape(m) for m in got] == [_shape(m) for m in _recorded("ws_trace_cached_rerun.jsonl")]
    out1 = next(m for m in first if m["type"] == "executed")["data"]["output"]
    out2 = next(m for m in got if m["type"] == "executed")["data"]["output"]
    assert out1 == out2


async def test_error_trace_matches_recording(double: ComfyDouble) -> None:
    await _trace(double, sd3_workflow())
    wf = sd3_workflow()
    wf["2"]["inputs"]["strength_model"] = 0.5  # invalidates 2 and everything after it; 1 stays cached
    wf["6"]["inputs"]["width"] = 32
    double.faults.fail_node = "7"
    pid, got = await _trace(double, wf)
    assert [_shape(m) for m in got] == [_shape(m) for m in _recorded("ws_trace_error.jsonl")]
    async with httpx.AsyncClient(trust_env=False) as http:
        hist = (await http.get(f"{double.url}/history/{pid}")).json()
    recorded = json.loads((COMFY_FIXTURES / "history_error.json").read_text())
    rec = next(iter(recorded.values()))
    assert set(hist[pid]) == set(rec)
    assert hist[pid]["status"]["status_str"] == rec["status"]["status_str"] == "error"
    assert [m[0] for m in hist[pid]["status"]["messages"]] == [m[0] for m in rec["status"]["messages"]]


async def test_interrupt_trace_matches_recording(double: ComfyDouble) -> None:
    await _trace(double, sd3_workflow())
    wf = sd3_workflow(steps=400)
    wf["6"]["inputs"]["height"] = 32
    double.faults.step_delay = 0.01

    async def interrupt_at_step_2(msg: dict, pid: str) -> None:
        if msg["type"] == "progress" and msg["data"]["value"] == 2:
            async with httpx.AsyncClient(trust_env=False) as http:
                await http.post(double.url + "/interrupt", json={"prompt_id": pid})

    pid, got = await _trace(double, wf, on=interrupt_at_step_2)
    # The recording interrupted right after step 2; ours lands a step or two later (the HTTP round trip), so
    # drop the extra steps and the rest must match message for message.
    def extra_step(shape: tuple) -> bool:
        if shape[0] == "progress":
            return shape[1] > 2
        return shape[0] == "progress_state" and any(s[0] == "7" and s[2] > 2 for s in shape[1])

    shapes = [s for s in (_shape(m) for m in got) if not extra_step(s)]
    assert shapes == [_shape(m) for m in _recorded("ws_trace_interrupted.jsonl")]


async def test_no_client_id_sends_only_broadcasts(double: ComfyDouble) -> None:
    seen: list[dict] = []
    async with websockets.connect(f"ws://127.0.0.1:{double.port}/ws?clientId=watcher", proxy=None) as ws:
        await ws.recv()
        async with httpx.AsyncClient(trust_env=False) as http:
            r = await http.post(double.url + "/prompt", json={"prompt": sd3_workflow()})
            pid = r.json()["prompt_id"]
            for _ in range(200):
                if (await http.get(f"{double.url}/history/{pid}")).json():
                    break
                await _sleep(0.02)
        while True:
            try:
                seen.append(json.loads(await _recv(ws, 0.2)))
            except TimeoutError:
                break
    kinds = {m["type"] for m in seen}
    assert kinds <= {"status", "progress", "progress_state"}, kinds
    assert "progress" in kinds  # sent with sid None -> broadcast, as server.py does


async def _sleep(s: float) -> None:
    import asyncio

    await asyncio.sleep(s)


async def _recv(ws, timeout: float) -> str:
    import asyncio

    return await asyncio.wait_for(ws.recv(), timeout)


@pytest.mark.parametrize(
    ("fixture", "mutate"),
    [
        ("post_prompt_400_missing_lora.json", lambda wf: wf["2"]["inputs"].update(lora_name="does_not_exist.safetensors")),
        ("post_prompt_400_missing_required_input.json", lambda wf: wf["2"]["inputs"].pop("lora_name")),
        ("post_prompt_400_value_bigger_than_max.json", lambda wf: wf["2"]["inputs"].update(strength_model=500.0)),
        ("post_prompt_400_return_type_mismatch.json", lambda wf: wf["7"]["inputs"].update(model=["4", 0])),
        ("post_prompt_400_unknown_class_type.json", lambda wf: wf["2"].update(class_type="LoraLoaderTypo")),
        ("post_prompt_400_no_outputs.json", lambda wf: wf.pop("9")),
    ],
)
def test_400_bodies_are_the_recorded_ones(double: ComfyDouble, fixture: str, mutate) -> None:
    wf = sd3_workflow()
    mutate(wf)
    r = httpx.post(double.url + "/prompt", json={"prompt": wf, "client_id": "x"}, trust_env=False)
    recorded = json.loads((COMFY_FIXTURES / fixture).read_text())
    assert r.status_code == recorded["http_status"] == 400
    assert r.json() == recorded["response"]


def test_no_prompt_and_200_bodies(double: ComfyDouble) -> None:
    r = httpx.post(double.url + "/prompt", json={"client_id": "x"}, trust_env=False)
    assert (r.status_code, r.json()) == (400, json.loads((COMFY_FIXTURES / "post_prompt_400_no_prompt.json").read_text())["response"])
    pid = "0b289af4-43c9-4e19-b8b6-eddc89338daf"
    r = httpx.post(double.url + "/prompt", json={"prompt": sd3_workflow(), "prompt_id": pid}, trust_env=False)
    rec = json.loads((COMFY_FIXTURES / "post_prompt_success_client_prompt_id.json").read_text())
    assert r.status_code == 200 and set(r.json()) == set(rec["response"]) and r.json()["prompt_id"] == pid


def test_misc_endpoints_and_api_alias(double: ComfyDouble) -> None:
    with httpx.Client(trust_env=False) as http:
        assert http.get(double.url + "/api/queue").json() == {"queue_running": [], "queue_pending": []}
        assert http.get(double.url + "/models/not_a_folder").status_code == 404
        assert http.get(double.url + "/view", params={"filename": "x.png"}).status_code == 404
        assert http.get(double.url + "/history/unknown").json() == {}
        assert http.post(double.url + "/free", json={"unload_models": True}).status_code == 200
        assert http.get(double.url + "/models/loras").json() == json.loads((COMFY_FIXTURES / "models_loras.json").read_text())


def test_the_double_builds_its_400_bodies_by_rule_not_from_the_recording() -> None:
    """The two tests above compare the double's 400 bodies with the recorded ones; that means something only while
    the double does not answer with the recording itself."""
    here = Path(__file__).resolve().parent
    sources = {name: (here / name).read_text(encoding="utf-8") for name in ("comfy_double.py", "comfy_double_rules.py")}
    for name, text in sources.items():
        assert "post_prompt_400" not in text, f"{name} replays a recorded 400 body"
