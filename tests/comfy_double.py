"""A faithful test double of ComfyUI v0.3.75 (aiohttp on 127.0.0.1), built from the recorded traffic.

What it reproduces (checked against ../shared/fixtures/comfyui by tests/test_comfy_double.py):
- POST /prompt: the exact 200 body; the exact 400 bodies for no prompt, unknown class, no outputs, a missing
  required input, a value not in a combo list (the missing-LoRA case), a number above max, a link type mismatch.
- Execution order: ComfyUI's own topological dissolve with its "output first" pick, so the node order matches.
- Websocket messages in the recorded order: status x2, execution_start, execution_cached, progress_state /
  executing per node, progress per sampler step, executed, execution_success, [history written], status,
  executing null. Per-node caching as ComfyUI does it (same node id + same inputs -> cached; a cached output
  node re-sends its old `executed`, same filename). Without a client_id only broadcasts reach sockets
  (status, progress, progress_state, execution_interrupted), as in server.py/execution.py.
- Execution errors and interrupts with the recorded message and history shapes.
- /history, /view (PNG with the graph embedded as ComfyUI's SaveImage does), /queue, /interrupt, /free,
  /object_info, /models, /system_stats; every route also under /api and under an optional path prefix.

Fault injection (`double.faults`): drop the websocket after N frames, refuse websockets, send garbage frames,
slow every HTTP answer, delay the history write after execution_success, fail a node, and `restart()` (stop and
start on the same port with an empty queue and history).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import io
import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from PIL import Image
from PIL.PngImagePlugin import PngInfo

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "comfyui"
STATUS_EXAMPLE = json.loads((FIXTURES / "system_stats.json").read_text())
ERROR_HISTORY = json.loads((FIXTURES / "history_error.json").read_text())
RECORDED_TRACEBACK = next(iter(ERROR_HISTORY.values()))["status"]["messages"][2][1]["traceback"]
# Which model folder feeds a combo input, by input name (object_info does not say).
FOLDER_OF_INPUT = {
    "ckpt_name": "checkpoints",
    "lora_name": "loras",
    "clip_name": "text_encoders",
    "clip_name1": "text_encoders",
    "clip_name2": "text_encoders",
    "clip_name3": "text_encoders",
    "vae_name": "vae",
    "unet_name": "diffusion_models",
}
SAMPLERS = {"KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced"}


def _fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


@dataclass
class Faults:
    drop_ws_after_frames: int | None = None  # abort each socket after this many frames of a run
    refuse_ws: bool = False  # /ws answers 503 instead of upgrading
    garbage_frames: bool = False  # interleave unparseable text and binary frames
    slow_http: float = 0.0  # seconds added to every HTTP answer
    history_delay: float = 0.02  # execution_success -> history written (clients must wait for executing null)
    fail_node: str | None = None  # node id that raises (recorded AssertionError)
    step_delay: float = 0.0  # seconds per sampler step (lets tests interrupt mid-run)
    drop_http_after_submit: bool = False  # server dies right after accepting a prompt (killed server)
    previews: bool = False  # send a preview frame (type 4, JSON metadata + JPEG) before each sampler step's progress


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


class ComfyDouble:
    def __init__(
        self,
        *,
        prefix: str = "",
        models: dict[str, list[str]] | None = None,
        port: int = 0,
    ) -> None:
        self.prefix = prefix.rstrip("/")
        self.models: dict[str, list[str]] = {
            "checkpoints": _fixture("models_checkpoints.json"),
            "loras": _fixture("models_loras.json"),
            "text_encoders": [],
            "vae": [],
            "diffusion_models": [],
        }
        self.models.update(models or {})
        self.object_info = _fixture("object_info.json")
        self.faults = Faults()
        self.port = port
        self.requests: list[tuple[str, str]] = []
        self.submissions: list[dict] = []
        self.completed_at: dict[str, float] = {}  # prompt_id -> time.monotonic() when executing null was sent
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._reset_state()

    # --- lifecycle (the server runs in its own thread and loop, usable from sync and async tests) ---

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    def _reset_state(self) -> None:
        self.history: dict[str, dict] = {}
        self.files: dict[tuple[str, str, str], bytes] = {}
        self.sockets: dict[str, tuple[web.WebSocketResponse, web.Request]] = {}
        self.pending: list[list] = []
        self.running: list[list] = []
        self.cache: dict[str, tuple[str, dict | None]] = {}  # node id -> (signature, ui output)
        self.counter = 0
        self.number = 0
        self.image_counter: dict[str, int] = {}
        self._interrupt = False
        self._frames: dict[str, int] = {}
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None

    def start(self) -> ComfyDouble:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, args=(ready,), daemon=True, name="comfy-double")
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("ComfyDouble did not start within 10 s")
        return self

    def _thread_main(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._shutdown())
        self._loop.close()

    async def _serve(self) -> None:
        self._wakeup = asyncio.Event()
        self._worker = asyncio.get_running_loop().create_task(self._work())
        self._runner = web.AppRunner(self._app(), handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _shutdown(self) -> None:
        if self._worker:
            self._worker.cancel()
        for _ws, request in list(self.sockets.values()):
            if request.transport is not None:
                request.transport.abort()
        if self._runner:
            await self._runner.cleanup()

    def stop(self) -> None:
        if self._loop and self._thread:
            if not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = self._thread = None

    def restart(self, down_for: float = 0.0) -> None:
        """Kill and restart on the same port: queue, history, files and sockets are gone (as after a crash)."""
        self.stop()
        time.sleep(down_for)
        self._reset_state()
        self.start()

    def call(self, fn, *args):  # noqa: ANN001, ANN201 - run a callable on the server's loop (from tests)
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(fn(*args), self._loop).result(10)

    def __enter__(self) -> ComfyDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- HTTP ---

    def _app(self) -> web.Application:
        @web.middleware
        async def record(request: web.Request, handler):  # noqa: ANN001, ANN202
            self.requests.append((request.method, request.path))
            if self.faults.slow_http and not request.path.endswith("/ws"):
                await asyncio.sleep(self.faults.slow_http)
            return await handler(request)

        app = web.Application(middlewares=[record])
        routes = [
            ("GET", "/ws", self._ws),
            ("POST", "/prompt", self._post_prompt),
            ("GET", "/prompt", self._get_prompt),
            ("GET", "/history", self._get_history_all),
            ("GET", "/history/{prompt_id}", self._get_history),
            ("GET", "/view", self._view),
            ("GET", "/object_info", self._object_info_all),
            ("GET", "/object_info/{cls}", self._object_info_one),
            ("GET", "/models", self._models_all),
            ("GET", "/models/{folder}", self._models),
            ("GET", "/queue", self._get_queue),
            ("POST", "/queue", self._post_queue),
            ("POST", "/interrupt", self._interrupt_route),
            ("POST", "/free", self._ok),
            ("GET", "/system_stats", self._system_stats),
            ("GET", "/features", self._features),
        ]
        for base in (self.prefix, self.prefix + "/api"):
            for method, path, handler in routes:
                app.router.add_route(method, base + path, handler)
        return app

    async def _ok(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _system_stats(self, request: web.Request) -> web.Response:
        return web.json_response(STATUS_EXAMPLE)

    async def _features(self, request: web.Request) -> web.Response:
        return web.json_response(_fixture("features.json"))

    def _live_object_info(self) -> dict:
        """object_info with the combo lists of model inputs filled from `self.models` (cached per models state)."""
        key = json.dumps(self.models, sort_keys=True)
        if getattr(self, "_live_key", None) != key:
            self._live_info = self._build_live_object_info()
            self._live_key = key
        return self._live_info

    def _build_live_object_info(self) -> dict:
        info = copy.deepcopy(self.object_info)
        for node in info.values():
            for section in ("required", "optional"):
                for name, spec in (node.get("input", {}).get(section) or {}).items():
                    if name in FOLDER_OF_INPUT and isinstance(spec, list) and spec and isinstance(spec[0], list):
                        spec[0] = sorted(self.models.get(FOLDER_OF_INPUT[name], []))
        return info

    async def _object_info_all(self, request: web.Request) -> web.Response:
        return web.json_response(self._live_object_info())

    async def _object_info_one(self, request: web.Request) -> web.Response:
        cls = request.match_info["cls"]
        info = self._live_object_info()
        return web.json_response({cls: info[cls]} if cls in info else {})


    async def _models_all(self, request: web.Request) -> web.Response:
        return web.json_response(_fixture("models.json"))

    async def _models(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in _fixture("models.json"):
            return web.Response(status=404)
        return web.json_response(sorted(self.models.get(folder, [])))

    def _queue_body(self) -> dict:
        return {"queue_running": copy.deepcopy(self.running), "queue_pending": copy.deepcopy(self.pending)}

    async def _get_queue(self, request: web.Request) -> web.Response:
        return web.json_response(self._queue_body())

    async def _get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response({"exec_info": {"queue_remaining": len(self.pending) + len(self.running)}})

    async def _post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self.pending.clear()
        for pid in body.get("delete") or []:
            self.pending = [item for item in self.pending if item[1] != pid]
        await self._status()
        return web.Response(status=200)

    async def _interrupt_route(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = {}
        pid = body.get("prompt_id")
        if not pid or any(item[1] == pid for item in self.running):
            self._interrupt = True
        return web.Response(status=200)

    async def _get_history_all(self, request: web.Request) -> web.Response:
        return web.json_response(self.history)

    async def _get_history(self, request: web.Request) -> web.Response:
        pid = request.match_info["prompt_id"]
        return web.json_response({pid: self.history[pid]} if pid in self.history else {})

    async def _view(self, request: web.Request) -> web.Response:
        q = request.query
        key = (q.get("type", "output"), q.get("subfolder", ""), q.get("filename", ""))
        if key not in self.files:
            return web.Response(status=404)
        return web.Response(
            body=self.files[key],
            content_type="image/png",
            headers={"Content-Disposition": f'filename="{key[2]}"'},
        )

    # --- POST /prompt and validation (bodies as recorded) ---

    async def _post_prompt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = {}
        self.submissions.append(body)
        if "prompt" not in body:
            return web.json_response(_fixture("post_prompt_400_no_prompt.json")["response"], status=400)
        prompt = body["prompt"]
        refused = self._validate(prompt)
        if refused is not None:
            return web.json_response(refused, status=400)
        pid = body.get("prompt_id") or str(uuid.uuid4())
        outputs = self._output_nodes(prompt)
        extra = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra["client_id"] = body["client_id"]
        extra["create_time"] = int(time.time() * 1000)
        number = self.number
        self.number += 1
        self.pending.append([number, pid, prompt, extra, outputs])
        await self._status()
        assert self._wakeup is not None
        self._wakeup.set()
        if self.faults.drop_http_after_submit:
            asyncio.get_running_loop().call_later(0.05, self._loop.stop)  # type: ignore[union-attr]
        return web.json_response({"prompt_id": pid, "number": number, "node_errors": {}})

    def _output_nodes(self, prompt: dict) -> list[str]:
        return [nid for nid, node in prompt.items() if self.object_info.get(node.get("class_type"), {}).get("output_node")]

    def _validate(self, prompt: Any) -> dict | None:
        for nid, node in prompt.items():
            if not isinstance(node, dict) or "class_type" not in node:
                return {
                    "error": {
                        "type": "invalid_prompt",
                        "message": "Cannot execute because a node is missing the class_type property.",
                        "details": f"Node ID '#{nid}'",
                        "extra_info": {},
                    },
                    "node_errors": {},
                }
            if node["class_type"] not in self.object_info:
                body = _fixture("post_prompt_400_unknown_class_type.json")["response"]
                body["error"]["message"] = f"Cannot execute because node {node['class_type']} does not exist."
                body["error"]["details"] = f"Node ID '#{nid}'"
                return body
        outputs = self._output_nodes(prompt)
        if not outputs:
            return _fixture("post_prompt_400_no_outputs.json")["response"]
        info = self._live_object_info()
        node_errors: dict[str, dict] = {}
        for out in outputs:
            for nid in self._upstream(prompt, out):
                errors = self._node_errors(prompt, nid, info)
                if errors:
                    entry = node_errors.setdefault(
                        nid, {"errors": errors, "dependent_outputs": [], "class_type": prompt[nid]["class_type"]}
                    )
                    entry["dependent_outputs"].append(out)
        if node_errors:
            return {
                "error": {
                    "type": "prompt_outputs_failed_validation",
                    "message": "Prompt outputs failed validation",
                    "details": "",
                    "extra_info": {},
                },
                "node_errors": node_errors,
            }
        return None

    def _upstream(self, prompt: dict, start: str) -> list[str]:
        seen: list[str] = []
        stack = [start]
        while stack:
            nid = stack.pop()
            if nid in seen or nid not in prompt:
                continue
            seen.append(nid)
            stack += [v[0] for v in prompt[nid].get("inputs", {}).values() if _is_link(v)]
        return seen

    def _node_errors(self, prompt: dict, nid: str, info: dict) -> list[dict]:
        node = prompt[nid]
        spec = info[node["class_type"]]
        inputs = node.get("inputs", {})
        errors = []
        for name in spec["input"].get("required") or {}:
            if name not in inputs:
                errors.append(
                    {
                        "type": "required_input_missing",
                        "message": "Required input is missing",
                        "details": name,
                        "extra_info": {"input_name": name},
                    }
                )
        all_inputs = {**(spec["input"].get("optional") or {}), **(spec["input"].get("required") or {})}
        for name, value in inputs.items():
            cfg = all_inputs.get(name)
            if cfg is None:
                continue
            kind = cfg[0]
            opts = cfg[1] if len(cfg) > 1 else {}
            if _is_link(value):
                src = prompt.get(value[0])
                got = self.object_info.get(src["class_type"], {}).get("output", []) if src else []
                received = got[value[1]] if value[1] < len(got) else None
                if isinstance(kind, str) and received is not None and received != kind and kind != "*":
                    errors.append(
                        {
                            "type": "return_type_mismatch",
                            "message": "Return type mismatch between linked nodes",
                            "details": f"{name}, received_type({received}) mismatch input_type({kind})",
                            "extra_info": {
                                "input_name": name,
                                "input_config": cfg,
                                "received_type": received,
                                "linked_node": value,
                            },
                        }
                    )
                continue
            if isinstance(kind, list) and value not in kind:
                errors.append(
                    {
                        "type": "value_not_in_list",
                        "message": "Value not in list",
                        "details": f"{name}: '{value}' not in {kind}",
                        "extra_info": {"input_name": name, "input_config": cfg, "received_value": value},
                    }
                )
            elif kind in ("INT", "FLOAT"):
                try:
                    num = int(value) if kind == "INT" else float(value)
                except (TypeError, ValueError):
                    errors.append(
                        {
                            "type": "invalid_input_type",
                            "message": f"Failed to convert an input value to a {kind} value",
                            "details": f"{name}, {value}, invalid literal",
                            "extra_info": {"input_name": name, "input_config": cfg, "received_value": value},
                        }
                    )
                    continue
                if "max" in opts and num > opts["max"]:
                    errors.append(
                        {
                            "type": "value_bigger_than_max",
                            "message": f"Value {num} bigger than max of {opts['max']}",
                            "details": name,
                            "extra_info": {"input_name": name, "input_config": cfg, "received_value": num},
                        }
                    )
                if "min" in opts and num < opts["min"]:
                    errors.append(
                        {
                            "type": "value_smaller_than_min",
                            "message": f"Value {num} smaller than min of {opts['min']}",
                            "details": name,
                            "extra_info": {"input_name": name, "input_config": cfg, "received_value": num},
                        }
                    )
        return errors

    # --- websocket ---

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        if self.faults.refuse_ws:
            return web.Response(status=503, text="websocket refused by fault injection")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        self.sockets[sid] = (ws, request)
        await ws.send_json({"type": "status", "data": {"status": self._exec_info(), "sid": sid}})
        first = True
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT and first:
                    try:
                        data = json.loads(msg.data)
                    except json.JSONDecodeError:
                        data = {}
                    if data.get("type") == "feature_flags":
                        await ws.send_json({"type": "feature_flags", "data": _fixture("features.json")})
                    first = False
        finally:
            if self.sockets.get(sid, (None,))[0] is ws:
                self.sockets.pop(sid, None)
        return ws

    def _exec_info(self) -> dict:
        return {"exec_info": {"queue_remaining": len(self.pending) + len(self.running)}}

    async def _send(self, sid: str | None, kind: str, data: dict) -> None:
        """send_json semantics of server.py: sid None -> every socket; else only that client's socket."""
        targets = list(self.sockets.items()) if sid is None else [(sid, self.sockets[sid])] if sid in self.sockets else []
        for target_sid, (ws, request) in targets:
            if ws.closed:
                continue
            try:
                if self.faults.garbage_frames:
                    await ws.send_str("}{ not json")
                    await ws.send_bytes(b"\x00\x00\x00\x09garbage")
                    await ws.send_str(json.dumps({"type": 7}))
                await ws.send_json({"type": kind, "data": data})
            except (ConnectionError, RuntimeError):
                continue
            self._frames[target_sid] = self._frames.get(target_sid, 0) + 1
            limit = self.faults.drop_ws_after_frames
            if limit is not None and self._frames[target_sid] >= limit and request.transport is not None:
                request.transport.abort()  # an abrupt drop, no close frame

    async def _send_preview(self, sid: str | None, pid: str, nid: str) -> None:
        """PREVIEW_IMAGE_WITH_METADATA as server.py packs it: type 4, metadata length, metadata JSON, JPEG."""
        meta = {"node_id": nid, "prompt_id": pid, "display_node_id": nid, "parent_node_id": None, "real_node_id": nid}
        meta["image_type"] = "image/jpeg"
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="JPEG")
        blob = json.dumps(meta).encode()
        frame = (4).to_bytes(4, "big") + len(blob).to_bytes(4, "big") + blob + buf.getvalue()
        targets = [self.sockets[sid]] if sid in self.sockets else []
        for ws, _ in targets:
            if not ws.closed:
                await ws.send_bytes(frame)

    async def _status(self) -> None:
        await self._send(None, "status", {"status": self._exec_info()})

    # --- the executor ---

    async def _work(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self.pending:
                item = self.pending.pop(0)
                self.running.append(item)
                await self._status()
                try:
                    await self._execute(item)
                finally:
                    self.running = [i for i in self.running if i is not item]

    def _signature(self, prompt: dict, nid: str, memo: dict[str, str]) -> str:
        if nid not in memo:
            node = prompt[nid]
            parts = {
                k: (["link", self._signature(prompt, v[0], memo), v[1]] if _is_link(v) else v)
                for k, v in node.get("inputs", {}).items()
            }
            memo[nid] = hashlib.sha256(json.dumps([node["class_type"], parts], sort_keys=True).encode()).hexdigest()
        return memo[nid]

    def _order(self, prompt: dict, outputs: list[str], cached: set[str]) -> list[str]:
        """ComfyUI's ExecutionList: dissolve from the outputs, cached inputs are not added; pick outputs first."""
        pending: dict[str, bool] = {}
        block_count: dict[str, int] = {}
        blocking: dict[str, dict[str, bool]] = {}
        for out in outputs:
            stack, links = [out], []
            while stack:
                nid = stack.pop()
                if nid in pending:
                    continue
                pending[nid] = True
                block_count[nid] = 0
                blocking[nid] = {}
                for value in prompt[nid].get("inputs", {}).values():
                    if _is_link(value) and value[0] not in cached:
                        stack.append(value[0])
                        links.append((value[0], nid))
            for src, dst in links:
                if dst not in blocking[src]:
                    blocking[src][dst] = True
                    block_count[dst] += 1

        def is_output(nid: str) -> bool:
            return bool(self.object_info.get(prompt[nid]["class_type"], {}).get("output_node"))

        order = []
        while pending:
            ready = [n for n in pending if block_count[n] == 0]
            pick = next((n for n in ready if is_output(n)), None)
            pick = pick or next((n for n in ready if any(is_output(b) for b in blocking[n])), None)
            pick = pick or next(
                (n for n in ready if any(is_output(b1) for b in blocking[n] for b1 in blocking[b])), None
            )
            pick = pick or ready[0]
            order.append(pick)
            del pending[pick]
            for b in blocking.pop(pick):
                block_count[b] -= 1
        return order

    def _png(self, prompt: dict, pid: str) -> bytes:
        digest = hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).digest()
        img = Image.new("RGB", (64, 64), tuple(digest[:3]))
        meta = PngInfo()
        meta.add_text("prompt", json.dumps(prompt))
        buf = io.BytesIO()
        img.save(buf, format="PNG", pnginfo=meta)
        return buf.getvalue()

    def _save_image(self, prompt: dict, nid: str, pid: str) -> dict:
        prefix = str(prompt[nid].get("inputs", {}).get("filename_prefix", "ComfyUI"))
        subfolder, _, stem = prefix.rpartition("/")
        n = self.image_counter.get(prefix, 0) + 1
        self.image_counter[prefix] = n
        filename = f"{stem}_{n:05d}_.png"
        self.files[("output", subfolder, filename)] = self._png(prompt, pid)
        return {"images": [{"filename": filename, "subfolder": subfolder, "type": "output"}]}

    async def _execute(self, item: list) -> None:
        number, pid, prompt, extra, outputs = item
        sid = extra.get("client_id")
        self._frames = {}
        self._interrupt = False
        messages: list[list] = []

        def ts() -> int:
            return int(time.time() * 1000)

        async def add(kind: str, data: dict, broadcast: bool) -> None:
            data = {**data, "timestamp": ts()}
            messages.append([kind, data])
            if sid is not None or broadcast:
                await self._send(sid, kind, data)

        async def to_client(kind: str, data: dict) -> None:  # executing / executed: only with a client_id
            if sid is not None:
                await self._send(sid, kind, data)

        # clean_unused: forget nodes that are not in this prompt
        self.cache = {k: v for k, v in self.cache.items() if k in prompt}
        memo: dict[str, str] = {}
        sigs = {nid: self._signature(prompt, nid, memo) for nid in prompt}
        cached = {nid for nid in prompt if nid in self.cache and self.cache[nid][0] == sigs[nid]}
        await add("execution_start", {"prompt_id": pid}, False)
        await add("execution_cached", {"nodes": [n for n in prompt if n in cached], "prompt_id": pid}, False)
        states: dict[str, dict] = {}

        async def progress_state() -> None:
            await self._send(sid, "progress_state", {"prompt_id": pid, "nodes": copy.deepcopy(states)})

        def state(nid: str, value: float, maximum: float, name: str) -> dict:
            return {
                "value": value,
                "max": maximum,
                "state": name,
                "node_id": nid,
                "prompt_id": pid,
                "display_node_id": nid,
                "parent_node_id": None,
                "real_node_id": nid,
            }

        ui: dict[str, dict] = {}
        executed: list[str] = []
        failure = None
        for nid in self._order(prompt, outputs, cached):
            node = prompt[nid]
            if nid in cached:
                out = self.cache[nid][1]
                if out is not None:
                    ui[nid] = out
                    await to_client("executed", {"node": nid, "display_node": nid, "output": out, "prompt_id": pid})
                    states[nid] = state(nid, 1, 1, "finished")
                    await progress_state()
                continue
            states[nid] = state(nid, 0.0, 1.0, "running")
            await progress_state()
            await to_client("executing", {"node": nid, "display_node": nid, "prompt_id": pid})
            if self.faults.fail_node == nid:
                failure = ("execution_error", nid)
                break
            steps = 1
            if node["class_type"] in SAMPLERS:
                steps = int(node.get("inputs", {}).get("steps", 1))
                for step in range(1, steps + 1):
                    if self.faults.step_delay:
                        await asyncio.sleep(self.faults.step_delay)
                    if self._interrupt:
                        failure = ("execution_interrupted", nid)
                        break
                    if self.faults.previews:
                        await self._send_preview(sid, pid, nid)
                    states[nid] = state(nid, step, steps, "running")
                    await progress_state()
                    await self._send(sid, "progress", {"value": step, "max": steps, "prompt_id": pid, "node": nid})
                if failure:
                    break
            out = None
            if node["class_type"] == "SaveImage":
                out = self._save_image(prompt, nid, pid)
                ui[nid] = out
                await to_client("executed", {"node": nid, "display_node": nid, "output": out, "prompt_id": pid})
            self.cache[nid] = (sigs[nid], out)
            executed.append(nid)
            states[nid] = state(nid, steps if steps > 1 else 1.0, steps if steps > 1 else 1.0, "finished")
            await progress_state()
        if failure is None:
            await add("execution_success", {"prompt_id": pid}, False)
        elif failure[0] == "execution_interrupted":
            data = {"prompt_id": pid, "node_id": failure[1], "node_type": prompt[failure[1]]["class_type"]}
            await add("execution_interrupted", {**data, "executed": executed}, True)
        else:
            nid = failure[1]
            data = {
                "prompt_id": pid,
                "node_id": nid,
                "node_type": prompt[nid]["class_type"],
                "executed": executed,
                "exception_message": "(64, 32)\n",
                "exception_type": "AssertionError",
                "traceback": RECORDED_TRACEBACK,
                "current_inputs": {},
                "current_outputs": {},
            }
            await add("execution_error", data, False)
        if self.faults.history_delay:
            await asyncio.sleep(self.faults.history_delay)
        self.history[pid] = {
            "prompt": [number, pid, prompt, {k: v for k, v in extra.items()}, outputs],
            "outputs": ui if failure is None else {},
            "status": {
                "status_str": "success" if failure is None else "error",
                "completed": failure is None,
                "messages": messages,
            },
            "meta": {
                n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n}
                for n in (ui if failure is None else {})
            },
        }
        self.running = []
        await self._status()
        if sid is not None:
            await self._send(sid, "executing", {"node": None, "prompt_id": pid})
        self.completed_at[pid] = time.monotonic()


def sd3_workflow(*, seed: int = 42, steps: int = 4, lora: str | None = "tiny_sd3_kohya.safetensors") -> dict:
    """The recorded SD3 LoRA workflow (fixtures/comfyui/sd3_lora_workflow_api.json) with a chosen seed/steps/LoRA."""
    wf = _fixture("sd3_lora_workflow_api.json")
    wf["7"]["inputs"]["seed"] = seed
    wf["7"]["inputs"]["steps"] = steps
    if lora is None:
        del wf["2"]
        wf["3"]["inputs"]["model"] = ["1", 0]
        wf["4"]["inputs"]["clip"] = ["1", 1]
        wf["5"]["inputs"]["clip"] = ["1", 1]
    else:
        wf["2"]["inputs"]["lora_name"] = lora
    return wf
