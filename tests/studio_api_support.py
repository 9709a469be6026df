"""Helpers for the Studio API tests: an app on a temporary home, planted uploads, and a snapshot of a folder tree
(a refused request must leave it byte for byte as it was)."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any

from devserver_lora.train.native.tiny import PLANTED_CARD, write_planted_images

BAD_IMAGE = "square_99_cut.png"
CARD: dict[str, Any] = dict(PLANTED_CARD)


def make_studio(home: Path, **options: Any) -> tuple[Any, Any, Any]:
    """(app, test client, Studio) on `home`; the queue is pumped by the routes only (no background thread)."""
    from devserver_lora.studio import create_app

    options.setdefault("queue_poll_s", 0)
    options.setdefault("detect_gpu", False)
    options.setdefault("sse_poll_s", 0.05)
    options.setdefault("list_max_age_s", 0)  # every list reads the store (the terminal's jobs show at once)
    app = create_app(data_dir=home, **options)
    app.testing = True
    return app, app.test_client(), app.extensions["lora_studio"]


def planted_zip(folder: Path, *, n: int = 4, bad: bool = True, trigger: str = "mgsq") -> bytes:
    src = write_planted_images(folder, n=n, size=256, trigger=trigger)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for file in sorted(src.iterdir()):
            if file.suffix in (".png", ".txt"):
                zf.write(file, file.name)
        if bad:
            whole = (src / "square_00.png").read_bytes()
            zf.writestr(BAD_IMAGE, whole[: len(whole) // 3])
            zf.writestr(BAD_IMAGE.replace(".png", ".txt"), f"{trigger}, a broken upload\n")
    return buf.getvalue()


def user(name: str) -> dict[str, str]:
    return {"X-Studio-User": name}


def upload(client: Any, who: str, name: str, files: list[tuple[bytes, str]], **form: str) -> Any:
    data: dict[str, Any] = {"name": name, **form, "files": [(io.BytesIO(b), fn) for b, fn in files]}
    return client.post("/api/lora/datasets", data=data, headers=user(who), content_type="multipart/form-data")


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder below `root` with a hash of its bytes."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def plan_body(**kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"dataset": "squares", "family": "sd35_medium", "preset": "quick_test",
                            "output_name": "squares", "trigger": "mgsq", "backend": "native", "gpu": "cpu",
                            "overrides": {"resolution": 256, "max_train_steps": 4, "learning_rate": 2e-3,
                                          "network_dim": 8, "network_alpha": 4}}
    body.update(kw)
    return body
