"""Server-Sent Events for one job, read from its events.jsonl by byte offset.

Each SSE event carries `id: <offset after its line>`, so a browser that reconnects sends `Last-Event-ID` and gets
exactly what it missed, whatever it missed (a reload, a server restart). The translation to the page's event names
(STUDIO_API.md) happens here; the file written by the trainer is the only source. The stream ends after a final
state, and in any case after `sse_max_s` (the browser then reconnects from its last id): every loop is bounded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..train import runner
from ..train.jobs import Job
from .views import file_url

HEARTBEAT_S = 15.0
RECONCILE_S = 2.0


def lines_after(job: Job, offset: int) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """(offset after the line, event) for each whole line after `offset` (Job.event_lines_after)."""
    return job.event_lines_after(offset)


def _rel(job: Job, path: str) -> str | None:
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    try:
        return p.relative_to(job.dir).as_posix()
    except ValueError:
        return None


def translate(job: Job, event: dict[str, Any], base: str, done_lora: list[str], *,
              latest: bool = True) -> list[tuple[str, dict[str, Any]]]:
    """The page's events for one line of events.jsonl (`latest`: no line follows it yet)."""
    kind = event.get("type")
    if kind == "progress":
        return [("progress", {"step": event.get("step"), "total": event.get("total_steps"),
                              "loss": None if event.get("loss_is_nan") else event.get("loss"),
                              "loss_is_nan": bool(event.get("loss_is_nan")), "eta_s": event.get("eta_s"),
                              "epoch": event.get("epoch"), "lr": event.get("lr")})]
    if kind == "checkpoint":
        return [("checkpoint", {"file": Path(str(event.get("path", ""))).name, "step": event.get("step"),
                                "epoch": event.get("epoch")})]
    if kind == "sample":
        rel = _rel(job, str(event.get("path", "")))
        return [("sample", {"url": file_url(base, job.id, rel) if rel else None, "step": event.get("step"),
                            "prompt": event.get("prompt"), "index": event.get("index"), "seed": event.get("seed")})]
    if kind == "log":
        return [("log", {"level": event.get("level"), "message": event.get("message")})]
    if kind == "error":
        return [("error", {"message": event.get("message"), "diagnosis": event.get("diagnosis"),
                           "hint": event.get("hint")})]
    if kind == "done":
        done_lora.append(str(event.get("lora_path")))
        return []
    if kind == "state":
        state = event.get("state")
        # The runner appends the final state event just before job.json takes it: wait for job.json, so that a
        # page reading the job once its stream ended sees the state the stream announced (not for an earlier
        # attempt's end that later lines follow: job.json holds the newer state then).
        info = (_final_info(job) if latest else job.info) if state in runner.FINAL_STATES else {}
        out = [("state", {"state": state, "message": event.get("message")})]
        if state == "done":
            lora = done_lora[-1] if done_lora else info.get("lora_path")
            out.append(("finished", {"lora": lora, "lora_name": Path(lora).name if lora else None}))
        elif state == "failed":
            out.append(("failed", {"message": event.get("message") or info.get("message"),
                                   "diagnosis": info.get("diagnosis"), "hint": info.get("hint")}))
        return out
    return []


def _final_info(job: Job, wait_s: float = 2.0) -> dict[str, Any]:
    """job.json once it holds the final state (the runner writes the state event just before it)."""
    deadline = time.monotonic() + wait_s
    while True:
        info = job.info
        if info.get("state") in runner.FINAL_STATES or time.monotonic() >= deadline:
            return info
        time.sleep(0.05)


def _format(name: str, data: dict[str, Any], event_id: int) -> str:
    return f"id: {event_id}\nevent: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def stream(job: Job, offset: int, *, base: str, poll_s: float, max_s: float) -> Iterator[str]:
    deadline = time.monotonic() + max_s
    last_sent = last_check = time.monotonic()
    done_lora: list[str] = []
    yield "retry: 2000\n\n"
    while True:
        lines, end = lines_after(job, offset)
        for i, (line_end, event) in enumerate(lines):
            for name, data in translate(job, event, base, done_lora, latest=i == len(lines) - 1):
                yield _format(name, data, line_end)
                last_sent = time.monotonic()
            offset = line_end
            if event.get("type") == "state" and event.get("state") in runner.FINAL_STATES:
                return
        offset = end
        now = time.monotonic()
        if not lines and now - last_check >= RECONCILE_S:
            last_check = now
            # A final state in job.json with no final event after `offset` (an old job, or a worker that died):
            # say so once and end, instead of waiting for an event that will not come.
            state = runner.reconcile(job)
            if state in runner.FINAL_STATES and not lines_after(job, offset)[0]:
                yield _format("state", {"state": state, "message": job.info.get("message")}, offset)
                return
        if now >= deadline:
            return
        if now - last_sent >= HEARTBEAT_S:
            yield ": keep-alive\n\n"
            last_sent = now
        time.sleep(poll_s)
