"""Async ComfyUI client: submit a graph, follow it over the websocket, fetch THAT prompt's images.

Why not "poll /history every 2 s and take the newest PNG in the output folder" (what DevServer does today): the
newest file belongs to whichever job finished last, so two students can swap pictures. We submit with our own
client_id and prompt_id, recognise completion by `executing {node: null}` for our prompt_id (ComfyUI sends it
after writing the history entry), then read `/history/{prompt_id}` and download exactly its outputs via `/view`.

If the websocket cannot connect or drops, we fall back to polling `/history/{prompt_id}` (missed websocket events
are never replayed). Every wait is bounded by an overall timeout and an idle timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from .. import safe_json
from ..errors import ComfyError, ComfyProtocolError, ComfyTimeout, ComfyUnreachable
from . import events as ev
from .hub import WsHub, WsLost
from .preflight import check_fits, check_installed, lora_names_in
from .protocol import (
    HistoryEntry,
    ImageRef,
    Submitted,
    failure_exception,
    parse_history,
    parse_submit_response,
)

log = logging.getLogger(__name__)

EventCallback = Callable[[ev.Event], Any]

# After an error/interrupt event, how long we wait for the closing `executing null` before raising anyway.
FAILURE_GRACE = 5.0
# How long we keep retrying when the server stops answering while we wait (it may be restarting).
DEFAULT_UNREACHABLE_GRACE = 15.0


@dataclass(frozen=True)
class ImageResult:
    ref: ImageRef
    data: bytes = field(repr=False)
    content_type: str | None = None


@dataclass
class RunResult:
    """What one finished prompt produced."""

    prompt_id: str
    images: list[ImageResult]
    history: HistoryEntry
    used_websocket: bool
    events: list[ev.Event] = field(default_factory=list, repr=False)


@dataclass(frozen=True)
class Timeouts:
    """Bounds of one run. `idle` = longest silence about a running prompt before we give up."""

    overall: float = 900.0
    idle: float = 180.0
    connect: float = 5.0
    http: float = 30.0
    poll_interval: float = 0.25
    poll_interval_max: float = 1.0
    unreachable_grace: float = DEFAULT_UNREACHABLE_GRACE


def _ws_url(base_url: str, client_id: str) -> str:
    parts = urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws", f"clientId={client_id}", ""))


def check_base_url(base_url: str) -> str:
    """The URL without a trailing slash; ComfyError when it is not http(s)."""
    if not base_url.startswith(("http://", "https://")):
        raise ComfyError(
            f"ComfyUI URL {base_url!r} must start with http:// or https://",
            hint="e.g. http://127.0.0.1:8188 or http://127.0.0.1:7801/ComfyBackendDirect",
        )
    return base_url.rstrip("/")


class ComfyClient:
    """One ComfyUI server (base URL may carry a path prefix such as SwarmUI's `/ComfyBackendDirect`).

    Use as `async with ComfyClient(url) as c: result = await c.run(graph)`.
    """

    # Largest HTTP body we accept: a full-size PNG with its embedded graph is tens of MB, object_info a few.
    max_response_bytes: int = 256 * 1024 * 1024

    def __init__(
        self,
        base_url: str,
        *,
        client_id: str | None = None,
        timeouts: Timeouts | None = None,
        use_websocket: bool = True,
    ) -> None:
        self.base_url = check_base_url(base_url)
        self.client_id = client_id or uuid.uuid4().hex
        self.timeouts = timeouts or Timeouts()
        self.use_websocket = use_websocket
        self._http = httpx.AsyncClient(timeout=self.timeouts.http, trust_env=False)
        self._hub = WsHub(_ws_url(self.base_url, self.client_id), connect_timeout=self.timeouts.connect)

    async def __aenter__(self) -> ComfyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._hub.close()
        await self._http.aclose()

    # --- plain HTTP -------------------------------------------------------------------------------------------

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = self.base_url + path
        try:
            async with self._http.stream(method, url, **kwargs) as resp:
                body = await self._read_bounded(resp, method, path)
            return httpx.Response(resp.status_code, headers=resp.headers, content=body, request=resp.request)
        except httpx.TimeoutException as exc:
            raise ComfyUnreachable(
                f"ComfyUI at {self.base_url} did not answer {method} {path} within {self.timeouts.http:.0f} s",
                hint="the server may be overloaded or hung; check its console",
            ) from exc
        except httpx.TransportError as exc:
            raise ComfyUnreachable(
                f"cannot reach ComfyUI at {self.base_url} ({type(exc).__name__}: {exc})",
                hint="start ComfyUI, or pass the right --server URL (with its path prefix, if any)",
            ) from exc

    async def _read_bounded(self, resp: httpx.Response, method: str, path: str) -> bytes:
        # A hostile or broken server must not make us buffer an endless body (all of it would sit in memory).
        limit = self.max_response_bytes
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ComfyProtocolError(f"{method} {path} announces {declared} bytes, over the {limit} byte limit",
                                     hint="no ComfyUI answer is that large; is this really a ComfyUI server?")
        chunks, size = [], 0
        async for chunk in resp.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise ComfyProtocolError(f"{method} {path} sent more than the {limit} byte limit",
                                         hint="no ComfyUI answer is that large; is this really a ComfyUI server?")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _get_json(self, path: str, **kwargs: Any) -> Any:
        resp = await self._request("GET", path, **kwargs)
        if resp.status_code != 200:
            raise ComfyProtocolError(f"GET {path} answered HTTP {resp.status_code}: {resp.text[:200]!r}")
        try:
            return safe_json.loads(resp.content)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ComfyProtocolError(f"GET {path} did not answer usable JSON ({exc}): {resp.text[:200]!r}") from exc

    async def system_stats(self) -> dict:
        return await self._get_json("/system_stats")

    async def object_info(self, node_class: str | None = None) -> dict:
        return await self._get_json("/object_info" + (f"/{node_class}" if node_class else ""))

    async def loras(self) -> list[str]:
        """The LoRA files this server offers (what LoraLoader's `lora_name` accepts)."""
        resp = await self._request("GET", "/models/loras")
        if resp.status_code == 200:
            try:
                data = safe_json.loads(resp.content)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ComfyProtocolError(f"/models/loras did not answer JSON: {resp.text[:200]!r}") from exc
            if isinstance(data, list):
                return [str(x) for x in data]
            raise ComfyProtocolError(f"/models/loras is not a list: {resp.text[:200]!r}")
        # Older servers lack /models/<folder>: read the choices of LoraLoader instead.
        info = await self.object_info("LoraLoader")
        try:
            return [str(x) for x in info["LoraLoader"]["input"]["required"]["lora_name"][0]]
        except (KeyError, IndexError, TypeError) as exc:
            raise ComfyProtocolError("cannot read the LoRA list from /models/loras or /object_info/LoraLoader") from exc

    async def queue(self) -> dict:
        return await self._get_json("/queue")

    async def history(self, prompt_id: str) -> HistoryEntry | None:
        return parse_history(prompt_id, await self._get_json(f"/history/{prompt_id}"))

    async def view(self, ref: ImageRef) -> ImageResult:
        params = {"filename": ref.filename, "subfolder": ref.subfolder, "type": ref.type}
        resp = await self._request("GET", "/view", params=params)
        if resp.status_code != 200:
            raise ComfyProtocolError(
                f"GET /view for {ref.filename!r} (node {ref.node}) answered HTTP {resp.status_code}",
                hint="the file was deleted from ComfyUI's output folder before we could fetch it",
            )
        return ImageResult(ref, resp.content, resp.headers.get("content-type"))

    async def interrupt(self, prompt_id: str | None = None) -> None:
        """Stop `prompt_id` if it runs, and drop it from the queue if it waits (ComfyUI's /interrupt alone
        ignores a prompt that has not started). Without a prompt_id: interrupt whatever runs."""
        body = {"prompt_id": prompt_id} if prompt_id else {}
        await self._request("POST", "/interrupt", json=body)
        if prompt_id:
            await self._request("POST", "/queue", json={"delete": [prompt_id]})

    async def free(self, *, unload_models: bool = True, free_memory: bool = True) -> None:
        await self._request("POST", "/free", json={"unload_models": unload_models, "free_memory": free_memory})

    async def submit(
        self, workflow: Mapping[str, Any], *, prompt_id: str | None = None, extra_data: dict | None = None
    ) -> Submitted:
        body: dict[str, Any] = {"prompt": dict(workflow), "client_id": self.client_id}
        if prompt_id:
            body["prompt_id"] = prompt_id
        if extra_data:
            body["extra_data"] = extra_data
        resp = await self._request("POST", "/prompt", json=body)
        return parse_submit_response(resp.status_code, resp.content)

    async def preflight(self, workflow: Mapping[str, Any], *, loras_dir: str | Path | None = None, arch: Any = None) -> None:
        """Refuse, before submitting, a graph whose LoRAs are not installed or (when readable) do not fit."""
        if not lora_names_in(workflow):
            return
        check_installed(workflow, await self.loras())
        if loras_dir is not None and arch is not None:
            check_fits(workflow, loras_dir, arch)

    # --- one run, start to images -----------------------------------------------------------------------------

    async def run(
        self,
        workflow: Mapping[str, Any],
        *,
        prompt_id: str | None = None,
        on_event: EventCallback | None = None,
        output_node: str | None = None,
        download: bool = True,
        check_loras: bool = True,
        loras_dir: str | Path | None = None,
        arch: Any = None,
    ) -> RunResult:
        """Submit `workflow`, follow it to the end, return its images (only `output_node`'s if given).

        Raises ComfyValidationError (refused), ComfyExecutionError (a node failed), ComfyInterrupted,
        ComfyTimeout (overall or idle), ComfyUnreachable (server gone), ComfyProtocolError (garbage answers).
        With `check_loras` (default) every LoRA the graph names must be on the server's list first; with
        `loras_dir` and `arch` its keys must also cover the model (else LoraFileError, nothing submitted).
        """
        if check_loras:
            await self.preflight(workflow, loras_dir=loras_dir, arch=arch)
        pid = prompt_id or str(uuid.uuid4())
        t = self.timeouts
        deadline = time.monotonic() + t.overall
        seen: list[ev.Event] = []

        def emit(event: ev.Event) -> None:
            seen.append(event)
            if on_event is not None:
                on_event(event)

        queue = None
        ws_problem = "websocket disabled"
        if self.use_websocket:
            # Subscribe BEFORE submitting: ComfyUI never replays events we were not connected for.
            queue = self._hub.subscribe(pid) if await self._hub.ensure() else None
            ws_problem = self._hub.problem
        try:
            submitted = await self.submit(workflow, prompt_id=pid)
            if submitted.prompt_id != pid:
                # Servers before client-chosen ids ignore ours; follow theirs.
                self._hub.rename(pid, submitted.prompt_id)
                pid = submitted.prompt_id
            emit(ev.Queued(pid, submitted.number))
            finished = False
            if queue is not None:
                finished, ws_problem = await self._follow_ws(queue, pid, emit, deadline)
            used_ws = finished
            if not finished:
                emit(ev.FallbackToPolling(pid, ws_problem))
                entry = await self._poll_history(pid, deadline)
            else:
                entry = await self._history_after_done(pid, deadline)
        except (ComfyTimeout, asyncio.CancelledError):
            # Nobody waits for this prompt any more: do not leave it holding the GPU or its queue place.
            await asyncio.shield(self._abandon(pid))
            raise
        finally:
            self._hub.unsubscribe(pid)
        failure = entry.failure()
        if failure is not None:
            if not used_ws:
                emit(failure)
            raise failure_exception(failure)
        if not used_ws:
            for node, out in entry.outputs.items():
                emit(ev.Output(pid, node, out))
            emit(ev.Done(pid))
        refs = entry.images(output_node)
        images = [await self.view(ref) for ref in refs] if download else []
        return RunResult(pid, images, entry, used_ws, seen)

    async def _abandon(self, pid: str) -> None:
        """Best effort, bounded: interrupt `pid` and drop it from the queue; errors here are not the story."""
        try:
            await asyncio.wait_for(self.interrupt(pid), timeout=min(5.0, self.timeouts.http))
        except (ComfyError, TimeoutError) as exc:
            log.warning("could not interrupt abandoned prompt %s: %s", pid, exc)

    async def _follow_ws(
        self, queue: asyncio.Queue, pid: str, emit: Callable[[ev.Event], None], deadline: float
    ) -> tuple[bool, str]:
        """Take `pid`'s events until Done. (True, "") when done; (False, why) when the websocket failed us."""
        t = self.timeouts
        failure: ev.Error | ev.Interrupted | None = None
        last_life = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= deadline and failure is not None:
                raise failure_exception(failure)
            if now >= deadline:
                raise ComfyTimeout(
                    f"prompt {pid} did not finish within {t.overall:.0f} s",
                    hint="raise the timeout (generate --timeout), or check ComfyUI's queue: a run is bounded on purpose",
                    prompt_id=pid,
                )
            wait = min(deadline - now, t.idle - (now - last_life))
            if wait <= 0:
                # Silence: ask the server directly before calling it idle (we may simply have missed frames).
                state = await self._where_is(pid)
                if state in ("done", "lost"):
                    return False, "websocket went silent"
                if state == "pending":
                    last_life = time.monotonic()  # waiting its turn behind other prompts is not idleness
                    continue
                raise ComfyTimeout(
                    f"prompt {pid} showed no progress for {t.idle:.0f} s",
                    hint="a node may be stuck (check ComfyUI's console); interrupt it in ComfyUI or restart ComfyUI",
                    prompt_id=pid,
                )
            try:
                event = await asyncio.wait_for(queue.get(), timeout=wait)
            except TimeoutError:
                continue
            if isinstance(event, WsLost):
                return False, event.reason
            last_life = time.monotonic()
            emit(event)
            if isinstance(event, ev.Error | ev.Interrupted):
                # Wait (briefly) for Done so that ComfyUI has written the history entry when we raise.
                failure = event
                deadline = min(deadline, time.monotonic() + FAILURE_GRACE)
            if isinstance(event, ev.Done):
                if failure is not None:
                    raise failure_exception(failure)
                return True, ""

    async def _where_is(self, pid: str) -> str:
        """'done' (history written), 'running', 'pending', or 'lost' (neither queued nor in history)."""
        if await self.history(pid) is not None:
            return "done"
        q = await self.queue()
        for state in ("running", "pending"):
            for item in q.get(f"queue_{state}") or []:
                if isinstance(item, list) and len(item) > 1 and item[1] == pid:
                    return state
        # It may have finished between the two calls.
        return "done" if await self.history(pid) is not None else "lost"

    async def _history_after_done(self, pid: str, deadline: float) -> HistoryEntry:
        # ComfyUI writes history before it sends Done; a proxy in between may lag a little. Bounded retries.
        for _ in range(40):
            entry = await self.history(pid)
            if entry is not None:
                return entry
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        raise ComfyProtocolError(
            f"ComfyUI said prompt {pid} finished but /history/{pid} is empty",
            hint="is something between us and ComfyUI caching or rewriting /history?",
            prompt_id=pid,
        )

    async def _poll_history(self, pid: str, deadline: float) -> HistoryEntry:
        """Poll until the history entry appears; tolerate a short outage; notice a prompt the server lost."""
        t = self.timeouts
        interval = t.poll_interval
        down_since: float | None = None
        polls = 0
        while True:
            if time.monotonic() >= deadline:
                raise ComfyTimeout(f"prompt {pid} did not finish within {t.overall:.0f} s", prompt_id=pid)
            try:
                polls += 1
                entry = await self.history(pid)
                if entry is not None:
                    return entry
                # Every few polls make sure the prompt still exists (a restarted server forgets its queue).
                if polls % 4 == 0 and await self._where_is(pid) == "lost":
                    raise ComfyUnreachable(
                        f"ComfyUI lost prompt {pid}: it is neither queued nor in the history (did the server restart?)",
                        hint="submit the prompt again",
                        prompt_id=pid,
                    )
                down_since = None
            except ComfyUnreachable as exc:
                if exc.prompt_id == pid:
                    raise
                now = time.monotonic()
                down_since = down_since or now
                if now - down_since > t.unreachable_grace:
                    raise ComfyUnreachable(
                        f"ComfyUI at {self.base_url} stopped answering while prompt {pid} ran "
                        f"(no answer for {t.unreachable_grace:.0f} s)",
                        hint="the server died or restarted: check its console, then submit again",
                        prompt_id=pid,
                    ) from exc
            await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            interval = min(interval * 1.5, t.poll_interval_max)
