"""Find the Kohya install (sd-scripts checkout + its own venv + tokenizer cache) and check that it can train.

Layout made by trainer/setup.sh: `KOHYA_DIR/sd-scripts/` (the checkout at the pin),
`KOHYA_DIR/venv/` (its Python), `KOHYA_DIR/tokenizers/` (tokenizers saved for offline
use). A hand-made install with the venv inside the checkout is found as well.
Everything about torch is asked of the venv's own Python (a subprocess with an
argument list and a timeout): our interpreter's torch says nothing about theirs.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import BackendError, Problem
from ..families import get_family
from . import models as model_files

PINNED_COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"
SETUP_HINT = "run trainer/setup.sh on the GPU machine (it clones sd-scripts at the pin and builds the venv)"

# Hub ids of the tokenizers each family's strategy loads; sd-scripts caches them as id.replace('/', '_').
CLIP_L_TOKENIZER = "openai/clip-vit-large-patch14"
CLIP_G_TOKENIZER = "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"
T5_TOKENIZER = "google/t5-v1_1-xxl"
TOKENIZERS: dict[str, tuple[str, ...]] = {
    "sd35_large": (CLIP_L_TOKENIZER, CLIP_G_TOKENIZER, T5_TOKENIZER),
    "sd35_medium": (CLIP_L_TOKENIZER, CLIP_G_TOKENIZER, T5_TOKENIZER),
    "sdxl": (CLIP_L_TOKENIZER, CLIP_G_TOKENIZER),
    "sd15": (CLIP_L_TOKENIZER,),
    "flux_dev": (CLIP_L_TOKENIZER, T5_TOKENIZER),
}

PROBE_TIMEOUT_S = 180.0

# Runs inside the Kohya venv. Prints one JSON object; never raises.
_PROBE = r"""
import importlib, importlib.util, json, sys
out = {"python": sys.version.split()[0], "executable": sys.executable, "modules": {}}
try:
    import torch
    out["torch"] = torch.__version__
    out["cuda_version"] = torch.version.cuda
    out["arch_list"] = list(torch.cuda.get_arch_list())
    out["cuda_available"] = bool(torch.cuda.is_available())
    devs = []
    if out["cuda_available"]:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devs.append({"name": p.name, "capability": "%d.%d" % (p.major, p.minor),
                         "vram_gb": round(p.total_memory / 2**30, 1)})
    out["devices"] = devs
except Exception as exc:
    out["torch_error"] = "%s: %s" % (type(exc).__name__, exc)
for name in sys.argv[1:]:
    mode, _, mod = name.partition(":")
    try:
        if mode == "import":
            m = importlib.import_module(mod)
            out["modules"][mod] = getattr(m, "__version__", "present")  # not every module states its version
        else:
            out["modules"][mod] = "present" if importlib.util.find_spec(mod) else None
    except Exception as exc:
        out["modules"][mod] = None
        out.setdefault("module_errors", {})[mod] = "%s: %s" % (type(exc).__name__, exc)
print("@@PROBE@@" + json.dumps(out))
"""


@dataclass(frozen=True)
class KohyaInstall:
    root: Path
    scripts_dir: Path
    python: Path
    tokenizer_cache_dir: Path | None

    def script(self, name: str) -> Path:
        return self.scripts_dir / name


def _venv_python(base: Path) -> Path | None:
    for venv in ("venv", ".venv"):
        for rel in ("bin/python", "Scripts/python.exe"):
            cand = base / venv / rel
            if cand.exists():
                return cand
    return None


def find_kohya(kohya_dir: Path | str | None) -> KohyaInstall:
    """The Kohya install at `kohya_dir`; BackendError saying what is missing and how to get it."""
    if kohya_dir is None:
        raise BackendError(
            "no Kohya install configured",
            hint=f"pass --kohya-dir DIR or set KOHYA_DIR; to create one, {SETUP_HINT}",
            diagnosis="kohya_missing",
        )
    root = Path(kohya_dir).expanduser().resolve()
    if not root.is_dir():
        raise BackendError(f"Kohya folder {root} does not exist", hint=SETUP_HINT, diagnosis="kohya_missing")
    scripts = None
    for cand in (root / "sd-scripts", root):
        if (cand / "train_network.py").is_file() or (cand / "sd3_train_network.py").is_file():
            scripts = cand
            break
    if scripts is None:
        raise BackendError(
            f"no sd-scripts checkout in {root} (looked for sd-scripts/sd3_train_network.py and sd3_train_network.py)",
            hint=SETUP_HINT,
            diagnosis="kohya_missing",
        )
    python = _venv_python(root) or _venv_python(scripts)
    if python is None:
        raise BackendError(
            f"no Python venv next to sd-scripts in {root} (looked for venv/ and .venv/)",
            hint=SETUP_HINT,
            diagnosis="kohya_venv_missing",
        )
    tok = next((d for d in (root / "tokenizers", scripts / "tokenizers") if d.is_dir()), None)
    return KohyaInstall(root, scripts, python, tok)


def read_git_head(repo: Path) -> str | None:
    """The commit a checkout is at, read from .git without running git (None if unknown)."""
    git = repo / ".git"
    if git.is_file():  # worktree or submodule: "gitdir: <path>"
        text = git.read_text(encoding="utf-8", errors="replace").strip()
        if not text.startswith("gitdir:"):
            return None
        git = (repo / text.split(":", 1)[1].strip()).resolve()
    head_file = git / "HEAD"
    if not head_file.is_file():
        return None
    head = head_file.read_text(encoding="utf-8", errors="replace").strip()
    if not head.startswith("ref:"):
        return head.lower() or None
    ref = head.split(":", 1)[1].strip()
    ref_file = git / ref
    if ref_file.is_file():
        return ref_file.read_text(encoding="utf-8", errors="replace").strip().lower() or None
    packed = git / "packed-refs"
    if packed.is_file():
        for line in packed.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == ref:
                return parts[0].lower()
    return None


SOURCE_RECORD = "sd-scripts.source.json"


def read_source_record(root: Path) -> dict[str, Any]:
    """What trainer/setup.sh recorded about where sd-scripts came from ({} when there is no readable record)."""
    try:
        data = json.loads((root / SOURCE_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def probe_venv(python: Path, *, modules: list[str] | None = None, timeout: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Ask the venv's Python about torch, CUDA archs, GPUs and modules (`import:NAME` imports, `find:NAME` looks)."""
    argv = [str(python), "-c", _PROBE, *(modules or [])]
    env = {**os.environ, "PYTHONNOUSERSITE": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    try:
        proc = subprocess.run(  # noqa: S603 - argument list; the python is the configured Kohya venv
            argv, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BackendError(
            f"the Kohya venv's Python did not answer within {timeout:.0f} s", hint="is the disk or the venv broken?",
            diagnosis="kohya_venv_broken",
        ) from exc
    except OSError as exc:
        raise BackendError(f"cannot run {python}: {exc.strerror or exc}", hint=SETUP_HINT,
                           diagnosis="kohya_venv_broken") from exc
    for line in proc.stdout.splitlines():
        if line.startswith("@@PROBE@@"):
            return json.loads(line[len("@@PROBE@@"):])
    raise BackendError(
        f"the Kohya venv's Python failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}",
        hint=SETUP_HINT,
        diagnosis="kohya_venv_broken",
    )


def _cap_tuple(capability: str) -> tuple[int, int] | None:
    try:
        major, minor = capability.split(".")
        return int(major), int(minor)
    except ValueError:
        return None


def arch_supported(arch_list: list[str], capability: str) -> str:
    """'binary' if torch ships kernels this GPU runs, 'ptx' if only PTX it could JIT, else 'none'."""
    cap = _cap_tuple(capability)
    if cap is None:
        return "none"
    major, minor = cap
    for arch in arch_list:
        if arch.startswith("sm_"):
            num = arch[3:].rstrip("a")
            if num.isdigit() and int(num) // 10 == major and int(num) % 10 <= minor:
                return "binary"
    for arch in arch_list:
        if arch.startswith("compute_"):
            num = arch[8:].rstrip("a")
            if num.isdigit() and (int(num) // 10, int(num) % 10) <= cap:
                return "ptx"
    return "none"


def torch_problems(probe: dict[str, Any], *, gpu_capability: str | None, gpu_name: str | None = None) -> list[Problem]:
    """Findings about torch in the venv against the GPU (from the probe, else the plan's GPU)."""
    out: list[Problem] = []
    if "torch_error" in probe:
        return [Problem(f"torch cannot be imported in the Kohya venv: {probe['torch_error']}", code="torch_missing",
                        hint=SETUP_HINT)]
    version = probe.get("torch", "?")
    archs = probe.get("arch_list") or []
    devices = probe.get("devices") or []
    if devices:
        gpu_capability = devices[0]["capability"]
        gpu_name = devices[0]["name"]
    out.append(Problem(f"torch {version} (CUDA {probe.get('cuda_version')}), built for {', '.join(archs) or 'CPU only'}",
                       code="torch", severity="info"))
    if gpu_capability is None:
        out.append(Problem("no CUDA GPU is visible to the Kohya venv and the plan names none", code="no_gpu",
                           severity="warning", hint="training on the CPU is only for tests; check the driver (nvidia-smi)"))
        return out
    sm = "sm_" + gpu_capability.replace(".", "")
    support = arch_supported(archs, gpu_capability)
    label = f"{gpu_name or 'the GPU'} (compute capability {gpu_capability}, {sm})"
    fix = ("install a torch built for it inside the Kohya venv: `trainer/setup.sh --cuda cu128` (cu128 builds include "
           "sm_120 for RTX 50xx), or `<venv>/bin/pip install --force-reinstall torch torchvision --index-url "
           "https://download.pytorch.org/whl/cu128`")
    if support == "none":
        out.append(Problem(f"torch {version} has no kernels for {label}: training fails with "
                           "'no kernel image is available'", code="cuda_arch", hint=fix))
    elif support == "ptx":
        out.append(Problem(f"torch {version} has only PTX for {label}: it may JIT slowly or fail",
                           code="cuda_arch", severity="warning", hint=fix))
    else:
        out.append(Problem(f"torch has kernels for {label}", code="cuda_arch", severity="info"))
    if devices and not probe.get("cuda_available"):
        out.append(Problem("CUDA is not available in the Kohya venv", code="no_gpu", hint=fix))
    return out


def tokenizer_problems(install: KohyaInstall, family: str) -> list[Problem]:
    needed = TOKENIZERS.get(family, ())
    cache = install.tokenizer_cache_dir
    if cache is None:
        return [Problem(f"no tokenizer cache in {install.root} (tokenizers/)", code="tokenizers",
                        hint="without it sd-scripts downloads tokenizers from the hub at every start; "
                        "trainer/setup.sh saves them once")]
    out = []
    for hub_id in needed:
        folder = cache / hub_id.replace("/", "_")
        if not folder.is_dir() or not any(folder.iterdir()):
            out.append(Problem(f"tokenizer {hub_id} is not saved in {folder}", code="tokenizers",
                               hint="run trainer/setup.sh --tokenizers-only on a machine with internet access"))
    return out


def environment_problems(
    kohya_dir: Path | None,
    *,
    family: str,
    models_dir: Path | None,
    needs_bitsandbytes: bool = False,
    gpu_capability: str | None = None,
    gpu_name: str | None = None,
    probe: bool = True,
) -> list[Problem]:
    """Every finding about the Kohya setup for `family` (errors block, warnings and infos do not)."""
    fam = get_family(family)
    problems: list[Problem] = []
    try:
        install = find_kohya(kohya_dir)
    except BackendError as exc:
        problems.append(Problem(exc.message, code=exc.diagnosis or "kohya", hint=exc.hint))
        install = None
    if install is not None:
        problems.append(Problem(f"sd-scripts at {install.scripts_dir}, Python {install.python}", code="kohya",
                                severity="info"))
        if not install.script(fam.kohya_script).is_file():
            problems.append(Problem(f"{fam.kohya_script} is missing from {install.scripts_dir}", code="kohya_script",
                                    hint=f"sd-scripts is too old for {fam.label}; {SETUP_HINT}"))
        head = read_git_head(install.scripts_dir)
        record = read_source_record(install.root)
        if head is None and record.get("kind") == "source":
            verified = record.get("commit") == PINNED_COMMIT and str(record.get("checked", "")).startswith("every file")
            problems.append(Problem(f"sd-scripts copied from {record.get('origin')} by trainer/setup.sh --source: "
                                    f"{record.get('checked')}", code="kohya_commit",
                                    severity="info" if verified else "warning",
                                    hint=None if verified else f"the generated flags are checked against {PINNED_COMMIT[:8]}"))
        elif head is None:
            problems.append(Problem("cannot tell which sd-scripts commit is checked out (no .git)", code="kohya_commit",
                                    severity="warning", hint=f"the generated flags are checked against {PINNED_COMMIT[:8]}"))
        elif head != PINNED_COMMIT:
            problems.append(Problem(f"sd-scripts is at {head[:8]}, not the pinned {PINNED_COMMIT[:8]}",
                                    code="kohya_commit", severity="warning",
                                    hint="flags and dataset keys were checked against the pin; "
                                    f"`git -C {install.scripts_dir} checkout {PINNED_COMMIT}`"))
        problems += tokenizer_problems(install, family)
        if probe:
            mods = ["find:accelerate", "find:voluptuous", "find:toml", "find:safetensors"]
            if needs_bitsandbytes:
                mods.append("import:bitsandbytes")
            try:
                result = probe_venv(install.python, modules=mods)
            except BackendError as exc:
                problems.append(Problem(exc.message, code=exc.diagnosis or "kohya_venv", hint=exc.hint))
            else:
                problems += torch_problems(result, gpu_capability=gpu_capability, gpu_name=gpu_name)
                for mod, version in result.get("modules", {}).items():
                    if version is None:
                        why = result.get("module_errors", {}).get(mod, "not installed")
                        hint = (f"`{install.python} -m pip install bitsandbytes`, or plan with optimizer=AdamW"
                                if mod == "bitsandbytes" else SETUP_HINT)
                        problems.append(Problem(f"{mod} cannot be imported in the Kohya venv ({why})",
                                                code=f"module_{mod}", hint=hint))
    files = model_files.find_model_files(family, models_dir)
    problems += model_files.model_file_problems(files, models_dir)
    return problems


def blockers(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]
