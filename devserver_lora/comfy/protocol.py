"""Parsing ComfyUI's wire formats (v0.3.75): websocket frames, /prompt answers, /history entries.

Pure functions, no I/O, so the recorded traffic in the fixtures tests them directly. Anything malformed raises
`ComfyProtocolError` naming what was expected; the client decides whether to skip a bad frame or give up.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

from .. import safe_json
from ..errors import ComfyExecutionError, ComfyInterrupted, ComfyProtocolError, ComfyValidationError, UnsafePathError
from ..invocation import train_command
from ..paths import check_relative_name, check_simple_name
from . import events as ev

# Binary frame types (server.py BinaryEventTypes): 1 preview image, 2 unencoded preview, 3 text, 4 preview+metadata.
_PREVIEW_IMAGE = 1
_PREVIEW_WITH_METADATA = 4
_LEGACY_IMAGE_TYPES = {1: "image/jpeg", 2: "image/png"}


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def parse_json_frame(text: str | bytes) -> ev.Event | None:
    """One text frame -> a typed event, or None for message types we do not model (progress_state, feature_flags)."""
    try:
        msg = safe_json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ComfyProtocolError(f"websocket frame is not JSON: {str(text)[:80]!r}") from exc
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str) or not isinstance(msg.get("data"), dict):
        raise ComfyProtocolError(f"websocket frame lacks 'type'/'data': {str(text)[:80]!r}")
    kind, data = msg["type"], msg["data"]
    pid = data.get("prompt_id")
    if kind == "status":
        status = data.get("status") or {}
        remaining = (status.get("exec_info") or {}).get("queue_remaining")
        return ev.Status(queue_remaining=remaining if isinstance(remaining, int) else None, sid=data.get("sid"))
    if pid is None:
        # e.g. the `executing {node}` resent on reconnect carries no prompt_id: we cannot attribute it.
        return None
    pid = str(pid)
    if kind == "execution_start":
        return ev.Started(pid)
    if kind == "execution_cached":
        return ev.Cached(pid, tuple(str(n) for n in data.get("nodes") or ()))
    if kind == "executing":
        node = data.get("node")
        return ev.Done(pid) if node is None else ev.Executing(pid, str(node))
    if kind == "progress":
        try:
            return ev.Progress(pid, _str_or_none(data.get("node")), int(data["value"]), int(data["max"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ComfyProtocolError(f"progress frame without numeric value/max: {data!r}") from exc
    if kind == "executed":
        output = data.get("output")
        return ev.Output(pid, str(data.get("node")), output if isinstance(output, dict) else {})
    if kind == "execution_error":
        return error_event(data)
    if kind == "execution_interrupted":
        return ev.Interrupted(pid, _str_or_none(data.get("node_id")), _str_or_none(data.get("node_type")))
    return None  # execution_success, progress_state, feature_flags, ...: nothing a caller needs


def parse_binary_frame(frame: bytes) -> ev.Preview | None:
    """A binary frame -> Preview (legacy type 1 has no prompt_id; type 4 carries JSON metadata)."""
    if len(frame) < 8:
        raise ComfyProtocolError(f"binary websocket frame of {len(frame)} bytes is too short")
    (event_type,) = struct.unpack(">I", frame[:4])
    if event_type == _PREVIEW_IMAGE:
        (image_type,) = struct.unpack(">I", frame[4:8])
        return ev.Preview(None, None, _LEGACY_IMAGE_TYPES.get(image_type, "application/octet-stream"), frame[8:])
    if event_type == _PREVIEW_WITH_METADATA:
        (meta_len,) = struct.unpack(">I", frame[4:8])
        if 8 + meta_len > len(frame):
            raise ComfyProtocolError("preview frame metadata runs past the end of the frame")
        try:
            meta = safe_json.loads(frame[8 : 8 + meta_len])
        except ValueError as exc:
            raise ComfyProtocolError("preview frame metadata is not JSON") from exc
        if not isinstance(meta, dict):
            raise ComfyProtocolError("preview frame metadata is not an object")
        return ev.Preview(
            _str_or_none(meta.get("prompt_id")),
            _str_or_none(meta.get("node_id")),
            str(meta.get("image_type") or "application/octet-stream"),
            frame[8 + meta_len :],
        )
    return None


def error_event(data: dict) -> ev.Error:
    tb = data.get("traceback") or ()
    return ev.Error(
        prompt_id=str(data.get("prompt_id")),
        node_id=_str_or_none(data.get("node_id")),
        node_type=_str_or_none(data.get("node_type")),
        exception_type=_str_or_none(data.get("exception_type")),
        message=str(data.get("exception_message") or "").strip(),
        traceback=tuple(str(x) for x in tb) if isinstance(tb, list) else (),
    )


# --- POST /prompt -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submitted:
    prompt_id: str
    number: int | None


def check_prompt_id(prompt_id: str) -> str:
    """A prompt id from the server, refused unless it is a plain token (ComfyUI's are UUIDs).

    It goes into `/history/{id}` URLs and into the names of the files `generate` writes, so a hostile or broken
    server answering `../../x` must not steer either.
    """
    try:
        return check_simple_name(prompt_id, what="prompt_id")
    except UnsafePathError as exc:
        raise ComfyProtocolError(
            f"the server answered a prompt_id that is not a plain token: {prompt_id[:80]!r}",
            hint="ComfyUI answers a UUID; is this URL really a ComfyUI server?",
        ) from exc


_IMAGE_TYPES = ("output", "temp", "input")


def image_ref(node: str, item: dict) -> ImageRef:
    """One `images` entry of /history, checked: the names are passed to /view and may end up in local paths."""
    subfolder, kind = item.get("subfolder") or "", item.get("type") or "output"
    try:
        filename = check_relative_name(item.get("filename"), what="image filename")
        if "/" in filename:
            raise UnsafePathError(f"image filename {filename!r} names a folder")
        if subfolder:
            check_relative_name(subfolder, what="image subfolder")
    except UnsafePathError as exc:
        raise ComfyProtocolError(
            f"/history lists an unsafe image name for node {node}: {exc.message}",
            hint="ComfyUI never answers such names; do not trust this server",
        ) from exc
    if kind not in _IMAGE_TYPES or not isinstance(subfolder, str):
        raise ComfyProtocolError(f"/history lists image type {kind!r} for node {node}; expected one of {_IMAGE_TYPES}")
    return ImageRef(node, filename, subfolder, kind)


def parse_submit_response(status: int, body: bytes | str) -> Submitted:
    """200 -> Submitted; 400 -> ComfyValidationError naming each refused node; anything else -> ComfyProtocolError."""
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    if status == 200:
        if not isinstance(data, dict) or not isinstance(data.get("prompt_id"), str):
            raise ComfyProtocolError(f"POST /prompt answered 200 without a prompt_id: {str(body)[:200]!r}")
        number = data.get("number")
        return Submitted(check_prompt_id(data["prompt_id"]), number if isinstance(number, int) else None)
    if status == 400 and isinstance(data, dict) and isinstance(data.get("error"), dict | str):
        raise validation_error(data)
    raise ComfyProtocolError(
        f"POST /prompt answered HTTP {status}: {str(body)[:200]!r}",
        hint="is this URL really a ComfyUI server (with its path prefix, e.g. /ComfyBackendDirect for SwarmUI)?",
    )


def _node_error_line(node_id: str, class_type: str, err: dict) -> str:
    kind = err.get("type")
    extra = err.get("extra_info") or {}
    input_name = extra.get("input_name") or err.get("details") or "?"
    if kind == "value_not_in_list":
        allowed = (extra.get("input_config") or [[]])[0]
        allowed_list = ", ".join(map(str, allowed)) if isinstance(allowed, list) else "?"
        value = extra.get("received_value")
        if input_name == "lora_name":
            return (
                f"node {node_id} ({class_type}): LoRA {value!r} is not installed in ComfyUI; "
                f"installed: {allowed_list or '(none)'}"
            )
        return f"node {node_id} ({class_type}): {input_name} = {value!r} is not one of: {allowed_list}"
    message = err.get("message") or kind or "invalid"
    details = err.get("details")
    text = f"node {node_id} ({class_type}): {message}"
    if details and details != message:
        text += f" ({details})"
    return text


def validation_error(data: dict) -> ComfyValidationError:
    """Build the typed error for a 400 from /prompt, one line per refused input."""
    error = data.get("error")
    if isinstance(error, str):  # very old servers answer a bare string
        error = {"type": "invalid_prompt", "message": error}
    elif not isinstance(error, dict):  # no "error" at all: the generic head below, not an AttributeError
        error = {}
    node_errors = data.get("node_errors")
    if not isinstance(node_errors, dict):
        node_errors = {}
    lines: list[str] = []
    for node_id, info in node_errors.items():
        if not isinstance(info, dict):
            continue
        class_type = str(info.get("class_type") or "?")
        for err in info.get("errors") or []:
            if isinstance(err, dict):
                lines.append(_node_error_line(str(node_id), class_type, err))
    head = str(error.get("message") or error.get("type") or "invalid prompt")
    details = error.get("details")
    if not lines and details and details != head:
        head += f" ({details})"
    message = "ComfyUI refused the graph: " + head
    if lines:
        message += ":\n  " + "\n  ".join(lines)
    return ComfyValidationError(message, hint=_refusal_hint(error, lines), error=error, node_errors=node_errors)


def missing_lora_hint() -> str:
    """What to do when ComfyUI lacks a LoRA the graph names."""
    return (f"copy the .safetensors file into ComfyUI's models/loras folder (a trained job: "
            f"`{train_command('install JOB --loras-dir DIR')}`), or fix the LoRA name in the config")


def _refusal_hint(error: dict, lines: list[str]) -> str:
    """What to do about a 400 from /prompt; nothing was queued, so nothing ran."""
    if any("is not installed in ComfyUI" in line for line in lines):
        return missing_lora_hint()
    if error.get("type") == "invalid_prompt":
        return "the graph names a node class this ComfyUI does not have: install the custom node or fix class_type"
    if error.get("type") == "prompt_no_outputs":
        return "the graph has no output node (e.g. SaveImage): fix the chunk's workflow"
    if lines:
        return ("fix each input listed above in the chunk's workflow or the config's parameters (`generate --set "
                "KEY=VALUE` overrides one), then render again; nothing was queued")
    return "nothing was queued; ComfyUI's console says more about why the graph was refused"


# --- /history -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRef:
    node: str
    filename: str
    subfolder: str
    type: str


@dataclass(frozen=True)
class HistoryEntry:
    prompt_id: str
    status_str: str | None
    completed: bool
    outputs: dict[str, dict] = field(default_factory=dict)
    messages: tuple[tuple[str, dict], ...] = ()

    def images(self, node_id: str | None = None) -> list[ImageRef]:
        """Every image this prompt saved (or only `node_id`'s), in node order as ComfyUI listed them."""
        refs: list[ImageRef] = []
        for node, out in self.outputs.items():
            if node_id is not None and node != node_id:
                continue
            for item in out.get("images") or []:
                if isinstance(item, dict) and isinstance(item.get("filename"), str):
                    refs.append(image_ref(node, item))
        return refs

    def failure(self) -> ev.Error | ev.Interrupted | None:
        for kind, data in self.messages:
            if kind == "execution_error":
                return error_event({**data, "prompt_id": self.prompt_id})
            if kind == "execution_interrupted":
                return ev.Interrupted(self.prompt_id, _str_or_none(data.get("node_id")), _str_or_none(data.get("node_type")))
        return None


def parse_history(prompt_id: str, body: Any) -> HistoryEntry | None:
    """`/history/{id}` JSON -> its entry, or None while ComfyUI has not written it (answer `{}`)."""
    if not isinstance(body, dict):
        raise ComfyProtocolError(f"/history/{prompt_id} is not a JSON object: {str(body)[:120]!r}")
    entry = body.get(prompt_id)
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise ComfyProtocolError(f"/history/{prompt_id} entry is not an object")
    status = entry.get("status") or {}
    outputs = entry.get("outputs") or {}
    messages = []
    for item in status.get("messages") or []:
        if isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[1], dict):
            messages.append((str(item[0]), item[1]))
    return HistoryEntry(
        prompt_id=prompt_id,
        status_str=status.get("status_str"),
        completed=bool(status.get("completed")),
        outputs={str(k): v for k, v in outputs.items() if isinstance(v, dict)},
        messages=tuple(messages),
    )


# --- failures as exceptions ---------------------------------------------------------------------------------------


def execution_exception(err: ev.Error) -> ComfyExecutionError:
    where = f"node {err.node_id} ({err.node_type})" if err.node_id else "an unknown node"
    what = f"{err.exception_type}: {err.message}" if err.exception_type else err.message
    text = f"{what} {err.message}".lower()
    if "out of memory" in text or "outofmemory" in text:
        hint = "the GPU ran out of memory: lower the resolution or batch size, or restart ComfyUI to free its models"
    elif err.node_type and "lora" in err.node_type.lower():
        hint = "the LoRA file could not be applied: check that it was trained for this base model"
    else:
        hint = "ComfyUI's console has the full traceback"
    return ComfyExecutionError(
        f"ComfyUI failed while running {where}: {what}",
        hint=hint,
        prompt_id=err.prompt_id,
        node_id=err.node_id,
        node_type=err.node_type,
        exception_type=err.exception_type,
        traceback=list(err.traceback),
    )


def interrupted_exception(event: ev.Interrupted) -> ComfyInterrupted:
    where = f" at node {event.node_id} ({event.node_type})" if event.node_id else ""
    return ComfyInterrupted(
        f"prompt {event.prompt_id} was interrupted{where}",
        hint="someone pressed cancel or called /interrupt; submit again with a new seed to render",
        prompt_id=event.prompt_id,
    )


def failure_exception(event: ev.Error | ev.Interrupted) -> ComfyExecutionError | ComfyInterrupted:
    if isinstance(event, ev.Error):
        return execution_exception(event)
    return interrupted_exception(event)
