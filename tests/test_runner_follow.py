"""`runner.follow` reads events.jsonl from where it stopped (issue 10 item 14).

Before: every poll (twice a second) parsed the whole file twice, so following a long run cost more with
every step. Now a follower reads each byte about once, and an event whose line is still being written is
delivered once its line is complete, exactly once.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from kohya_standin import fixtures as standin_fixtures

from devserver_lora.train import runner
from devserver_lora.train.events import LogEvent, StateEvent
from devserver_lora.train.jobs import EVENTS_FILE

kohya_env = standin_fixtures.kohya_env  # the shared pytest fixture (a real job folder)


class ByteCounter:
    """Counts the bytes of events.jsonl read through every route a reader could take."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, events_file: Path) -> None:
        self.total = 0
        real_pread, real_read_bytes = os.pread, Path.read_bytes
        real_open = open

        def pread(fd: int, n: int, offset: int) -> bytes:
            data = real_pread(fd, n, offset)
            self.total += len(data)
            return data

        def read_bytes(path: Path) -> bytes:
            data = real_read_bytes(path)
            if path.name == EVENTS_FILE:
                self.total += len(data)
            return data

        counter = self

        class CountedFile:
            def __init__(self, handle) -> None:  # type: ignore[no-untyped-def]
                self._handle = handle

            def read(self, *args):  # type: ignore[no-untyped-def]
                data = self._handle.read(*args)
                counter.total += len(data)
                return data

            def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
                return getattr(self._handle, name)

            def __enter__(self):  # type: ignore[no-untyped-def]
                return self

            def __exit__(self, *exc) -> None:  # type: ignore[no-untyped-def]
                self._handle.close()

        def counted_open(file, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
            handle = real_open(file, mode, *args, **kwargs)
            if isinstance(file, (str, Path)) and Path(file).name == EVENTS_FILE and "r" in mode:
                return CountedFile(handle)
            return handle

        monkeypatch.setattr(os, "pread", pread)
        monkeypatch.setattr(Path, "read_bytes", read_bytes)
        monkeypatch.setattr("builtins.open", counted_open)


def wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_follow_reads_each_byte_about_once_and_waits_for_a_torn_line(kohya_env, monkeypatch):
    job = kohya_env.job()
    job.set_state("running", message="a long run")  # no worker pid: nothing for reconcile to declare lost
    for i in range(2000):  # a long run's history, about 200 KB
        job.append_event(LogEvent(message=f"step {i} of a long run, with some text to make the line longer"))
    path = job.dir / EVENTS_FILE
    history = len(job.events())
    counter = ByteCounter(monkeypatch, path)
    seen: list[dict] = []
    polls = {"n": 0}
    real_reconcile = runner.reconcile

    def reconcile(j):  # type: ignore[no-untyped-def]
        polls["n"] += 1
        return real_reconcile(j)

    monkeypatch.setattr(runner, "reconcile", reconcile)
    result: dict[str, str] = {}
    follower = threading.Thread(
        target=lambda: result.setdefault("state", runner.follow(job, seen.append, timeout_s=60, poll_s=0.002)),
        daemon=True)
    follower.start()
    wait_for(lambda: len(seen) >= history)
    start = polls["n"]
    wait_for(lambda: polls["n"] >= start + 100)  # a hundred polls of an unchanged file
    size = path.stat().st_size
    assert counter.total < 1.2 * size, f"read {counter.total} bytes for a {size}-byte file"

    line = json.dumps({"type": "log", "level": "info", "message": "written in two parts"}) + "\n"
    with open(path, "ab", buffering=0) as fh:
        fh.write(line[:25].encode())
        start = polls["n"]
        wait_for(lambda: polls["n"] >= start + 20)
        assert not any(e.get("message") == "written in two parts" for e in seen)  # incomplete: not yet
        fh.write(line[25:].encode())
    wait_for(lambda: any(e.get("message") == "written in two parts" for e in seen))

    job.append_event(StateEvent(state="done", message="finished"))  # the worker's order: event, then state
    job.set_state("done", message="finished")
    follower.join(timeout=20)
    assert result["state"] == "done"
    read = counter.total
    assert read < 1.2 * path.stat().st_size + 40 * 25  # the torn half may be re-read while it waits
    assert [e.get("message") for e in seen].count("written in two parts") == 1
    assert seen[-1]["type"] == "state" and seen[-1]["state"] == "done"
    assert seen == job.events()  # every complete line once, in order


def test_follow_without_replay_starts_at_the_end(kohya_env):
    job = kohya_env.job()
    job.set_state("running")
    job.append_event(LogEvent(message="before"))
    seen: list[dict] = []

    def finish() -> None:
        time.sleep(0.1)
        job.append_event(LogEvent(message="after"))
        job.set_state("cancelled")

    threading.Thread(target=finish, daemon=True).start()
    assert runner.follow(job, seen.append, timeout_s=20, poll_s=0.01, replay=False) == "cancelled"
    assert [e.get("message") for e in seen] == ["after"]
