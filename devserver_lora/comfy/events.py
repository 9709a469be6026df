"""Typed events of one ComfyUI prompt's life, as the client hands them to callers.

They are built from websocket messages (see `protocol.parse_message`) or, when the websocket is gone, from
`/history`. Every event carries the prompt_id it belongs to, so a caller never mixes up two runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Queued:
    """POST /prompt accepted the graph; `number` is its place in ComfyUI's queue counter."""

    prompt_id: str
    number: int | None = None


@dataclass(frozen=True)
class Started:
    prompt_id: str


@dataclass(frozen=True)
class Cached:
    """Nodes whose outputs ComfyUI reuses from an earlier run (an identical resubmission caches everything)."""

    prompt_id: str
    nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Executing:
    prompt_id: str
    node: str


@dataclass(frozen=True)
class Progress:
    """Step progress inside one node (a sampler's steps)."""

    prompt_id: str
    node: str | None
    value: int
    max: int


@dataclass(frozen=True)
class Output:
    """A node finished and produced UI output (SaveImage: `{"images": [{filename, subfolder, type}]}`)."""

    prompt_id: str
    node: str
    output: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Preview:
    """A binary preview frame (JPEG/PNG bytes) while a sampler runs; prompt_id is None for legacy frames."""

    prompt_id: str | None
    node: str | None
    mime: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Error:
    prompt_id: str
    node_id: str | None
    node_type: str | None
    exception_type: str | None
    message: str
    traceback: tuple[str, ...] = ()


@dataclass(frozen=True)
class Interrupted:
    prompt_id: str
    node_id: str | None = None
    node_type: str | None = None


@dataclass(frozen=True)
class Done:
    """`executing` with `node: null` for our prompt: ComfyUI has written the history entry."""

    prompt_id: str


@dataclass(frozen=True)
class Status:
    """Queue length broadcast to every connected client; not tied to a prompt."""

    queue_remaining: int | None
    sid: str | None = None


@dataclass(frozen=True)
class FallbackToPolling:
    """The websocket could not connect or dropped; the client now polls `/history` instead."""

    prompt_id: str
    reason: str


Event = (
    Queued
    | Started
    | Cached
    | Executing
    | Progress
    | Output
    | Preview
    | Error
    | Interrupted
    | Done
    | Status
    | FallbackToPolling
)

# Events that are about one prompt (everything but Status); used to filter out other clients' traffic.
PROMPT_EVENTS = (Queued, Started, Cached, Executing, Progress, Output, Error, Interrupted, Done, FallbackToPolling)
