"""The local ComfyUI this project installs (for its tests and a newcomer's first renders), and how it runs.

The README's install step (`tests/comfyui_setup.py`) puts ComfyUI v0.3.75 with its own venv into the install folder
(default ~/.cache/devserver-lora/comfyui-v0.3.75, env DEVSERVER_LORA_TEST_COMFYUI):

    ComfyUI/main.py   venv/bin/python   models/tiny_sd3_random-v1.safetensors   READY (written last)

`start` runs it on the CPU, on 127.0.0.1 and a free port, with a base directory of its own (ComfyUI's
`--base-directory`, default <install>/base), so models, outputs and logs never mix with another server's:

    custom_nodes/  models/checkpoints/tiny_sd3_random.safetensors  models/loras/  output/  console.log  comfyui.pid

The pid file (JSON: pid, the process's start time, port, URL) lets `status` and `stop` find the server from another
process. The server leads a process group of its own; `stop` signals that group only, and only while the recorded
pid still names the process `start` made (a reused pid is left alone), within a bounded wait.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from pydantic import BaseModel, ValidationError

from ..errors import ComfyError, ComfyUnreachable
from ..invocation import python
from ..paths import atomic_write_json

COMFY_VERSION = "v0.3.75"
INSTALL_ENV = "DEVSERVER_LORA_TEST_COMFYUI"
READY_MARK = "READY"
TINY_CHECKPOINT_NAME = "tiny_sd3_random.safetensors"  # the name ComfyUI sees (as in the recorded fixtures)
# The cached file carries a version: bump it whenever devserver_lora.testing.tiny_sd3 changes layout or init.
TINY_CHECKPOINT_FILE = "tiny_sd3_random-v1.safetensors"
PID_FILE = "comfyui.pid"
LOG_FILE = "console.log"
HOST = "127.0.0.1"
START_TIMEOUT = 120.0  # /system_stats answers after 6-10 s here; a loaded machine gets headroom
STOP_TIMEOUT = 15.0
_POLL_S = 0.2


@dataclass(frozen=True)
class Install:
    """Where the install step put ComfyUI, its venv and the cached tiny checkpoint."""

    root: Path

    @property
    def python(self) -> Path:
        return self.root / "venv" / "bin" / "python"

    @property
    def main(self) -> Path:
        return self.root / "ComfyUI" / "main.py"

    @property
    def tiny_checkpoint(self) -> Path:
        return self.root / "models" / TINY_CHECKPOINT_FILE

    @property
    def ready(self) -> bool:
        return (self.root / READY_MARK).is_file() and self.main.is_file() and self.python.is_file()

    def default_base(self) -> BaseDir:
        return BaseDir(self.root / "base")


def default_install() -> Install:
    env = os.environ.get(INSTALL_ENV)
    if env:
        return Install(Path(env).expanduser().resolve())
    return Install(Path.home() / ".cache" / "devserver-lora" / f"comfyui-{COMFY_VERSION}")


def setup_command() -> str:
    """The command that installs ComfyUI (the README's install step), as runnable from here."""
    script = Path(__file__).resolve().parents[2] / "tests" / "comfyui_setup.py"
    if script.is_file():
        try:
            shown = script.relative_to(Path.cwd()).as_posix()
        except ValueError:
            shown = str(script)
        return f"{python()} {shown}"
    return "the README's install step (tests/comfyui_setup.py in a clone of devserver-lora)"


@dataclass(frozen=True)
class BaseDir:
    """ComfyUI's `--base-directory`: its models, custom nodes, outputs, console log and our pid file."""

    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def checkpoints(self) -> Path:
        return self.models / "checkpoints"

    @property
    def loras(self) -> Path:
        return self.models / "loras"

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def log(self) -> Path:
        return self.root / LOG_FILE

    @property
    def pid_file(self) -> Path:
        return self.root / PID_FILE


class ServerRecord(BaseModel):
    """The pid file: which process `start` made, and where it listens."""

    pid: int
    started: int  # the process's start time (clock ticks since boot): tells it from a later process with its pid
    port: int
    url: str
    install: str
    base: str


@dataclass
class Status:
    """What `status` reports: the recorded server (if any), whether that process lives and whether it answers."""

    base: BaseDir
    record: ServerRecord | None = None
    alive: bool = False
    answering: bool = False

    def as_dict(self) -> dict[str, object]:
        rec = self.record
        return {"url": rec.url if rec else None, "pid": rec.pid if rec else None, "alive": self.alive,
                "answering": self.answering, "base": str(self.base.root), "log": str(self.base.log)}


@dataclass
class Started:
    """A server this process started (its `Popen`, so a test can also kill or reap it)."""

    record: ServerRecord
    base: BaseDir
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        return self.record.url

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        stop(self.base, timeout=timeout)
        try:
            self.process.wait(timeout=timeout)  # reap: we are its parent
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def prepare_base(base: BaseDir, checkpoint: Path) -> Path:
    """Make the base directory ComfyUI needs (it refuses to start without custom_nodes/) and put the tiny
    checkpoint into its checkpoints folder (a symlink; a copy where symlinks fail). Returns that entry."""
    for folder in (base.root / "custom_nodes", base.checkpoints, base.loras, base.output):
        folder.mkdir(parents=True, exist_ok=True)
    entry = base.checkpoints / TINY_CHECKPOINT_NAME
    if not entry.exists():
        entry.unlink(missing_ok=True)  # a dangling link to a checkpoint that was rebuilt elsewhere
        try:
            entry.symlink_to(checkpoint)
        except OSError:
            shutil.copyfile(checkpoint, entry)
    return entry


def launch_args(install: Install, base: BaseDir, port: int) -> list[str]:
    """ComfyUI's command line: CPU, loopback only, our base directory, no browser, no database file."""
    return [str(install.python), str(install.main), "--cpu", "--listen", HOST, "--port", str(port),
            "--disable-auto-launch", "--base-directory", str(base.root), "--database-url", "sqlite:///:memory:"]


def launch_env() -> dict[str, str]:
    """Our environment minus pytest's, offline for the hub, unbuffered so the console log is current."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
    env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "0"})
    return env


def _start_ticks(pid: int) -> int | None:
    """The start time of process `pid` (field 22 of /proc/PID/stat), or None when there is none or it is a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses
    if not fields or fields[0] == "Z":
        return None
    return int(fields[19])


def read_record(base: BaseDir) -> ServerRecord | None:
    path = base.pid_file
    if not path.is_file():
        return None
    try:
        return ServerRecord.model_validate(json.loads(path.read_text(encoding="utf-8")[:4096]))
    except (ValueError, ValidationError) as exc:
        raise ComfyError(f"the pid file {path} is damaged ({exc.__class__.__name__})",
                         hint=f"check that no ComfyUI of this base runs, then delete {path}") from None


def _is_ours(record: ServerRecord) -> bool:
    return _start_ticks(record.pid) == record.started


def answers(url: str, timeout: float = 2.0) -> bool:
    """Whether a ComfyUI answers GET /system_stats at `url`."""
    try:
        r = httpx.get(url.rstrip("/") + "/system_stats", timeout=timeout, trust_env=False)
        return r.status_code == 200 and isinstance(r.json(), dict)
    except (httpx.HTTPError, ValueError):
        return False


def status(base: BaseDir, *, probe: bool = True) -> Status:
    record = read_record(base)
    if record is None:
        return Status(base)
    alive = _is_ours(record)
    return Status(base, record, alive=alive, answering=alive and probe and answers(record.url))


def _console_tail(base: BaseDir, limit: int = 4000) -> str:
    try:
        data = base.log.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", "replace")


def start(install: Install, base: BaseDir, *, port: int | None = None, timeout: float = START_TIMEOUT) -> Started:
    """Start ComfyUI in the background and wait (bounded) until it answers. It runs on after we exit: `stop` ends it."""
    if not install.ready:
        raise ComfyUnreachable(f"no ComfyUI installed in {install.root}", hint=f"install it once: {setup_command()}")
    if not install.tiny_checkpoint.is_file():
        raise ComfyUnreachable(f"the tiny test checkpoint {install.tiny_checkpoint} is missing",
                               hint=f"run the install step again: {setup_command()}")
    current = status(base, probe=False)
    if current.alive and current.record is not None:
        raise ComfyError(f"a ComfyUI of {base.root} already runs at {current.record.url} (pid {current.record.pid})",
                         hint="use it, or stop it first (`comfyui stop`)")
    prepare_base(base, install.tiny_checkpoint)
    port = port or free_port()
    with open(base.log, "wb") as log:
        proc = subprocess.Popen(  # noqa: S603 - fixed argument list, no shell
            launch_args(install, base, port), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=install.main.parent, env=launch_env(), start_new_session=True,
        )
    started_at = _start_ticks(proc.pid)
    record = ServerRecord(pid=proc.pid, started=started_at if started_at is not None else -1, port=port,
                          url=f"http://{HOST}:{port}", install=str(install.root), base=str(base.root))
    atomic_write_json(base.pid_file, record.model_dump(mode="json"))
    server = Started(record, base, proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            base.pid_file.unlink(missing_ok=True)
            raise ComfyUnreachable(f"ComfyUI exited with {proc.returncode} while starting; its console:\n"
                                   f"{_console_tail(base)}", hint=f"the whole console log is {base.log}")
        if answers(record.url):
            return server
        time.sleep(_POLL_S)
    server.stop()
    raise ComfyUnreachable(f"ComfyUI did not answer within {timeout:.0f} s; its console:\n{_console_tail(base)}",
                           hint=f"the whole console log is {base.log}")


def _wait_gone(record: ServerRecord, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _is_ours(record):
            return True
        time.sleep(_POLL_S)
    return not _is_ours(record)


def stop(base: BaseDir, *, timeout: float = STOP_TIMEOUT) -> Status:
    """End the server recorded in `base` (its own process group only): SIGTERM, then SIGKILL, each wait bounded.

    Returns the status from before. A pid file whose process is gone (or is another process now) is removed."""
    before = status(base, probe=False)
    record = before.record
    if record is None:
        return before
    if before.alive:
        try:
            group = os.getpgid(record.pid)
        except ProcessLookupError:
            group = None
        if group != record.pid:  # `start` made it a group leader; anything else is not the group we started
            raise ComfyError(f"pid {record.pid} no longer leads the process group ComfyUI was started in",
                             hint=f"end it yourself if it is ComfyUI, then delete {base.pid_file}")
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            if _wait_gone(record, timeout):
                break
        else:
            raise ComfyError(f"ComfyUI (pid {record.pid}) did not end within {2 * timeout:.0f} s",
                             hint=f"look at it with `ps -o pid,stat,cmd -g {record.pid}`")
    base.pid_file.unlink(missing_ok=True)
    return before
