"""`devserver-lora comfyui start|stop|status`: process handling of the local ComfyUI (`devserver_lora.comfy.local`).

The real ComfyUI runs this code in every `comfyui`-marked test (the harness starts it through `comfy.local.start`)
and in the newcomer-path test (tests/test_demo.py). Here a stand-in install whose `main.py` is a small loopback HTTP
server that answers /system_stats and starts a child process checks what the real server cannot show quickly: the
whole process group ends, SIGKILL follows an ignored SIGTERM, and nothing outside the group is touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from devserver_lora.cli import main as cli_main
from devserver_lora.comfy import local
from devserver_lora.comfy.local import BaseDir, Install
from devserver_lora.errors import ComfyError, ComfyUnreachable

STANDIN_MAIN = textwrap.dedent(
    """
    import argparse, http.server, json, os, pathlib, signal, subprocess, sys
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int); p.add_argument("--listen"); p.add_argument("--base-directory")
    p.add_argument("--cpu", action="store_true"); p.add_argument("--disable-auto-launch", action="store_true")
    p.add_argument("--database-url")
    a = p.parse_args()
    base = pathlib.Path(a.base_directory)
    if not (base / "custom_nodes").is_dir():
        sys.exit("custom_nodes missing")  # as ComfyUI refuses to start without it
    if os.environ.get("STANDIN_IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    (base / "child.pid").write_text(str(child.pid))

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"system": {"os": "standin"}, "devices": []}).encode()
            self.send_response(200 if self.path == "/system_stats" else 404)
            self.send_header("Content-Type", "application/json"); self.end_headers(); self.wfile.write(body)
        def log_message(self, *args):
            pass

    print("standin listening", a.listen, a.port, flush=True)
    http.server.HTTPServer((a.listen, a.port), H).serve_forever()
    """
)


def standin_install(root: Path) -> Install:
    (root / "ComfyUI").mkdir(parents=True)
    (root / "ComfyUI" / "main.py").write_text(STANDIN_MAIN)
    (root / "venv" / "bin").mkdir(parents=True)
    (root / "venv" / "bin" / "python").symlink_to(sys.executable)
    (root / "models").mkdir()
    (root / "models" / local.TINY_CHECKPOINT_FILE).write_bytes(b"not a real checkpoint")
    (root / local.READY_MARK).write_text("stand-in\n")
    return Install(root)


def gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if local._start_ticks(pid) is None:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def standin(tmp_path: Path):
    install = standin_install(tmp_path / "install")
    base = BaseDir(tmp_path / "base")
    yield install, base
    try:
        record = local.read_record(base)
    except ComfyError:  # the damaged-file test
        return
    if record is not None and local._is_ours(record):
        os.killpg(record.pid, 9)


def test_start_status_stop_end_the_whole_group_and_only_it(standin) -> None:
    install, base = standin
    outsider = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # same user, other group
    try:
        server = local.start(install, base, timeout=30)
        record = json.loads(base.pid_file.read_text())
        assert record["pid"] == server.process.pid and record["url"] == server.url
        assert server.url.startswith("http://127.0.0.1:") and record["port"] == int(server.url.rsplit(":", 1)[1])
        assert os.getpgid(server.process.pid) == server.process.pid  # a group of its own
        assert (base.root / "custom_nodes").is_dir()
        assert (base.checkpoints / local.TINY_CHECKPOINT_NAME).resolve() == install.tiny_checkpoint.resolve()
        st = local.status(base)
        assert (st.alive, st.answering, st.as_dict()["url"], st.as_dict()["pid"]) == (True, True, server.url, record["pid"])
        with pytest.raises(ComfyError, match="already runs at"):
            local.start(install, base, timeout=30)
        child = int((base.root / "child.pid").read_text())
        assert local._start_ticks(child) is not None
        t0 = time.monotonic()
        before = local.stop(base, timeout=10)
        assert before.alive and time.monotonic() - t0 < 10
        server.process.wait(timeout=5)
        assert gone(child), "the server's child process outlived stop"
        assert outsider.poll() is None, "stop killed a process outside the server's group"
        assert not base.pid_file.exists()
        after = local.status(base)
        assert (after.record, after.alive, after.answering) == (None, False, False)
    finally:
        outsider.kill()
        outsider.wait()


def test_stop_escalates_to_sigkill_within_its_bound(standin, monkeypatch: pytest.MonkeyPatch) -> None:
    install, base = standin
    monkeypatch.setenv("STANDIN_IGNORE_TERM", "1")
    server = local.start(install, base, timeout=30)
    t0 = time.monotonic()
    local.stop(base, timeout=1.5)
    assert time.monotonic() - t0 < 5
    server.process.wait(timeout=5)
    assert server.process.returncode == -9


def test_a_stale_pid_file_never_kills_the_process_that_now_has_its_pid(standin) -> None:
    _, base = standin
    base.root.mkdir(parents=True)
    me = os.getpid()
    stale = local.ServerRecord(pid=me, started=(local._start_ticks(me) or 0) + 12345, port=9, url="http://127.0.0.1:9",
                               install="x", base=str(base.root))
    base.pid_file.write_text(stale.model_dump_json())
    st = local.status(base)
    assert st.record is not None and not st.alive
    before = local.stop(base)  # we are still here to assert: nothing was signalled
    assert not before.alive and not base.pid_file.exists()


def test_damaged_pid_file_and_missing_install_say_what_to_do(standin, tmp_path: Path) -> None:
    install, base = standin
    base.root.mkdir(parents=True)
    base.pid_file.write_text("{not json")
    with pytest.raises(ComfyError) as damaged:
        local.status(base)
    assert str(base.pid_file) in (damaged.value.hint or "")
    with pytest.raises(ComfyUnreachable) as missing:
        local.start(Install(tmp_path / "nowhere"), BaseDir(tmp_path / "b2"))
    hint = missing.value.hint or ""
    assert "comfyui_setup.py" in hint and " python " not in f" {hint} "


def test_cli_start_status_stop(standin, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    install, base = standin
    monkeypatch.setenv(local.INSTALL_ENV, str(install.root))
    b = ["--base", str(base.root)]
    assert cli_main(["comfyui", "status", *b]) == 3
    assert "no ComfyUI recorded" in capsys.readouterr().out
    try:
        assert cli_main(["comfyui", "start", *b]) == 0
        text = capsys.readouterr().out
        assert "ComfyUI started at http://127.0.0.1:" in text and "comfyui stop --base" in text
        assert cli_main(["comfyui", "status", *b, "--json"]) == 0
        st = json.loads(capsys.readouterr().out)
        assert st["alive"] and st["answering"] and st["url"].startswith("http://127.0.0.1:") and st["pid"] > 0
    finally:
        assert cli_main(["comfyui", "stop", *b]) == 0
    assert "stopped ComfyUI at" in capsys.readouterr().out
    assert gone(st["pid"])
    assert cli_main(["comfyui", "status", *b]) == 3
