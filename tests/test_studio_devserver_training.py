"""DevServer's own training page flow on the Studio with real training (the native backend, the tiny SD3 model).
Heavy: run under the shared lock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("flask", reason="the Studio needs the [studio] extra (flask, waitress)")

from studio_api_support import CARD  # noqa: E402
from test_studio_training import TRAIN, _studio  # noqa: E402

from devserver_lora.lora.header import read_header  # noqa: E402
from devserver_lora.train.native.tiny import tiny_sai_checkpoint  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_sai_checkpoint(tmp_path_factory.mktemp("models"))


def test_devservers_training_page_flow_trains_and_lands_the_lora(tmp_path: Path, checkpoint: Path) -> None:
    """What TrainingView.vue does: start (multipart), follow /events to `done`, read /status; the LoRA lands in the
    loras folder as DevServer's trainer puts it there; delete removes the project's images."""
    import io

    from devserver_lora.train.native.tiny import write_planted_images

    card = {k: v for k, v in CARD.items() if k != "title"}
    client, st = _studio(tmp_path / "home", checkpoint, devserver_card=card,
                         devserver_overrides={**TRAIN, "max_train_steps": 4})
    src = write_planted_images(tmp_path / "imgs", n=4, size=256)
    images = [(io.BytesIO(p.read_bytes()), p.name) for p in sorted(src.glob("*.png"))]
    r = client.post("/api/training/start", data={"project_name": "squares", "trigger_word": "mgsq, square",
                                                  "images": images}, content_type="multipart/form-data")
    assert r.status_code == 200 and r.json["message"] == "Training started", r.json
    assert client.post("/api/training/start", data={"project_name": "again", "images": [(io.BytesIO(b"x"), "a.png")]},
                       content_type="multipart/form-data").json == \
        {"message": "Training could not be started (already running?)"}
    raw = client.get("/api/training/events").get_data().decode()
    assert raw.rstrip().endswith('event: done\ndata: {"message": "Training finished"}'), raw[-500:]
    logs = [json.loads(b.split("data: ", 1)[1]) for b in raw.split("\n\n") if b.startswith("event: log")]
    lines = [line for batch in logs for line in batch]
    assert "steps: 4/4" in " ".join(lines) and any(line.startswith("[done]") for line in lines)
    status = client.get("/api/training/status").json
    assert status["is_training"] is False and status["error"] is None and status["project_name"] == "squares"
    assert status["progress"] == 100 and status["current_step"] == status["total_steps"] == 4
    landed = st.config.loras_dir / "squares.safetensors"
    assert landed.is_file() and read_header(landed).metadata["devserver_lora.card.title"] == "squares"
    owner_dir = st.config.datasets_dir / "devserver"
    assert (owner_dir / "squares").is_dir()
    assert client.post("/api/training/delete", json={"project_name": "squares"}).json == \
        {"message": "Project files deleted successfully"}
    assert not (owner_dir / "squares").exists()
