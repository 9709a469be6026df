"""One job store for the terminal and the page, with the real runner on the Kohya stand-in (light, no torch): a job
run with `python -m devserver_lora.train run` shows on the page, holds the one-GPU queue, survives a server restart
with the queue intact, and is cancelled from the page; the next queued job then starts by itself."""

from __future__ import annotations

import time
from typing import Any

import pytest

pytest.importorskip("flask", reason="the Studio needs the [studio] extra (flask, waitress)")

from kohya_standin import fixtures as standin_fixtures  # noqa: E402
from studio_api_support import make_studio, user  # noqa: E402

from devserver_lora.train import runner  # noqa: E402
from devserver_lora.train.cli import main as train_main  # noqa: E402

kohya_env = standin_fixtures.kohya_env  # the shared pytest fixture


def _wait(pred: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _studio(env: Any, monkeypatch: Any) -> tuple[Any, Any]:
    monkeypatch.setenv("KOHYA_DIR", str(env.kohya_dir))
    monkeypatch.setenv("DEVSERVER_LORA_MODELS", str(env.models_dir))
    _app, client, st = make_studio(env.root / "home", jobs_dir=env.jobs_dir, teachers=["teacher"], cancel_grace_s=20,
                                   preflight=False)  # the stand-in is not the pinned checkout: `run --no-preflight`
    return client, st


def test_a_terminal_job_is_seen_queued_behind_and_cancelled_on_the_page(kohya_env: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("STANDIN_STEP_S", "0.25")
    terminal = kohya_env.job(max_train_steps=400)
    common = ["--jobs-dir", str(kohya_env.jobs_dir), "--kohya-dir", str(kohya_env.kohya_dir),
              "--models-dir", str(kohya_env.models_dir)]
    assert train_main(["run", terminal.id, "--backend", "kohya", "--detach", "--no-preflight", *common]) == 0
    client, st = _studio(kohya_env, monkeypatch)
    listed = {j["id"]: j for j in client.get("/api/lora/jobs", headers=user("teacher")).json["jobs"]}
    assert listed[terminal.id]["state"] == "running" and listed[terminal.id]["owner"] is None
    assert terminal.id not in {j["id"] for j in client.get("/api/lora/jobs", headers=user("alice")).json["jobs"]}
    # Two page jobs (variants of the terminal's, so they keep the link) wait in order behind it, visibly.
    ids = []
    for name in ("first", "second"):
        r = client.post(f"/api/lora/jobs/{terminal.id}/variant", json={"overrides": {"max_train_steps": 6},
                                                                        "output_name": name, "gpu": "cpu"},
                        headers=user("teacher"))
        assert r.status_code == 201 and r.json["parent"] == terminal.id, r.json
        ids.append(r.json["id"])
    first, second = ids
    r = client.post(f"/api/lora/jobs/{first}/run", headers=user("teacher"))
    assert r.status_code == 202 and r.json["state"] == "queued" and r.json["queue_position"] == 1, r.json
    r = client.post(f"/api/lora/jobs/{second}/run", headers=user("teacher"))
    assert r.json["state"] == "queued" and r.json["queue_position"] == 2
    assert client.post(f"/api/lora/jobs/{second}/run", headers=user("teacher")).status_code == 409
    assert client.get("/api/lora/jobs", headers=user("teacher")).json["queue"] == [first, second]
    assert client.delete(f"/api/lora/jobs/{first}", headers=user("teacher")).status_code == 409
    assert client.delete(f"/api/lora/jobs/{terminal.id}", headers=user("teacher")).status_code == 409
    # The terminal sees the queued jobs as jobs that have not started.
    assert st.store.get(first).state == "created"
    # A server restart: a new Studio on the same folders finds the same queue (the job store is the truth).
    client2, st2 = _studio(kohya_env, monkeypatch)
    assert client2.get("/api/lora/jobs", headers=user("teacher")).json["queue"] == [first, second]
    assert st2.scheduler.pump() is None  # the terminal's job still holds the GPU
    # The second leaves the queue; the teacher cancels the terminal's job on the page; the first then starts.
    assert client2.post(f"/api/lora/jobs/{second}/cancel", headers=user("teacher")).json["state"] == "cancelled"
    r = client2.post(f"/api/lora/jobs/{terminal.id}/cancel", headers=user("teacher"))
    assert r.status_code == 200 and r.json["state"] == "cancelled", r.json
    assert not runner.runner_alive(st2.store.get(terminal.id))
    _wait(lambda: st2.store.get(first).state in ("running", "done"), 30, "the first queued job to start")
    assert client2.get("/api/lora/jobs", headers=user("teacher")).json["queue"] == []
    assert runner.wait(st2.store.get(first), timeout_s=120) == "done"
    assert st2.store.get(second).state == "cancelled"
    # ... and the terminal reads what the page did.
    assert train_main(["status", terminal.id, *common]) == 0
