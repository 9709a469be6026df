"""A small synchronous facade over `ComfyClient` for DevServer's Flask code (Waitress worker threads).

Each call runs the async client to completion in a private event loop: `asyncio.run` in the calling thread, or,
when that thread already runs a loop (DevServer's own async Stage-4 code), in a short-lived helper thread. No
state is shared between calls, so any number of worker threads may call at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from .client import ComfyClient, EventCallback, RunResult, Timeouts, check_base_url
from .protocol import HistoryEntry

T = TypeVar("T")


def run_sync(factory: Callable[[], Awaitable[T]]) -> T:
    """Run the coroutine made by `factory` to completion from synchronous code, whatever thread we are in."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_as_coro(factory))
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="comfy-sync") as pool:
        return pool.submit(asyncio.run, _as_coro(factory)).result()


async def _as_coro(factory: Callable[[], Awaitable[T]]) -> T:
    return await factory()


class ComfySync:
    """Blocking twin of ComfyClient: `ComfySync(url).run(graph)` -> RunResult."""

    def __init__(self, base_url: str, *, timeouts: Timeouts | None = None, use_websocket: bool = True) -> None:
        self.base_url = base_url
        self.timeouts = timeouts or Timeouts()
        self.use_websocket = use_websocket
        check_base_url(base_url)  # fail now, not on first use

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        async def go() -> Any:
            async with ComfyClient(self.base_url, timeouts=self.timeouts, use_websocket=self.use_websocket) as c:
                return await getattr(c, method)(*args, **kwargs)

        return run_sync(go)

    def run(
        self,
        workflow: Mapping[str, Any],
        *,
        prompt_id: str | None = None,
        on_event: EventCallback | None = None,
        output_node: str | None = None,
        check_loras: bool = True,
        loras_dir: str | Path | None = None,
        arch: Any = None,
    ) -> RunResult:
        """Submit and wait; `on_event` is called from the helper loop's thread, keep it quick."""
        return self._call(
            "run",
            workflow,
            prompt_id=prompt_id,
            on_event=on_event,
            output_node=output_node,
            check_loras=check_loras,
            loras_dir=loras_dir,
            arch=arch,
        )

    def loras(self) -> list[str]:
        return self._call("loras")

    def object_info(self, node_class: str | None = None) -> dict:
        return self._call("object_info", node_class)

    def system_stats(self) -> dict:
        return self._call("system_stats")

    def queue(self) -> dict:
        return self._call("queue")

    def history(self, prompt_id: str) -> HistoryEntry | None:
        return self._call("history", prompt_id)

    def interrupt(self, prompt_id: str | None = None) -> None:
        self._call("interrupt", prompt_id)

    def free(self, *, unload_models: bool = True, free_memory: bool = True) -> None:
        self._call("free", unload_models=unload_models, free_memory=free_memory)
