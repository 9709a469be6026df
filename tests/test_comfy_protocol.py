"""Parsing the recorded ComfyUI traffic into typed events and errors."""

from __future__ import annotations

import json
import struct

import pytest
from conftest import COMFY_FIXTURES

from devserver_lora.comfy import events as ev
from devserver_lora.comfy.protocol import (
    failure_exception,
    parse_binary_frame,
    parse_history,
    parse_json_frame,
    parse_submit_response,
)
from devserver_lora.errors import ComfyExecutionError, ComfyInterrupted, ComfyProtocolError, ComfyValidationError


def _lines(name: str) -> list[str]:
    return [line for line in (COMFY_FIXTURES / name).read_text().splitlines() if line.strip()]


def _events(name: str) -> list[ev.Event]:
    out = []
    for line in _lines(name):
        if json.loads(line).get("_binary_frame"):
            continue
        event = parse_json_frame(line)
        if event is not None:
            out.append(event)
    return out


def test_success_trace_events() -> None:
    events = _events("ws_trace_success.jsonl")
    pid = "9153efc0-286a-4418-8b3b-761ad457428e"
    assert isinstance(events[0], ev.Status) and events[0].queue_remaining == 1
    assert ev.Started(pid) in events and ev.Cached(pid, ()) in events
    assert [e.value for e in events if isinstance(e, ev.Progress)] == [1, 2, 3, 4]
    out = next(e for e in events if isinstance(e, ev.Output))
    assert out.node == "9" and out.output["images"][0]["filename"] == "tiny_sd3_00001_.png"
    assert events[-1] == ev.Done(pid)


def test_error_and_interrupt_traces() -> None:
    err = next(e for e in _events("ws_trace_error.jsonl") if isinstance(e, ev.Error))
    assert (err.node_id, err.node_type, err.exception_type, err.message) == ("7", "KSampler", "AssertionError", "(64, 32)")
    exc = failure_exception(err)
    assert isinstance(exc, ComfyExecutionError) and "node 7 (KSampler)" in str(exc) and exc.traceback
    intr = next(e for e in _events("ws_trace_interrupted.jsonl") if isinstance(e, ev.Interrupted))
    exc2 = failure_exception(intr)
    assert isinstance(exc2, ComfyInterrupted) and "node 7 (KSampler)" in str(exc2)


def test_preview_frames_from_recorded_summaries() -> None:
    for line in _lines("ws_trace_preview_with_metadata_binary.jsonl"):
        rec = json.loads(line)
        if not rec.get("_binary_frame"):
            continue
        meta = json.dumps(rec["metadata"]).encode()
        frame = struct.pack(">I", 4) + struct.pack(">I", len(meta)) + meta + bytes.fromhex(rec["image_magic_hex"])
        preview = parse_binary_frame(frame)
        assert preview is not None and preview.node == "7" and preview.mime == "image/jpeg"
        assert preview.prompt_id == rec["metadata"]["prompt_id"]
    legacy = next(json.loads(x) for x in _lines("ws_trace_preview_legacy_binary.jsonl") if "_binary_frame" in x)
    frame = bytes.fromhex(legacy["head_hex"])
    preview = parse_binary_frame(frame)
    assert preview is not None and preview.prompt_id is None and preview.mime == "image/jpeg"


@pytest.mark.parametrize("garbage", ["not json", "[]", '{"type": "x"}', '{"type": 1, "data": {}}'])
def test_garbage_text_frames(garbage: str) -> None:
    with pytest.raises(ComfyProtocolError):
        parse_json_frame(garbage)


def test_short_or_bad_binary_frames() -> None:
    with pytest.raises(ComfyProtocolError):
        parse_binary_frame(b"\x00\x01")
    with pytest.raises(ComfyProtocolError):
        parse_binary_frame(struct.pack(">II", 4, 999) + b"{}")
    assert parse_binary_frame(struct.pack(">II", 9, 0)) is None


def test_reconnect_executing_without_prompt_id_is_ignored() -> None:
    assert parse_json_frame('{"type": "executing", "data": {"node": "7"}}') is None


@pytest.mark.parametrize(
    ("fixture", "needle"),
    [
        ("post_prompt_400_missing_lora.json", "LoRA 'does_not_exist.safetensors' is not installed in ComfyUI; installed: "),
        ("post_prompt_400_missing_required_input.json", "node 2 (LoraLoader): Required input is missing (lora_name)"),
        ("post_prompt_400_value_bigger_than_max.json", "node 2 (LoraLoader): Value 500.0 bigger than max of 100.0"),
        ("post_prompt_400_return_type_mismatch.json", "node 7 (KSampler): Return type mismatch"),
        ("post_prompt_400_unknown_class_type.json", "node LoraLoaderTypo does not exist. (Node ID '#2')"),
        ("post_prompt_400_no_outputs.json", "Prompt has no outputs"),
        ("post_prompt_400_no_prompt.json", "No prompt provided"),
    ],
)
def test_400_bodies_become_teaching_errors(fixture: str, needle: str) -> None:
    rec = json.loads((COMFY_FIXTURES / fixture).read_text())
    with pytest.raises(ComfyValidationError) as info:
        parse_submit_response(rec["http_status"], json.dumps(rec["response"]))
    assert needle in str(info.value)
    assert info.value.node_errors == rec["response"]["node_errors"]


def test_submit_200_and_malformed() -> None:
    rec = json.loads((COMFY_FIXTURES / "post_prompt_success.json").read_text())
    sub = parse_submit_response(200, json.dumps(rec["response"]))
    assert (sub.prompt_id, sub.number) == (rec["response"]["prompt_id"], 0)
    for status, body in [(200, "<html>"), (200, "{}"), (500, "oops"), (404, "")]:
        with pytest.raises(ComfyProtocolError):
            parse_submit_response(status, body)


def test_history_entries() -> None:
    for name, status in [("history_success.json", "success"), ("history_error.json", "error"), ("history_interrupted.json", "error")]:
        body = json.loads((COMFY_FIXTURES / name).read_text())
        pid = next(iter(body))
        entry = parse_history(pid, body)
        assert entry is not None and entry.status_str == status
        if status == "success":
            assert [i.filename for i in entry.images()] == ["tiny_sd3_00001_.png"] and entry.failure() is None
        else:
            assert entry.images() == [] and entry.failure() is not None
    assert parse_history("x", json.loads((COMFY_FIXTURES / "history_unknown_id.json").read_text())) is None
    with pytest.raises(ComfyProtocolError):
        parse_history("x", [])


@pytest.mark.parametrize("name", sorted(p.name for p in COMFY_FIXTURES.glob("post_prompt_400_*.json")))
def test_every_recorded_refusal_says_what_to_do(name: str) -> None:
    recorded = json.loads((COMFY_FIXTURES / name).read_text())
    with pytest.raises(ComfyValidationError) as info:
        parse_submit_response(recorded["http_status"], json.dumps(recorded["response"]))
    assert info.value.hint and "\n  -> " in str(info.value)
    if "missing_lora" in name:
        assert "devserver_lora.train install" in info.value.hint  # a command that exists


def test_a_refusal_without_an_error_object_still_reads() -> None:
    # The parser only hands it bodies with an "error", but validation_error is a public function of its own:
    # a body without "error", or with a non-object one, gets the generic head, not an AttributeError on None.
    from devserver_lora.comfy.protocol import validation_error

    for body in ({}, {"error": None, "node_errors": []}, {"error": 7}):
        err = validation_error(body)
        assert str(err).startswith("ComfyUI refused the graph: invalid prompt") and err.node_errors == {}
