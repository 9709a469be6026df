"""A real ComfyUI server for integration tests (session-scoped pytest fixture `comfyui_server`).

The install comes from `tests/comfyui_setup.py` (run it once: `.venv/bin/python tests/comfyui_setup.py`). Without
it the tests skip with that command, except under CI=true, where a missing install is a failure.

The server runs on CPU on a free 127.0.0.1 port with its own base directory:
    B/models/checkpoints/tiny_sd3_random.safetensors   the tiny random SD3 checkpoint (devserver_lora.testing.tiny_sd3)
    B/models/loras/*.safetensors                        the recorded fixture LoRAs (add more with `install_lora`)
    B/custom_nodes/                                     empty (ComfyUI refuses to start without it)
    B/console.log                                       stdout+stderr of the server
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from comfyui_setup import TINY_CHECKPOINT_NAME, comfy_main, install_dir, is_ready, tiny_checkpoint_path, venv_python

# Same place as conftest.COMFY_FIXTURES (not imported: conftest imports this module).
COMFY_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "comfyui"
START_TIMEOUT = 120.0  # /system_stats answers after 6-10 s here; a loaded CI machine gets headroom
STOP_TIMEOUT = 15.0
SETUP_COMMAND = ".venv/bin/python tests/comfyui_setup.py"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ComfyServer:
    url: str
    base_dir: Path
    loras_dir: Path
    output_dir: Path
    checkpoint_name: str
    log_path: Path
    process: subprocess.Popen = field(repr=False)

    def console_log(self, since: int = 0) -> str:
        """Everything the server printed so far (from byte offset `since`, see `log_mark`)."""
        with open(self.log_path, "rb") as fh:
            fh.seek(since)
            return fh.read().decode("utf-8", "replace")

    def log_mark(self) -> int:
        """A position in the console log; pass it to `console_log(since=...)` to read one run's lines."""
        return self.log_path.stat().st_size

    def install_lora(self, path: str | os.PathLike[str], name: str | None = None) -> str:
        """Copy a LoRA file into the server's loras folder (ComfyUI rescans on the next request); return its name."""
        src = Path(path)
        dest = self.loras_dir / (name or src.name)
        shutil.copyfile(src, dest)
        return dest.name

    def alive(self) -> bool:
        return self.process.poll() is None


def _get_json(url: str, timeout: float = 2.0) -> object:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback URL we built
        return json.loads(resp.read())


def _prepare_base(base: Path, checkpoint: Path) -> tuple[Path, Path, Path]:
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    ckpts = base / "models" / "checkpoints"
    loras = base / "models" / "loras"
    output = base / "output"
    for d in (ckpts, loras, output):
        d.mkdir(parents=True, exist_ok=True)
    link = ckpts / TINY_CHECKPOINT_NAME
    if not link.exists():
        try:
            link.symlink_to(checkpoint)
        except OSError:  # filesystems without symlinks: copy (419 MB, once per session)
            shutil.copyfile(checkpoint, link)
    for lora in sorted((COMFY_FIXTURES / "loras").glob("*.safetensors")):
        shutil.copyfile(lora, loras / lora.name)
    return loras, output, link


def start_comfyui(base: Path, *, install: Path | None = None, port: int | None = None) -> ComfyServer:
    """Start a real ComfyUI under `base` and wait (bounded) until it answers. Caller must `stop_comfyui`."""
    install = install or install_dir()
    checkpoint = tiny_checkpoint_path(install)
    if not checkpoint.is_file():
        from devserver_lora.testing.tiny_sd3 import write_tiny_sd3_checkpoint

        write_tiny_sd3_checkpoint(checkpoint)
    loras, output, _ = _prepare_base(base, checkpoint)
    port = port or free_port()
    log_path = base / "console.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
    env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "0"})
    args = [
        str(venv_python(install)),
        str(comfy_main(install)),
        "--cpu",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--disable-auto-launch",
        "--base-directory",
        str(base),
        "--database-url",
        "sqlite:///:memory:",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(  # noqa: S603 - fixed argument list, no shell
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=comfy_main(install).parent, env=env
        )
    server = ComfyServer(f"http://127.0.0.1:{port}", base, loras, output, TINY_CHECKPOINT_NAME, log_path, proc)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with {proc.returncode} during start:\n{server.console_log()[-4000:]}")
        try:
            _get_json(server.url + "/system_stats")
            return server
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            time.sleep(0.25)
    stop_comfyui(server)
    raise RuntimeError(f"ComfyUI did not answer within {START_TIMEOUT:.0f} s:\n{server.console_log()[-4000:]}")


def stop_comfyui(server: ComfyServer) -> None:
    proc = server.process
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)


def require_install() -> Path:
    """The ComfyUI install dir; skip (developer) or fail (CI=true) when it is missing."""
    install = install_dir()
    if not is_ready(install):
        message = f"real ComfyUI not installed in {install}: run `{SETUP_COMMAND}`"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return install


@pytest.fixture(scope="session")
def comfyui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    """A running real ComfyUI (tiny SD3 checkpoint + fixture LoRAs), shared by the whole session."""
    install = require_install()
    server = start_comfyui(tmp_path_factory.mktemp("comfyui_base"), install=install)
    try:
        yield server
    finally:
        stop_comfyui(server)
