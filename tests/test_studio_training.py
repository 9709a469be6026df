"""The Studio with real training: the native backend on the tiny SD3 model, started through the routes and through
the CLI. Heavy (torch on the CPU): run under the shared lock,
`flock /tmp/devserver-lora-heavy.lock .venv/bin/python -m pytest tests/test_studio_training.py`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flask", reason="the Studio needs the [studio] extra (flask, waitress)")

from studio_api_support import CARD, make_studio, plan_body, planted_zip, upload, user  # noqa: E402

from devserver_lora.lora.header import read_header  # noqa: E402
from devserver_lora.train.native.tiny import tiny_sai_checkpoint  # noqa: E402

pytestmark = pytest.mark.slow
TRAIN = {"resolution": 256, "learning_rate": 2e-3, "network_dim": 8, "network_alpha": 4}


def _sse(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in raw.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            out.append((fields["event"], json.loads(fields["data"])))
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_sai_checkpoint(tmp_path_factory.mktemp("models"))


def _studio(home: Path, checkpoint: Path, **kw: Any) -> tuple[Any, Any]:
    loras = home.parent / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    _app, client, st = make_studio(home, model_checkpoint=checkpoint, loras_dir=loras, teachers=["teacher"],
                                   sse_max_s=900, cancel_grace_s=60, **kw)
    return client, st


def _dataset(client: Any, tmp: Path, who: str = "alice") -> None:
    assert upload(client, who, "squares", [(planted_zip(tmp / f"src-{who}"), "squares.zip")]).status_code == 201
    assert client.put("/api/lora/datasets/squares/card", json=CARD, headers=user(who)).status_code == 200


def test_a_whole_job_through_the_routes_followed_to_finished_then_installed(tmp_path: Path, checkpoint: Path) -> None:
    client, st = _studio(tmp_path / "home", checkpoint)
    _dataset(client, tmp_path)
    body = plan_body(family="sd35_large", overrides={**TRAIN, "max_train_steps": 6})
    job = client.post("/api/lora/jobs", json=body, headers=user("alice")).json
    r = client.post(f"/api/lora/jobs/{job['id']}/run", headers=user("alice"))
    assert r.status_code == 202 and r.json["state"] == "running", r.json
    # Follow its SSE from the start to the end (the stream ends itself at the final state).
    events = _sse(client.get(f"/api/lora/jobs/{job['id']}/events", headers=user("alice")).get_data())
    names = [n for n, _ in events]
    progress = [d for n, d in events if n == "progress"]
    assert names[-2:] == ["state", "finished"], names
    assert [p["step"] for p in progress][-1] == 6 and all(p["total"] == 6 for p in progress)
    assert all(isinstance(p["loss"], float) for p in progress if p["step"] > 0)
    finished = events[-1][1]
    assert finished["lora_name"] == "squares.safetensors" and Path(finished["lora"]).is_file()
    shown = client.get(f"/api/lora/jobs/{job['id']}", headers=user("alice")).json
    assert shown["state"] == "done" and shown["progress"]["step"] == 6 and shown["loss_plot_url"]
    assert client.get(shown["loss_plot_url"], headers=user("alice")).mimetype == "image/png"
    # Install into the configured loras folder; the file carries its dataset card.
    r = client.post(f"/api/lora/jobs/{job['id']}/install", json={}, headers=user("alice"))
    assert r.status_code == 200, r.json
    installed = Path(r.json["lora_file"])
    assert installed.parent == st.config.loras_dir and installed.is_file()
    meta = read_header(installed).metadata
    assert meta["devserver_lora.card.licence"] == "CC0-1.0"
    assert client.get(f"/api/lora/jobs/{job['id']}", headers=user("alice")).json["installed"]["lora_name"] == \
        installed.name
    assert client.delete(f"/api/lora/jobs/{job['id']}", headers=user("alice")).status_code == 204
