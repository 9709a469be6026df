"""The real DevServer app for contract tests: its own venv, a working copy with the README's snippet, a recording
stand-in for SwarmUI, and the app started with DevServer's own `create_app()` and Waitress on 127.0.0.1.

What is real: every line of DevServer's code (the checkout named by DEVSERVER_DIR, at conftest.DEVSERVER_COMMIT),
its `create_app()`, its routes, config loader, chunk builder, pipeline executor and BackendRouter, started as its
start scripts do (working directory `devserver/`). What stands in: SwarmUI, on 127.0.0.1, either recording what
DevServer submits (and answering like ComfyUI behind SwarmUI's `/ComfyBackendDirect/` prefix), or forwarding it to
the real ComfyUI test server with that prefix stripped. Nothing here reaches the network except PyPI, once, to
build DevServer's venv.

The working copy is a temporary copy of the checkout's `devserver/` folder: DevServer's files are never changed in
place and never enter this repository. Our JSON (LoRA configs, a chunk for the tiny test model) is written into
the copy's `schemas/` by the tests, as `train install` would write it into a real DevServer.
"""

from __future__ import annotations

import asyncio
import fcntl
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web
from conftest import DEVSERVER_COMMIT, ROOT

VENV_DIR = Path.home() / ".cache" / "devserver-lora" / f"devserver-{DEVSERVER_COMMIT[:8]}"
# What DevServer's create_app() and its Stage-4 route import, pinned as DevServer's requirements.txt pins them; the
# GPU and NLP parts of that file (torch, diffusers, spacy, ...) serve routes these tests do not call.
WEB_REQUIREMENTS = ("Flask", "Flask-CORS", "flask-compress", "waitress", "requests", "aiohttp", "python-dotenv", "toml")
# Imported by DevServer's pipeline_recorder but missing from its requirements.txt.
EXTRA_REQUIREMENTS = ("Pillow",)
START_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0
PIP_TIMEOUT = 900
# Leave these out of the working copy: the old frontend (38 MB) and caches, which DevServer does not load.
COPY_IGNORE = shutil.ignore_patterns("public_dev", "__pycache__", "*.pyc")
BOOT = (
    "import sys\n"
    "from waitress import serve\n"
    "from my_app import create_app\n"
    "app = create_app()\n"
    "serve(app, host='127.0.0.1', port=int(sys.argv[1]), threads=4, channel_timeout=600)\n"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- DevServer's venv
def _requirements(checkout: Path) -> list[str]:
    """DevServer's own pins for the web packages, then Pillow, then this package's runtime dependencies."""
    pins = {}
    for line in (checkout / "requirements.txt").read_text(encoding="utf-8").splitlines():
        spec = line.split("#", 1)[0].strip()
        name = re.split(r"[<>=!~ \[]", spec, maxsplit=1)[0]
        if name in WEB_REQUIREMENTS:
            pins[name] = spec
    missing = [n for n in WEB_REQUIREMENTS if n not in pins]
    if missing:
        raise RuntimeError(f"DevServer's requirements.txt no longer names {missing}: update WEB_REQUIREMENTS")
    ours = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    return [*pins.values(), *EXTRA_REQUIREMENTS, *ours]


def devserver_python(checkout: Path) -> Path:
    """DevServer's venv (built once from PyPI under ~/.cache, then reused); this package comes from PYTHONPATH."""
    python = VENV_DIR / "bin" / "python"
    ready = VENV_DIR / ".ready"
    VENV_DIR.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV_DIR.parent / f".{VENV_DIR.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs must not build it at once
        if ready.is_file():
            return python
        shutil.rmtree(VENV_DIR, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV_DIR)], check=True, timeout=300)  # noqa: S603
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", *_requirements(checkout)],  # noqa: S603
                              capture_output=True, text=True, timeout=PIP_TIMEOUT)
        if done.returncode != 0:
            raise RuntimeError(f"building DevServer's venv failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        ready.write_text("\n".join(_requirements(checkout)) + "\n", encoding="utf-8")
    return python


# ----------------------------------------------------------------------------- the working copy
def _readme_block(call: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    found = [b for b in blocks if call in b]
    if len(found) != 1:
        raise AssertionError(f"README.md should hold exactly one python block calling {call}: {found}")
    return found[0]


def readme_snippet() -> str:
    """The app-factory lines of the README, verbatim (the ```python block that calls install_into_devserver)."""
    return _readme_block("install_into_devserver(")


def readme_mount_snippet() -> str:
    """The README's lines that mount the LoRA Studio into DevServer's app, verbatim."""
    return _readme_block("mount(app")


def _insert_after(text: str, anchor: str, lines: str) -> str:
    if text.count(anchor) != 1:
        raise AssertionError(f"DevServer's create_app() changed: no single {anchor.strip()!r}")
    return text.replace(anchor, anchor + lines)


def working_copy(checkout: Path, dest: Path, *, snippet: str | None, mount_snippet: str | None = None) -> Path:
    """Copy DevServer's `devserver/` to `dest/devserver`; put `snippet` into create_app() after
    reload_user_settings() and `mount_snippet` after `Compress(app)`, where the README says. Returns the copy's root
    (DevServer's BASE_DIR)."""
    shutil.copytree(checkout / "devserver", dest / "devserver", ignore=COPY_IGNORE, symlinks=True)
    factory = dest / "devserver" / "my_app" / "__init__.py"
    text = factory.read_text(encoding="utf-8")
    if snippet is not None:
        text = _insert_after(text, "    reload_user_settings()\n", snippet)
    if mount_snippet is not None:
        text = _insert_after(text, "    Compress(app)\n", mount_snippet)
    factory.write_text(text, encoding="utf-8")
    return dest


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- the SwarmUI stand-in
def _tiny_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 40, 40)).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class SwarmStandIn:
    """SwarmUI on 127.0.0.1 as DevServer talks to it: `/API/GetNewSession`, `/system_stats` (the ComfyUI health
    check) and ComfyUI's API under `/ComfyBackendDirect/`. Records every submitted graph. Without `upstream` it
    answers like ComfyUI and writes a PNG into `output_dir` (DevServer takes the newest PNG there); with `upstream`
    (a real ComfyUI URL) it forwards those calls with the prefix stripped."""

    output_dir: Path
    upstream: str | None = None
    port: int = 0
    submissions: list[dict[str, Any]] = field(default_factory=list)
    _history: dict[str, Any] = field(default_factory=dict)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _session(self, request: web.Request) -> web.Response:
        return web.json_response({"session_id": uuid.uuid4().hex})

    async def _forward(self, method: str, path: str, request: web.Request) -> web.Response:
        assert self.upstream is not None
        body = await request.read()
        async with ClientSession(timeout=ClientTimeout(total=120)) as s, s.request(
                method, self.upstream + path, params=request.query, data=body or None,
                headers={"Content-Type": request.headers.get("Content-Type", "application/json")}) as answer:
            return web.Response(body=await answer.read(), status=answer.status,
                                content_type=answer.content_type or "application/json")

    async def _stats(self, request: web.Request) -> web.Response:
        if self.upstream:
            return await self._forward("GET", "/system_stats", request)
        return web.json_response({"system": {"comfyui_version": "stand-in"}, "devices": []})

    async def _prompt(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.submissions.append(body)
        if self.upstream:
            return await self._forward("POST", "/prompt", request)
        prompt_id = str(uuid.uuid4())
        self.output_dir.mkdir(parents=True, exist_ok=True)
        name = f"standin_{len(self.submissions):05d}_.png"
        (self.output_dir / name).write_bytes(_tiny_png())
        save = next((k for k, n in body["prompt"].items() if n.get("class_type") == "SaveImage"), "0")
        self._history[prompt_id] = {
            "prompt": [len(self.submissions), prompt_id, body["prompt"], {}, [save]],
            "outputs": {save: {"images": [{"filename": name, "subfolder": "", "type": "output"}]}},
            "status": {"status_str": "success", "completed": True, "messages": []},
        }
        return web.json_response({"prompt_id": prompt_id, "number": len(self.submissions), "node_errors": {}})

    async def _history_of(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        if self.upstream:
            return await self._forward("GET", f"/history/{prompt_id}", request)
        entry = self._history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry else {})

    async def _view(self, request: web.Request) -> web.Response:
        if self.upstream:
            return await self._forward("GET", "/view", request)
        return web.Response(body=_tiny_png(), content_type="image/png")

    async def _not_here(self, request: web.Request) -> web.Response:
        return web.json_response({"error": f"the SwarmUI stand-in has no {request.path}"}, status=404)

    def __enter__(self) -> SwarmStandIn:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/API/GetNewSession", self._session)
        app.router.add_get("/system_stats", self._stats)
        app.router.add_post("/ComfyBackendDirect/prompt", self._prompt)
        app.router.add_get("/ComfyBackendDirect/history/{prompt_id}", self._history_of)
        app.router.add_get("/ComfyBackendDirect/view", self._view)
        app.router.add_route("*", "/{tail:.*}", self._not_here)  # e.g. Ollama's /api/tags at start-up
        started = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._runner = web.AppRunner(app)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            self._loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="swarm-stand-in", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the SwarmUI stand-in did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        loop, runner = self._loop, self._runner
        if loop is None or runner is None:
            return
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)


# ----------------------------------------------------------------------------- the app
@dataclass
class DevServerApp:
    url: str
    root: Path
    log_path: Path
    process: subprocess.Popen

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def post(self, path: str, body: dict[str, Any], *, timeout: float = 300) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 - our 127.0.0.1 app
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def get_bytes(self, path: str, *, timeout: float = 60) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as answer:  # noqa: S310 - our 127.0.0.1 app
            return answer.read()


def devserver_env(root: Path, *, loras_dir: Path, comfyui_dir: Path, swarm_url: str) -> dict[str, str]:
    """DevServer's environment: every path under the test's folders, every service on 127.0.0.1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
    env.update({
        "PYTHONPATH": str(ROOT),  # devserver-lora itself, as `pip install` would provide it
        "AI_TOOLS_BASE": str(root / "ai_tools"),  # DevServer creates its Kohya and LoRA folders below it
        "LORA_OUTPUT_DIR": str(loras_dir),
        "COMFYUI_PATH": str(comfyui_dir),
        "SWARMUI_PATH": str(root / "ai_tools" / "SwarmUI"),
        "SWARMUI_AUTO_START": "false",
        "OLLAMA_API_BASE_URL": swarm_url,  # answered with 404: no LLM is needed for Stage 4
        "LMSTUDIO_API_BASE_URL": swarm_url,
        "DIFFUSERS_ENABLED": "false",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "PORT": "0",  # not DevServer's production port (17801), so no Secure-only cookies
        "HOME": str(root / "home"),  # the README's Studio keeps its data in ~/devserver-lora
    })
    return env


def user_settings(root: Path, swarm_port: int) -> Path:
    """DevServer's own override file: SwarmUI and its ComfyUI on the stand-in's port; Stage 3 (translation and the
    LLM safety check, DevServer's own business, not the plugin's) off, as DevServer's `research` level has it."""
    return write_json(root / "devserver" / "user_settings.json", {
        "SWARMUI_API_PORT": str(swarm_port), "COMFYUI_PORT": str(swarm_port), "DEFAULT_SAFETY_LEVEL": "research"})


@contextmanager
def running_devserver(root: Path, python: Path, env: dict[str, str]) -> Iterator[DevServerApp]:
    """DevServer's create_app() under Waitress on a free 127.0.0.1 port, from `root/devserver` as its start scripts
    run it; stopped (terminate, then kill) on exit. Raises with the log when it does not come up."""
    port = free_port()
    log_path = root / "devserver.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(python), "-c", BOOT, str(port)], cwd=root / "devserver", env=env,  # noqa: S603
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    app = DevServerApp(f"http://127.0.0.1:{port}", root, log_path, process)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"DevServer exited with {process.returncode} at start:\n{app.log()[-6000:]}")
            try:
                with urllib.request.urlopen(app.url + "/api/schema/info", timeout=5):  # noqa: S310
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"DevServer did not answer within {START_TIMEOUT:.0f} s:\n{app.log()[-6000:]}") from None
                time.sleep(0.25)
        yield app
    finally:
        stop(process)


def start_and_wait_for_exit(root: Path, python: Path, env: dict[str, str], *, timeout: float = START_TIMEOUT
                            ) -> tuple[int | None, str]:
    """Start DevServer and return (exit code, log) once it exits, or (None, log) if it is still up at `timeout`."""
    log_path = root / "devserver-refused.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(python), "-c", BOOT, str(free_port())], cwd=root / "devserver",  # noqa: S603
                                   env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        stop(process)
    return code, log_path.read_text(encoding="utf-8", errors="replace")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)
