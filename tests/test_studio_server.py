"""`devserver-lora studio`: the standalone server (Waitress on 127.0.0.1) answers the API and serves the page; two
uploads racing for one name never mix their files."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("waitress", reason="the Studio needs the [studio] extra (flask, waitress)")

from studio_api_support import make_studio, planted_zip, upload  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_studio_command_serves_page_and_api_on_loopback(tmp_path: Path) -> None:
    port = _port()
    log = (tmp_path / "studio.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "devserver_lora", "studio", "--port", str(port), "--home",
                             str(tmp_path / "home"), "--teacher", "t"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                me = httpx.get(base + "/api/lora/me", headers={"X-Studio-User": "t"}, timeout=2)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "studio.log").read_text()
                time.sleep(0.3)
        assert me.json() == {"user": "t", "teacher": True, "mounted": False}
        page = httpx.get(base + "/lora", timeout=10)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert httpx.get(base + "/api/lora/jobs", timeout=10).status_code == 403
        # Only loopback: the same port on another address of this machine is not served.
        assert (tmp_path / "home" / "jobs").is_dir() and (tmp_path / "home" / "studio").is_dir()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert "LoRA Studio on http://127.0.0.1:" in (tmp_path / "studio.log").read_text()


def test_two_uploads_racing_for_one_name_do_not_mix(tmp_path: Path) -> None:
    app, _client, st = make_studio(tmp_path / "home")
    zips = [planted_zip(tmp_path / f"src{i}", n=3 + i, bad=False) for i in range(2)]
    results: list[Any] = [None, None]
    start = threading.Barrier(2)

    def send(i: int) -> None:
        client = app.test_client()
        start.wait()
        results[i] = upload(client, "alice", "same", [(zips[i], "a.zip")])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    codes = sorted(r.status_code for r in results)
    assert codes == [201, 409], [r.json for r in results]
    winner = next(r for r in results if r.status_code == 201).json
    folder = st.config.datasets_dir / "alice" / "same"
    assert len(winner["images"]) in (3, 4)
    # The folder holds exactly the winner's upload, and no staging folder is left behind.
    import json

    view = json.loads((folder / "view.json").read_text())
    assert [i["file"] for i in view["images"]] == [i["file"] for i in winner["images"]]
    assert sorted(p.name for p in (folder / "thumbs").iterdir()) == sorted(
        i["thumb_url"].rsplit("/", 1)[1].split("?")[0] for i in winner["images"])
    assert list(st.config.staging_dir.iterdir()) == []
