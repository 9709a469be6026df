"""DevServer's own training routes (/api/training/*) on the Studio: DevServer's request and response shapes
(studio.md §2, TrainingView.vue), validated inputs, the plan's VRAM figure, ComfyUI freed with a bounded wait."""

from __future__ import annotations

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flask", reason="the Studio needs the [studio] extra (flask, waitress)")

from studio_api_support import CARD, make_studio, snapshot  # noqa: E402

from devserver_lora.studio import devserver_routes  # noqa: E402
from devserver_lora.train.gpu import KNOWN_GPUS  # noqa: E402
from devserver_lora.train.native.tiny import write_planted_images  # noqa: E402

STATUS_KEYS = {"is_training", "project_name", "progress", "current_step", "total_steps", "log_lines", "error", "vram"}
DEVSERVER_CARD = {k: v for k, v in CARD.items() if k != "title"}


@pytest.fixture()
def client(tmp_path: Path) -> Any:
    _app, client, st = make_studio(tmp_path / "home", devserver_card=DEVSERVER_CARD, comfyui_url="http://127.0.0.1:9",
                                   clear_vram_timeout_s=1.0)
    client.studio = st
    return client


def _images(tmp: Path, n: int = 3) -> list[tuple[io.BytesIO, str]]:
    src = write_planted_images(tmp / "imgs", n=n, size=256)
    return [(io.BytesIO(p.read_bytes()), p.name) for p in sorted(src.glob("*.png"))]


def test_check_vram_without_a_gpu_answers_as_devserver_does(client: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(devserver_routes, "vram_now", lambda: None)
    r = client.get("/api/training/check-vram")
    assert r.status_code == 500 and r.json == {"error": "No GPU detected"}


def test_check_vram_takes_the_plans_figure_not_a_fixed_one(client: Any, monkeypatch: Any) -> None:
    card = KNOWN_GPUS["RTX 4090"]
    monkeypatch.setattr(devserver_routes, "vram_now",
                        lambda: {"total_gb": 24.0, "used_gb": 20.0, "free_gb": 4.0, "usage_percent": 83.3})
    monkeypatch.setattr(devserver_routes, "detect_gpu", lambda: card)
    body = client.get("/api/training/check-vram").json
    assert set(body) == {"total_gb", "used_gb", "free_gb", "usage_percent", "can_train", "min_required_gb",
                         "recommendation"}
    need = devserver_routes.required_gb(card)
    assert body["min_required_gb"] == need and need < 24 and need != 50
    assert body["can_train"] is False and body["recommendation"] == f"Free {need - 4.0:.1f} GB VRAM to start training"


class _Comfy(BaseHTTPRequestHandler):
    seen: list[dict[str, Any]] = []
    delay = 0.0

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(self.delay)
        _Comfy.seen.append({"path": self.path, "body": body})
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _serve(delay: float) -> ThreadingHTTPServer:
    handler = type("H", (_Comfy,), {"delay": delay})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_clear_vram_frees_comfyui_with_a_bounded_wait(client: Any) -> None:
    r = client.post("/api/training/clear-vram", json={})
    assert r.status_code == 200 and r.json["success"] is True
    assert r.json["results"]["comfyui"] == "ComfyUI not running (OK)" and r.json["results"]["errors"] == []
    server = _serve(0.0)
    try:
        client.studio.config.comfyui_url = f"http://127.0.0.1:{server.server_port}"
        _Comfy.seen.clear()
        r = client.post("/api/training/clear-vram", json={"unload_comfyui": True, "unload_ollama": False})
        assert r.json == {"success": True, "results": {"comfyui": "Models unloaded successfully", "ollama": None,
                                                       "errors": []}}
        assert _Comfy.seen == [{"path": "/free", "body": {"unload_models": True, "free_memory": True}}]
    finally:
        server.shutdown()
    slow = _serve(5.0)
    try:
        client.studio.config.comfyui_url = f"http://127.0.0.1:{slow.server_port}"
        t0 = time.monotonic()
        r = client.post("/api/training/clear-vram", json={"unload_ollama": False})
        assert time.monotonic() - t0 < 4.0
        assert r.json["success"] is False and r.json["results"]["errors"][0].startswith("ComfyUI:")
    finally:
        slow.shutdown()


def test_status_and_events_when_nothing_ran(client: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(devserver_routes, "vram_now", lambda: None)
    body = client.get("/api/training/status").json
    assert set(body) == STATUS_KEYS and body["is_training"] is False and body["log_lines"] == []
    raw = client.get("/api/training/events").get_data().decode()
    assert raw == ('event: status\ndata: {"is_training": false, "error": null}\n\n'
                   'event: done\ndata: {"message": "Training finished"}\n\n')
    assert client.post("/api/training/stop").json == {"message": "Training stopped", "success": False}


def test_start_refusals_in_devservers_shape_write_nothing(client: Any, tmp_path: Path) -> None:
    home = client.studio.config.data_dir
    before = snapshot(home)

    def start(**form: Any) -> Any:
        return client.post("/api/training/start", data=form, content_type="multipart/form-data")

    assert start(images=_images(tmp_path)).json == {"message": "project_name is required"}
    assert start(project_name="p").json == {"message": "No images provided"}
    r = start(project_name="../etc", images=_images(tmp_path))
    assert r.status_code == 400 and "not usable" in r.json["message"]
    r = start(project_name="p", trigger_word="a\nb", images=_images(tmp_path))
    assert r.status_code == 400 and "trigger" in r.json["message"]
    r = start(project_name="p", images=[(io.BytesIO(b"#!/bin/sh"), "x.sh")])
    assert r.status_code == 400 and "only images" in r.json["message"]
    # No base model for the native backend on this server: refused by the backend's preflight, nothing left behind.
    r = start(project_name="p", trigger_word="mgsq, square", images=_images(tmp_path))
    assert r.status_code == 400 and set(r.json) == {"message"}, r.json
    assert snapshot(home) == before


def test_start_without_a_configured_card_says_how_to_set_it(tmp_path: Path) -> None:
    _app, client, st = make_studio(tmp_path / "home")
    before = snapshot(st.config.data_dir)
    r = client.post("/api/training/start", data={"project_name": "p", "images": _images(tmp_path)},
                    content_type="multipart/form-data")
    assert r.status_code == 400 and "devserver_card" in r.json["message"]
    assert snapshot(st.config.data_dir) == before


def test_delete_in_devservers_shape(client: Any) -> None:
    assert client.post("/api/training/delete", data="x", content_type="application/json").json == \
        {"message": "Invalid JSON"}
    assert client.post("/api/training/delete", json={"other": 1}).json == {"message": "Project name required"}
    r = client.post("/api/training/delete", json={"project_name": "../../x"})
    assert r.status_code == 400
    assert client.post("/api/training/delete", json={"project_name": "gone"}).json == \
        {"message": "Project files deleted successfully"}
