"""`devserver-lora devserver doctor`: what a DevServer checkout still needs before students can use LoRA configs.

Each check reads DevServer's own files the way DevServer uses them (facts of the pinned commit) and says, per item,
"ok" or the exact step left to do:
- the schemas tree validates (`config.validate`, strict on LoRA configs and their chunks);
- the app factory (`devserver/my_app/__init__.py: create_app`) calls `install_into_devserver`, and DevServer's venv
  (`<checkout>/venv`, what its start scripts run) can import this package;
- the loras folder exists and is the one SwarmUI's ComfyUI reads (DevServer's `LORA_OUTPUT_DIR`: the environment
  variable, `user_settings.json`, else `<AI tools>/SwarmUI/Models/loras`; ComfyUI's own `models/loras` must see the
  same files; with `--comfyui URL`, ComfyUI's LoraLoader list must name them);
- every LoRA a LoRA config names is there and fits the config's model;
- every LoRA config is offered in the frontend's pickers: the canvas lists `configs/output/*.json` itself
  (`/api/canvas/output-configs`), the main Stage-4 picker (`views/text_transformation.vue`, `configsByCategory`) is a
  fixed list in the frontend's source, built into `dist/`.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess  # noqa: S404 - fixed argument lists, no shell
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ..config.tree import SchemasTree
from ..config.validate import validate_tree
from ..errors import ComfyProtocolError, ConfigError
from .hook import lora_file_problems

# The lines the README tells DevServer's admin to put into create_app(), right after reload_user_settings().
APP_FACTORY_SNIPPET = '''\
    # devserver-lora: our LoRA injection in place of BackendRouter's own
    from pathlib import Path
    from config import LORA_OUTPUT_DIR
    from devserver_lora.devserver import install_into_devserver
    from schemas.engine.backend_router import BackendRouter
    install_into_devserver(BackendRouter, schemas_dir=Path(__file__).resolve().parent.parent / "schemas",
                           loras_dir=LORA_OUTPUT_DIR)
'''
APP_FACTORY = Path("devserver") / "my_app" / "__init__.py"
PICKER_VIEW = Path("public") / "ai4artsed-frontend" / "src" / "views" / "text_transformation.vue"
FRONTEND_DIST = Path("public") / "ai4artsed-frontend" / "dist"
VENV_PYTHON = Path("venv") / "bin" / "python"
HTTP_TIMEOUT = 10.0


@dataclass
class Check:
    """One item of the doctor's list: ok, or what is wrong and the exact step left to do."""

    item: str
    ok: bool
    detail: str
    steps: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"item": self.item, "ok": self.ok, "detail": self.detail, "steps": self.steps}


@dataclass(frozen=True)
class DevServerLayout:
    """Where a DevServer checkout keeps what the doctor reads, following DevServer's config.py."""

    root: Path
    loras_dir: Path
    loras_source: str
    swarmui_dir: Path
    comfyui_dir: Path

    @property
    def schemas(self) -> Path:
        return self.root / "devserver" / "schemas"


def _user_settings(root: Path) -> dict[str, Any]:
    path = root / "devserver" / "user_settings.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def layout(root: str | Path, *, loras_dir: str | Path | None = None,
           env: Mapping[str, str] | None = None) -> DevServerLayout:
    """DevServer's paths as its config.py derives them (AI_TOOLS_BASE defaults to the checkout's parent)."""
    base = Path(root).resolve()
    if not (base / "devserver" / "schemas").is_dir():
        raise ConfigError(f"{base} is not a DevServer checkout (no devserver/schemas)",
                          hint="give the folder that holds devserver/ (the repository ai4artsed_webserver)")
    environ = os.environ if env is None else env
    tools = Path(environ.get("AI_TOOLS_BASE", str(base.parent)))
    swarmui = Path(environ.get("SWARMUI_PATH", str(tools / "SwarmUI")))
    comfyui = Path(environ.get("COMFYUI_PATH", str(tools / "SwarmUI" / "dlbackend" / "ComfyUI")))
    settings = _user_settings(base)
    if loras_dir is not None:
        loras, source = Path(loras_dir), "--loras-dir"
    elif isinstance(settings.get("LORA_OUTPUT_DIR"), str):
        loras, source = Path(settings["LORA_OUTPUT_DIR"]), "LORA_OUTPUT_DIR in devserver/user_settings.json"
    elif environ.get("LORA_OUTPUT_DIR"):
        loras, source = Path(environ["LORA_OUTPUT_DIR"]), "the LORA_OUTPUT_DIR environment variable"
    else:
        loras, source = tools / "SwarmUI" / "Models" / "loras", "DevServer's default, <AI tools>/SwarmUI/Models/loras"
    return DevServerLayout(base, loras, source, swarmui, comfyui)


# ----------------------------------------------------------------------------- the checks
def _this_package() -> str:
    """What to `pip install` into DevServer's venv: this source checkout, or the package by name."""
    repo = Path(__file__).resolve().parents[2]
    return str(repo) if (repo / "pyproject.toml").is_file() else "devserver-lora"


def tree_check(where: DevServerLayout, tree: SchemasTree) -> Check:
    report = validate_tree([where.schemas])
    errors = report.errors()
    # DevServer renders from its own tree only: a chunk only the project's layer has is missing there.
    errors += [p for p in tree.lora_config_problems() if str(p) not in {str(e) for e in errors}]
    if not errors:
        return Check("schemas tree validates", True, report.summary())
    return Check("schemas tree validates", False, f"{len(errors)} error(s); {report.summary()}",
                 [f"fix {p}" for p in errors])


def _calls_install(source: str) -> tuple[bool, bool]:
    """(create_app calls install_into_devserver, the name is imported from devserver_lora.devserver)."""
    tree = ast.parse(source)
    imported = any(isinstance(n, ast.ImportFrom) and n.module == "devserver_lora.devserver"
                   and any(a.name == "install_into_devserver" for a in n.names) for n in ast.walk(tree))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "create_app":
            for call in ast.walk(node):
                if isinstance(call, ast.Call):
                    fn = call.func
                    name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
                    if name == "install_into_devserver":
                        return True, imported
    return False, imported


def app_factory_check(where: DevServerLayout) -> Check:
    path = where.root / APP_FACTORY
    try:
        calls, imported = _calls_install(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError) as exc:
        return Check("app factory calls install_into_devserver", False, f"cannot read {path}: {exc}")
    if calls and imported:
        return Check("app factory calls install_into_devserver", True, f"{APP_FACTORY}: create_app() installs it")
    return Check("app factory calls install_into_devserver", False,
                 f"{APP_FACTORY}: create_app() does not call install_into_devserver",
                 [f"add these lines to create_app() in {path}, right after `reload_user_settings()`:\n"
                  + APP_FACTORY_SNIPPET.rstrip()])


def venv_check(where: DevServerLayout) -> Check:
    python = where.root / VENV_PYTHON
    if not python.is_file():
        return Check("DevServer's venv imports devserver_lora", False,
                     f"no {VENV_PYTHON} (DevServer's start scripts run it)",
                     [f"create DevServer's venv as its README says, then `{python.parent}/pip install "
                      f"{_this_package()}`"])
    try:
        done = subprocess.run([str(python), "-c", "import devserver_lora"], capture_output=True, text=True,  # noqa: S603
                              timeout=60, cwd=where.root / "devserver")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("DevServer's venv imports devserver_lora", False, f"{python} did not run: {exc}")
    if done.returncode == 0:
        return Check("DevServer's venv imports devserver_lora", True, f"{python} imports it")
    return Check("DevServer's venv imports devserver_lora", False, done.stderr.strip().splitlines()[-1:][0]
                 if done.stderr.strip() else f"{python} exited {done.returncode}",
                 [f"{python.parent}/pip install {_this_package()}"])


def _comfyui_loras(url: str) -> list[str]:
    from ..comfy.preflight import installed_from_object_info

    answer = httpx.get(url.rstrip("/") + "/object_info/LoraLoader", timeout=HTTP_TIMEOUT)
    answer.raise_for_status()
    return installed_from_object_info(answer.json())


def loras_folder_check(where: DevServerLayout, tree: SchemasTree, comfyui_url: str | None) -> Check:
    folder = where.loras_dir
    item = "loras folder exists and is the one ComfyUI reads"
    if not folder.is_dir():
        return Check(item, False, f"{folder} ({where.loras_source}) does not exist: install_into_devserver refuses "
                     "to start without it", [f"mkdir -p {folder} (or point LORA_OUTPUT_DIR at the folder SwarmUI's "
                                             "ComfyUI reads LoRAs from)"])
    names = sorted({s.name for specs in tree.lora_configs().values() for s in specs})
    steps: list[str] = []
    notes = [f"{folder} ({where.loras_source})"]
    swarm = where.swarmui_dir / "Models" / "loras"
    if swarm.is_dir() and swarm.resolve() != folder.resolve():
        steps.append(f"SwarmUI reads {swarm}, not {folder}: set LORA_OUTPUT_DIR={swarm} (or move the LoRAs there)")
    comfy = where.comfyui_dir / "models" / "loras"
    if comfy.is_dir() and comfy.resolve() != folder.resolve():
        notes.append(f"ComfyUI's own {comfy} must see the same files")
        for name in names:
            if (folder / name).is_file() and not (comfy / name).exists():
                steps.append(f"ln -s {folder / name} {comfy / name}   # DevServer links each LoRA into ComfyUI")
    if comfyui_url:
        try:
            offered = set(_comfyui_loras(comfyui_url))
        except (httpx.HTTPError, ValueError, ComfyProtocolError) as exc:
            steps.append(f"ComfyUI at {comfyui_url} did not list its LoRAs ({exc}): start it, or check the URL")
        else:
            notes.append(f"ComfyUI at {comfyui_url} lists {len(offered)} LoRA(s)")
            steps += [f"ComfyUI does not offer {n}: put it where ComfyUI reads LoRAs, then refresh ComfyUI"
                      for n in names if (folder / n).is_file() and n not in offered]
    elif not comfy.is_dir():
        notes.append("which folder ComfyUI reads was not checked (no ComfyUI install here; pass --comfyui URL)")
    return Check(item, not steps, "; ".join(notes), steps)


def _interception_steps(tree: SchemasTree, loras_dir: Path) -> list[str]:
    """A LoRA an interception config names must be installed too: DevServer passes it to every output config
    without LoRAs of its own, and a render with a missing LoRA is refused."""
    steps = []
    for config, entries in sorted(tree.interception_loras.items()):
        for entry in entries:
            name = entry.get("name")
            if isinstance(name, str) and not (loras_dir / name).is_file():
                steps.append(f"interception config {config} names LoRA {name}, which is not in {loras_dir}: install "
                             "it, or remove it from that config's meta.loras")
    return steps


def lora_files_check(where: DevServerLayout, tree: SchemasTree) -> Check:
    item = "every LoRA config's LoRA is installed and fits its model"
    configs = tree.lora_configs()
    if not configs and not tree.interception_loras:
        return Check(item, True, "no LoRA output config yet (`train install JOB --schemas ...` writes one)")
    if not where.loras_dir.is_dir():
        return Check(item, False, "not checked: the loras folder is missing (see above)")
    steps = [f"{p.message}" + (f" ({p.hint})" if p.hint else "") for p in lora_file_problems(tree, where.loras_dir)]
    steps += _interception_steps(tree, where.loras_dir)
    count = sum(len(v) for v in configs.values())
    detail = f"{count} LoRA(s) of {len(configs)} output config(s), and the interception configs' LoRAs"
    return Check(item, not steps, detail + (": present and fitting" if not steps else f": {len(steps)} not ready"),
                 steps)


_PICKER_IDS = re.compile(r"\bid:\s*'([^']+)'")


def _picker_block(source: str) -> str:
    """The `image: [...]` list of `configsByCategory` in the frontend source ('' when not found)."""
    start = source.find("configsByCategory")
    if start < 0:
        return ""
    image = source.find("image:", start)
    end = source.find("]", image)
    return source[image:end] if image >= 0 and end > image else ""


def picker_entry(name: str, config: Any) -> str:
    """The line to add to `configsByCategory.image` for a LoRA config (our own text, from the config)."""
    names = config.name
    title = (names.get("de") or names.get("en") or name) if isinstance(names, dict) else str(names)
    icon = (config.model_extra or {}).get("display", {}).get("icon", "🧩")
    label = str(title).replace("'", "’")
    return f"{{ id: '{name}', label: '{label}', emoji: '{icon}', color: '#607D8B', description: '{label}' }},"


def picker_check(where: DevServerLayout, tree: SchemasTree) -> Check:
    item = "each LoRA config is offered in the frontend's pickers"
    configs = tree.lora_configs()
    if not configs:
        return Check(item, True, "no LoRA output config to offer")
    view = where.root / PICKER_VIEW
    notes = [f"the canvas picker lists configs/output/*.json itself: {', '.join(sorted(configs))}"]
    try:
        listed = set(_PICKER_IDS.findall(_picker_block(view.read_text(encoding="utf-8"))))
    except OSError:
        return Check(item, True, "; ".join([*notes, f"the main picker was not checked (no {PICKER_VIEW})"]))
    steps = [f"add to configsByCategory.image in {view}:\n    {picker_entry(n, tree.output_configs[n])}"
             for n in sorted(configs) if n not in listed]
    dist = where.root / FRONTEND_DIST
    built = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(dist.glob("assets/*.js")))
    if steps or (dist.is_dir() and any(f"'{n}'" not in built and f'"{n}"' not in built for n in configs)):
        steps.append(f"rebuild the frontend: cd {view.parents[2]} && npm run build  (DevServer serves {FRONTEND_DIST})")
    if not steps:
        notes.append(f"the main picker ({PICKER_VIEW.name}) lists them")
    return Check(item, not steps, "; ".join(notes), steps)


def run_doctor(root: str | Path, *, loras_dir: str | Path | None = None, comfyui_url: str | None = None,
               env: Mapping[str, str] | None = None) -> list[Check]:
    """Every check, in the order an admin would work through them."""
    where = layout(root, loras_dir=loras_dir, env=env)
    tree = SchemasTree.load(where.schemas, own_chunks=False)
    return [
        tree_check(where, tree),
        app_factory_check(where),
        venv_check(where),
        loras_folder_check(where, tree, comfyui_url),
        lora_files_check(where, tree),
        picker_check(where, tree),
    ]

