"""Which GPU we plan for: detected (nvidia-smi, then torch) or given (`--vram 24`, `--gpu "RTX 5090"`).

`KNOWN_GPUS` holds memory, compute capability and a rough speed relative to an
RTX 4090 (bf16 training throughput), used only for the wall-time estimate.
"""

from __future__ import annotations

import re
import shutil
import subprocess

from pydantic import BaseModel, ConfigDict, Field

from ..errors import PlanError

NVIDIA_SMI_TIMEOUT_S = 10.0


class GpuInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    vram_gb: float = Field(gt=0)
    compute_capability: str | None = None
    count: int = Field(default=1, ge=1)
    relative_speed: float = Field(default=1.0, gt=0, description="throughput relative to an RTX 4090")
    source: str = "given"  # "nvidia-smi" | "torch" | "table" | "given"

    @property
    def supports_bf16(self) -> bool:
        return self.cc_major is None or self.cc_major >= 8

    @property
    def cc_major(self) -> int | None:
        if not self.compute_capability:
            return None
        try:
            return int(self.compute_capability.split(".")[0])
        except ValueError:
            return None


# name, vram GB, compute capability, speed relative to RTX 4090
_TABLE: tuple[tuple[str, float, str, float], ...] = (
    ("RTX 3060", 12, "8.6", 0.3),
    ("RTX 3080", 10, "8.6", 0.45),
    ("RTX 3090", 24, "8.6", 0.55),
    ("RTX 4060 Ti", 16, "8.9", 0.35),
    ("RTX 4070", 12, "8.9", 0.45),
    ("RTX 4080", 16, "8.9", 0.7),
    ("RTX 4090", 24, "8.9", 1.0),
    ("RTX 5070 Ti", 16, "12.0", 0.7),
    ("RTX 5080", 16, "12.0", 0.8),
    ("RTX 5090", 32, "12.0", 1.35),
    ("RTX A6000", 48, "8.6", 0.6),
    ("RTX 6000 Ada", 48, "8.9", 0.95),
    ("RTX PRO 6000", 96, "12.0", 1.4),
    ("L40S", 48, "8.9", 0.95),
    ("T4", 16, "7.5", 0.12),
    ("V100", 32, "7.0", 0.3),
    ("A100 40GB", 40, "8.0", 0.9),
    ("A100", 80, "8.0", 0.9),
    ("H100", 80, "9.0", 1.8),
)
KNOWN_GPUS: dict[str, GpuInfo] = {
    name: GpuInfo(name=name, vram_gb=vram, compute_capability=cc, relative_speed=speed, source="table")
    for name, vram, cc, speed in _TABLE
}


def _norm(name: str) -> str:
    name = re.sub(r"(?i)\b(nvidia|geforce|tesla|pcie|sxm\d*)\b", " ", name)
    return re.sub(r"[^a-z0-9]+", "", name.lower())


def lookup_gpu(name: str) -> GpuInfo:
    """A card from the table by (loose) name, e.g. 'rtx5090', 'NVIDIA GeForce RTX 4090'. PlanError if unknown."""
    key = _norm(name)
    # Longest table name contained in the given one wins ("RTX 4060 Ti" over a shorter match).
    matches = [g for n, g in KNOWN_GPUS.items() if _norm(n) and _norm(n) in key]
    if matches:
        return max(matches, key=lambda g: len(_norm(g.name)))
    raise PlanError(
        f"unknown GPU {name!r}",
        hint=f"give its memory instead (--vram 24), or one of: {', '.join(KNOWN_GPUS)}",
    )


def gpu_from_vram(vram_gb: float, name: str | None = None) -> GpuInfo:
    if not (1 <= vram_gb <= 1024):
        raise PlanError(f"--vram {vram_gb} is not a plausible GPU memory size", hint="give it in GB, e.g. --vram 24")
    base = None
    if name:
        try:
            base = lookup_gpu(name)
        except PlanError:
            base = None
    return GpuInfo(
        name=name or "GPU (size given)",
        vram_gb=float(vram_gb),
        compute_capability=base.compute_capability if base else None,
        relative_speed=base.relative_speed if base else 1.0,
        source="given",
    )


def _speed_for(name: str) -> float:
    try:
        return lookup_gpu(name).relative_speed
    except PlanError:
        return 1.0


def parse_nvidia_smi(text: str) -> list[GpuInfo]:
    """Parse `nvidia-smi --query-gpu=name,memory.total,compute_cap --format=csv,noheader,nounits` output."""
    gpus: list[GpuInfo] = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 2 or not parts[0]:
            continue
        try:
            mib = float(parts[1])
        except ValueError:
            continue
        cc = parts[2] if len(parts) > 2 and re.fullmatch(r"\d+\.\d+", parts[2]) else None
        gpus.append(
            GpuInfo(
                name=parts[0],
                vram_gb=round(mib / 1024, 1),
                compute_capability=cc,
                relative_speed=_speed_for(parts[0]),
                source="nvidia-smi",
            )
        )
    return gpus


def _detect_nvidia_smi() -> list[GpuInfo]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        # A fixed argument list from PATH lookup, no shell: nothing user-controlled reaches it.
        proc = subprocess.run(  # noqa: S603
            [exe, "--query-gpu=name,memory.total,compute_cap", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_nvidia_smi(proc.stdout) if proc.returncode == 0 else []


def _detect_torch() -> list[GpuInfo]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        gpus.append(
            GpuInfo(
                name=props.name,
                vram_gb=round(props.total_memory / 1024**3, 1),
                compute_capability=f"{props.major}.{props.minor}",
                relative_speed=_speed_for(props.name),
                source="torch",
            )
        )
    return gpus


def detect_gpu() -> GpuInfo | None:
    """The first GPU (with the count of identical ones), or None when there is no CUDA GPU."""
    gpus = _detect_nvidia_smi() or _detect_torch()
    if not gpus:
        return None
    first = gpus[0]
    same = sum(1 for g in gpus if g.name == first.name)
    return first.model_copy(update={"count": same})


def resolve_gpu(*, vram: float | None = None, gpu: str | None = None, detect: bool = True) -> GpuInfo | None:
    """`--vram` wins, then `--gpu` from the table, then detection; None means CPU."""
    if vram is not None:
        return gpu_from_vram(vram, gpu)
    if gpu:
        return lookup_gpu(gpu)
    return detect_gpu() if detect else None
