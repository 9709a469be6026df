"""Typed job events: round trips, NaN loss, and refusal of malformed events."""

from __future__ import annotations

import json
import math

import pytest

from devserver_lora.errors import JobError
from devserver_lora.train.events import (
    CheckpointEvent,
    DoneEvent,
    ErrorEvent,
    LogEvent,
    ProgressEvent,
    StateEvent,
    event_to_dict,
    parse_event,
)


@pytest.mark.parametrize(
    "event",
    [
        StateEvent(state="running", message="started"),
        ProgressEvent(step=3, total_steps=10, epoch=1, total_epochs=2, loss=0.25, eta_s=12.0, it_per_s=1.5),
        CheckpointEvent(path="/x/a-000001.safetensors", step=5, epoch=1),
        LogEvent(level="warning", message="lora key not loaded"),
        ErrorEvent(diagnosis="oom", message="CUDA out of memory", hint="lower the batch size"),
        DoneEvent(lora_path="/x/a.safetensors", steps=10),
    ],
)
def test_round_trip_through_json(event):
    line = json.dumps(event_to_dict(event), allow_nan=False)
    back = parse_event(json.loads(line))
    assert type(back) is type(event)
    assert back == event
    assert back.ts > 0


def test_nan_loss_is_stored_as_null_with_a_flag():
    for loss in (float("nan"), "nan", float("inf")):
        ev = ProgressEvent(step=1, total_steps=2, loss=loss)
        assert ev.loss is None and ev.loss_is_nan
        d = event_to_dict(ev)
        json.dumps(d, allow_nan=False)  # valid strict JSON
        assert parse_event(d).loss_is_nan
    assert not ProgressEvent(step=1, total_steps=2, loss=0.5).loss_is_nan
    assert math.isclose(ProgressEvent(step=1, total_steps=4).fraction, 0.25)


@pytest.mark.parametrize(
    "data",
    [{"type": "nonsense"}, {"type": "state", "state": "exploded"}, {"type": "progress", "step": -1, "total_steps": 1},
     {"message": "no type"}],
)
def test_malformed_events_raise_job_error(data):
    with pytest.raises(JobError) as exc:
        parse_event(data)
    assert "known types" in str(exc.value)


def test_log_levels_accept_logging_spellings():
    assert LogEvent(level="WARNING", message="x").level == "warning"
    assert LogEvent(level="critical", message="x").level == "error"
