"""One websocket per client, shared by all its concurrent prompts, events routed by prompt_id.

Why shared: ComfyUI sends a prompt's per-node events to the socket of the client_id it was queued with, and
broadcasts every queue change (`status`) to EVERY socket; N sockets for N jobs means N^2 frames. One socket per
client, subscribed to before each submission (missed events are never replayed), avoids both problems.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import websockets
from websockets.asyncio.client import ClientConnection

from ..errors import ComfyProtocolError
from . import events as ev
from .protocol import parse_binary_frame, parse_json_frame

log = logging.getLogger(__name__)

# This many unparseable frames in a row and the socket is treated as broken (subscribers fall back to polling).
MAX_GARBAGE_FRAMES = 20


@dataclass(frozen=True)
class WsLost:
    """Pushed to every subscriber when the shared websocket fails; `reason` says how."""

    reason: str


class WsHub:
    def __init__(self, url: str, *, connect_timeout: float) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self._subs: dict[str, asyncio.Queue] = {}
        self._running: str | None = None  # prompt whose legacy previews (no prompt_id) we are receiving
        self.problem = ""

    @property
    def alive(self) -> bool:
        return self._ws is not None and self._reader is not None and not self._reader.done()

    async def ensure(self) -> bool:
        """Connect if needed; False (with `problem` set) when the websocket is unavailable."""
        async with self._lock:
            if self.alive:
                return True
            try:
                # close_timeout: a server that never answers our close frame must not hold us (default 10 s).
                self._ws = await asyncio.wait_for(
                    websockets.connect(self.url, max_size=64 * 2**20, open_timeout=self.connect_timeout,
                                       close_timeout=min(2.0, self.connect_timeout), proxy=None),
                    self.connect_timeout + 1,
                )
            except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                self.problem = f"websocket did not connect: {type(exc).__name__}: {exc}"
                log.info("%s (%s); will poll /history", self.problem, self.url)
                self._ws = None
                return False
            self._reader = asyncio.get_running_loop().create_task(self._read(self._ws))
            return True

    def subscribe(self, prompt_id: str) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        self._subs[prompt_id] = queue
        if not self.alive:
            queue.put_nowait(WsLost(self.problem or "websocket not connected"))
        return queue

    def unsubscribe(self, prompt_id: str) -> None:
        self._subs.pop(prompt_id, None)

    def rename(self, old: str, new: str) -> None:
        """Servers that ignore our prompt_id assign their own: move the subscription."""
        if old in self._subs:
            self._subs[new] = self._subs.pop(old)

    async def _read(self, ws: ClientConnection) -> None:
        garbage = 0
        reason = "websocket closed"
        try:
            while True:
                frame = await ws.recv()
                try:
                    event = parse_binary_frame(frame) if isinstance(frame, bytes) else parse_json_frame(frame)
                except ComfyProtocolError as exc:
                    garbage += 1
                    log.warning("skipping bad websocket frame (%s)", exc)
                    if garbage >= MAX_GARBAGE_FRAMES:
                        reason = f"{garbage} unparseable websocket frames in a row"
                        return
                    continue
                garbage = 0
                self._route(event)
        except websockets.ConnectionClosed as exc:
            reason = f"websocket closed ({exc})"
        except (OSError, websockets.WebSocketException) as exc:
            reason = f"websocket failed ({type(exc).__name__}: {exc})"
        finally:
            self.problem = reason
            for queue in list(self._subs.values()):
                queue.put_nowait(WsLost(reason))
            with contextlib.suppress(Exception):
                await ws.close()

    def _route(self, event: ev.Event | None) -> None:
        if event is None or isinstance(event, ev.Status):
            return
        pid: str | None = event.prompt_id  # every event but Status has one (None on a legacy preview frame)
        if isinstance(event, ev.Started | ev.Executing):
            self._running = pid
        if isinstance(event, ev.Preview) and pid is None:
            pid = self._running  # legacy preview frames carry no prompt_id: they belong to the running prompt
        queue = self._subs.get(pid) if pid is not None else None
        if queue is not None:
            queue.put_nowait(event)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        self._ws = self._reader = None
