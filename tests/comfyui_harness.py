"""A real ComfyUI server for integration tests (session-scoped pytest fixture `comfyui_server`).

The install comes from `tests/comfyui_setup.py` (run it once: `.venv/bin/python tests/comfyui_setup.py`). Without
it the tests skip with that command, except under CI=true, where a missing install is a failure.

The server is the package's local ComfyUI (`devserver_lora.comfy.local`, what `devserver-lora comfyui start` runs):
CPU, a free 127.0.0.1 port, its own base directory:
    B/models/checkpoints/tiny_sd3_random.safetensors   the tiny random SD3 checkpoint (devserver_lora.testing.tiny_sd3)
    B/models/loras/*.safetensors                        the recorded fixture LoRAs (add more with `install_lora`)
    B/custom_nodes/                                     empty (ComfyUI refuses to start without it)
    B/console.log                                       stdout+stderr of the server
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devserver_lora.comfy import local
from devserver_lora.comfy.local import TINY_CHECKPOINT_NAME, BaseDir, Install, Started, default_install, setup_command

# Same place as conftest.COMFY_FIXTURES (not imported: conftest imports this module).
COMFY_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "comfyui"


@dataclass
class ComfyServer:
    """A real ComfyUI the package's `comfy.local.start` runs, with what the tests read from it."""

    started: Started
    checkpoint_name: str = TINY_CHECKPOINT_NAME

    @property
    def url(self) -> str:
        return self.started.url

    @property
    def base_dir(self) -> Path:
        return self.started.base.root

    @property
    def loras_dir(self) -> Path:
        return self.started.base.loras

    @property
    def output_dir(self) -> Path:
        return self.started.base.output

    @property
    def log_path(self) -> Path:
        return self.started.base.log

    @property
    def process(self):  # noqa: ANN201 - subprocess.Popen[bytes]
        return self.started.process

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


def start_comfyui(base: Path, *, install: Path | None = None, port: int | None = None) -> ComfyServer:
    """Start a real ComfyUI under `base` (with the recorded fixture LoRAs) and wait until it answers.
    Caller must `stop_comfyui`."""
    inst = Install(install) if install is not None else default_install()
    if not inst.tiny_checkpoint.is_file():
        from devserver_lora.testing.tiny_sd3 import write_tiny_sd3_checkpoint

        write_tiny_sd3_checkpoint(inst.tiny_checkpoint)
    where = BaseDir(base)
    where.loras.mkdir(parents=True, exist_ok=True)
    for lora in sorted((COMFY_FIXTURES / "loras").glob("*.safetensors")):
        shutil.copyfile(lora, where.loras / lora.name)
    return ComfyServer(local.start(inst, where, port=port))


def stop_comfyui(server: ComfyServer) -> None:
    server.started.stop()


def require_install() -> Path:
    """The ComfyUI install dir; skip (developer) or fail (CI=true) when it is missing."""
    install = default_install()
    if not install.ready:
        message = f"real ComfyUI not installed in {install.root}: run `{setup_command()}`"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return install.root


@pytest.fixture(scope="session")
def comfyui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    """A running real ComfyUI (tiny SD3 checkpoint + fixture LoRAs), shared by the whole session."""
    install = require_install()
    server = start_comfyui(tmp_path_factory.mktemp("comfyui_base"), install=install)
    try:
        yield server
    finally:
        stop_comfyui(server)
