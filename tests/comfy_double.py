"""A faithful test double of ComfyUI v0.3.75 (aiohttp on 127.0.0.1), built from the recorded traffic.

What it reproduces (checked against tests/fixtures/comfyui by tests/test_comfy_double.py):
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
The rules it follows (validation, order, caching) and the recorded data are in tests/comfy_double_rules.py.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
import uuid

from aiohttp import WSMsgType, web
from comfy_double_rules import (
    ERROR_HISTORY,
    FIXTURES,
    RECORDED_TRACEBACK,
    SAMPLERS,
    STATUS_EXAMPLE,
    Faults,
    execution_order,
    fill_model_lists,
    fixture,
    node_state,
    output_nodes,
    preview_frame,
    prompt_error,
    render_png,
    sd3_workflow,
    signature,
    validate_prompt,
)

__all__ = ["ComfyDouble", "Faults", "sd3_workflow", "FIXTURES", "ERROR_HISTORY", "STATUS_EXAMPLE"]


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
            "checkpoints": fixture("models_checkpoints.json"),
            "loras": fixture("models_loras.json"),
            "text_encoders": [],
            "vae": [],
            "diffusion_models": [],
        }
        self.models.update(models or {})
        self.object_info = fixture("object_info.json")
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
        return web.json_response(fixture("features.json"))

    def _live_object_info(self) -> dict:
        """object_info with the combo lists of model inputs filled from `self.models` (cached per models state)."""
        key = json.dumps(self.models, sort_keys=True)
        if getattr(self, "_live_key", None) != key:
            self._live_info = fill_model_lists(self.object_info, self.models)
            self._live_key = key
        return self._live_info

    async def _object_info_all(self, request: web.Request) -> web.Response:
        return web.json_response(self._live_object_info())

    async def _object_info_one(self, request: web.Request) -> web.Response:
        cls = request.match_info["cls"]
        info = self._live_object_info()
        return web.json_response({cls: info[cls]} if cls in info else {})


    async def _models_all(self, request: web.Request) -> web.Response:
        return web.json_response(fixture("models.json"))

    async def _models(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in fixture("models.json"):
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

    # --- POST /prompt and validation (bodies built by the rules, compared with the recorded ones by the tests) ---

    async def _post_prompt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = {}
        self.submissions.append(body)
        if "prompt" not in body:
            return web.json_response(prompt_error("no_prompt", "No prompt provided", "No prompt provided"), status=400)
        prompt = body["prompt"]
        refused = validate_prompt(self.object_info, self._live_object_info(), prompt)
        if refused is not None:
            return web.json_response(refused, status=400)
        pid = body.get("prompt_id") or str(uuid.uuid4())
        outputs = output_nodes(self.object_info, prompt)
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
                        await ws.send_json({"type": "feature_flags", "data": fixture("features.json")})
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
        frame = preview_frame(pid, nid)
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

    def _save_image(self, prompt: dict, nid: str, pid: str) -> dict:
        prefix = str(prompt[nid].get("inputs", {}).get("filename_prefix", "ComfyUI"))
        subfolder, _, stem = prefix.rpartition("/")
        n = self.image_counter.get(prefix, 0) + 1
        self.image_counter[prefix] = n
        filename = f"{stem}_{n:05d}_.png"
        self.files[("output", subfolder, filename)] = render_png(prompt)
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
        sigs = {nid: signature(prompt, nid, memo) for nid in prompt}
        cached = {nid for nid in prompt if nid in self.cache and self.cache[nid][0] == sigs[nid]}
        await add("execution_start", {"prompt_id": pid}, False)
        await add("execution_cached", {"nodes": [n for n in prompt if n in cached], "prompt_id": pid}, False)
        states: dict[str, dict] = {}

        async def progress_state() -> None:
            await self._send(sid, "progress_state", {"prompt_id": pid, "nodes": copy.deepcopy(states)})

        ui: dict[str, dict] = {}
        executed: list[str] = []
        failure = None
        for nid in execution_order(self.object_info, prompt, outputs, cached):
            node = prompt[nid]
            if nid in cached:
                out = self.cache[nid][1]
                if out is not None:
                    ui[nid] = out
                    await to_client("executed", {"node": nid, "display_node": nid, "output": out, "prompt_id": pid})
                    states[nid] = node_state(pid, nid, 1, 1, "finished")
                    await progress_state()
                continue
            states[nid] = node_state(pid, nid, 0.0, 1.0, "running")
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
                    states[nid] = node_state(pid, nid, step, steps, "running")
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
            states[nid] = node_state(pid, nid, steps if steps > 1 else 1.0, steps if steps > 1 else 1.0, "finished")
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
