"""ComfyUI client: HTTP + websocket, typed events and errors.

    from devserver_lora.comfy import ComfyClient, ComfySync, Timeouts, events
"""

from . import events
from .client import ComfyClient, ImageResult, RunResult, Timeouts
from .protocol import HistoryEntry, ImageRef
from .sync import ComfySync, run_sync

__all__ = [
    "ComfyClient",
    "ComfySync",
    "HistoryEntry",
    "ImageRef",
    "ImageResult",
    "RunResult",
    "Timeouts",
    "events",
    "run_sync",
]
