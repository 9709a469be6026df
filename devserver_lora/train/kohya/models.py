"""Find the base-model files a family needs and check what each one claims to be, from its header alone.

sd-scripts takes SD3.5 as a SAI single file (MMDiT + VAE) plus separate clip_l,
clip_g and t5xxl files; FLUX as the transformer plus clip_l, t5xxl and the `ae`.
A wrong file only fails minutes later inside sd-scripts, so we read the safetensors
headers first: an SD3.5 Large MMDiT has 38 `joint_blocks`, Medium 24 (with `attn2`),
CLIP-L has 12 encoder layers, CLIP-G 32, the T5-XXL encoder 24 blocks.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import LoraFileError, Problem, UnsafePathError
from ...lora.fit import ArchSpec, arch_name
from ...lora.header import read_header
from ...paths import safe_join
from ..families import get_family

# Role -> candidate file names (first found wins), per family. `models.json` in the models folder overrides.
_T5 = ("t5xxl_fp16.safetensors", "t5xxl_fp8_e4m3fn.safetensors", "t5xxl_fp8_e4m3fn_scaled.safetensors")
ROLES: dict[str, dict[str, tuple[str, ...]]] = {
    "sd35_large": {
        "checkpoint": ("sd3.5_large.safetensors", "sd3.5_large_fp16.safetensors"),
        "clip_l": ("clip_l.safetensors",),
        "clip_g": ("clip_g.safetensors",),
        "t5xxl": _T5,
    },
    "sd35_medium": {
        "checkpoint": ("sd3.5_medium.safetensors",),
        "clip_l": ("clip_l.safetensors",),
        "clip_g": ("clip_g.safetensors",),
        "t5xxl": _T5,
    },
    "sdxl": {"checkpoint": ("sd_xl_base_1.0.safetensors",)},
    "sd15": {"checkpoint": ("v1-5-pruned-emaonly.safetensors", "v1-5-pruned.safetensors")},
    "flux_dev": {
        "checkpoint": ("flux1-dev.safetensors",),
        "clip_l": ("clip_l.safetensors",),
        "t5xxl": _T5,
        "ae": ("ae.safetensors",),
    },
}

# What each role of each family must be, as `classify` names it.
EXPECTED: dict[str, dict[str, str]] = {
    "sd35_large": {"checkpoint": "sd35_large", "clip_l": "clip_l", "clip_g": "clip_g", "t5xxl": "t5xxl"},
    "sd35_medium": {"checkpoint": "sd35_medium", "clip_l": "clip_l", "clip_g": "clip_g", "t5xxl": "t5xxl"},
    "sdxl": {"checkpoint": "sdxl"},
    "sd15": {"checkpoint": "sd15"},
    "flux_dev": {"checkpoint": "flux", "clip_l": "clip_l", "t5xxl": "t5xxl", "ae": "flux_ae"},
}

_JOINT = re.compile(r"(?:^|\.)joint_blocks\.(\d+)\.")
_CLIP_LAYER = re.compile(r"encoder\.layers\.(\d+)\.")
_RESBLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.")
_T5_BLOCK = re.compile(r"encoder\.block\.(\d+)\.")
_DOUBLE = re.compile(r"(?:^|\.)double_blocks\.(\d+)\.")


@dataclass
class ModelFiles:
    """Resolved base-model files for one family (None where the family has no such role or it is missing)."""

    family: str
    files: dict[str, Path] = field(default_factory=dict)
    missing: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def get(self, role: str) -> Path | None:
        return self.files.get(role)


def _count(pattern: re.Pattern[str], keys: list[str]) -> int:
    found = {int(m.group(1)) for k in keys for m in [pattern.search(k)] if m}
    return max(found) + 1 if found else 0


def classify(path: str | Path) -> tuple[str, str]:
    """(kind, detail) of a model file from its header: sd35_large, sd35_medium, sd3, sdxl, sd15, flux,
    flux_ae, clip_l, clip_g, t5xxl, or unknown. LoraFileError if it is not a safetensors file."""
    keys = list(read_header(path).tensors)
    depth = _count(_JOINT, keys)
    if depth:
        has_attn2 = any(".x_block.attn2." in k for k in keys)
        has_vae = any(k.startswith("first_stage_model.") for k in keys)
        detail = f"MMDiT depth {depth}{', attn2' if has_attn2 else ''}{', VAE inside' if has_vae else ', no VAE'}"
        if depth == 38 and not has_attn2:
            return "sd35_large", detail
        if depth == 24:
            return "sd35_medium", detail
        return "sd3", detail
    doubles = _count(_DOUBLE, keys)
    if doubles:
        return "flux", f"FLUX transformer, {doubles} double blocks"
    if any("label_emb" in k for k in keys) and any("conditioner.embedders" in k for k in keys):
        return "sdxl", "SDXL UNet + text encoders"
    if any(k.startswith("model.diffusion_model.input_blocks") for k in keys) and any(
        k.startswith("cond_stage_model.") for k in keys
    ):
        return "sd15", "SD1.x UNet + CLIP"
    t5 = _count(_T5_BLOCK, keys)
    if t5:
        return ("t5xxl" if t5 == 24 else "t5"), f"T5 encoder, {t5} blocks"
    layers = _count(_CLIP_LAYER, keys) or _count(_RESBLOCK, keys)
    if layers == 12:
        return "clip_l", "CLIP text encoder, 12 layers"
    if layers == 32:
        return "clip_g", "CLIP text encoder, 32 layers"
    if layers:
        return "clip", f"CLIP text encoder, {layers} layers"
    if any(k.startswith("decoder.conv_in") for k in keys) and any(k.startswith("encoder.conv_in") for k in keys):
        return "flux_ae", "autoencoder"
    return "unknown", f"{len(keys)} tensors, no known layout"


def checkpoint_depth(models: ModelFiles) -> int | None:
    """Joint blocks of the SD3 checkpoint, counted from its header's `joint_blocks.N.` key names (None: no SD3
    checkpoint or none of those keys). sd-scripts builds the MMDiT with as many blocks as the file has."""
    checkpoint = models.get("checkpoint")
    if checkpoint is None or not get_family(models.family).arch.startswith(("sd3", "sd35")):
        return None
    return _count(_JOINT, list(read_header(checkpoint).tensors)) or None


def checkpoint_arch(models: ModelFiles) -> str:
    """The `lora.fit` name of the model sd-scripts trains on: the family's, unless the checkpoint says otherwise.

    SD3 LoRAs are labelled from the checkpoint's own depth and attn2 blocks (sd-scripts loads CLIP-L, CLIP-G and
    T5 beside it), so a LoRA trained on a test-sized checkpoint is judged as what it is at install.
    """
    default = get_family(models.family).arch
    checkpoint = models.get("checkpoint")
    if checkpoint is None or not default.startswith(("sd3", "sd35")):
        return default
    keys = list(read_header(checkpoint).tensors)
    depth = _count(_JOINT, keys)
    if not depth:
        return default
    attn2 = sorted({int(m.group(1)) for k in keys for m in [re.search(r"joint_blocks\.(\d+)\.x_block\.attn2\.", k)] if m})
    # No LoRA targets the q/k norms, so whether the checkpoint has them does not change what fits.
    return arch_name(ArchSpec.sd3(depth, attn2_blocks=attn2))


def find_model_files(family: str, models_dir: Path | None) -> ModelFiles:
    """Resolve each role's file under `models_dir` (by `models.json` there, else by the usual file names)."""
    result = ModelFiles(family)
    roles = ROLES.get(family, {})
    if models_dir is None:
        result.missing = dict(roles)
        return result
    overrides: dict = {}
    manifest = models_dir / "models.json"
    if manifest.is_file():
        try:
            overrides = json.loads(manifest.read_text(encoding="utf-8")).get(family, {})
        except (OSError, json.JSONDecodeError, AttributeError):
            overrides = {}
    for role, names in roles.items():
        if role in overrides and isinstance(overrides[role], str):
            try:
                names = (overrides[role],)
                candidate = safe_join(models_dir, overrides[role], what=f"models.json {family}.{role}")
            except UnsafePathError:
                result.missing[role] = names
                continue
            if candidate.is_file():
                result.files[role] = candidate
                continue
            result.missing[role] = names
            continue
        for name in names:
            candidate = models_dir / name
            if candidate.is_file():
                result.files[role] = candidate
                break
        else:
            result.missing[role] = names
    return result


def model_file_problems(models: ModelFiles, models_dir: Path | None) -> list[Problem]:
    """Every missing or mismatched base-model file, with what to put where."""
    problems: list[Problem] = []
    if models_dir is None:
        return [
            Problem(
                "no models folder configured",
                code="models_dir",
                hint="set DEVSERVER_LORA_MODELS (or --models-dir) to the folder holding the base-model files",
            )
        ]
    expected = EXPECTED.get(models.family, {})
    for role, names in models.missing.items():
        problems.append(
            Problem(
                f"{role} file for {models.family} not found in {models_dir}",
                path=role,
                code="model_missing",
                hint=f"put it there as {' or '.join(names)} (or name it in {models_dir / 'models.json'})",
            )
        )
    for role, path in models.files.items():
        try:
            kind, detail = classify(path)
        except LoraFileError as exc:
            problems.append(Problem(f"{role}: {exc.message}", file=str(path), path=role, code="model_unreadable",
                                    hint="download the file again"))
            continue
        want = expected.get(role)
        if want and kind != want:
            severity = "error"
            if want.startswith("sd35") and kind == "sd3":
                # A depth we do not know (e.g. a test model) trains, but is not the family asked for.
                severity = "warning"
            problems.append(
                Problem(
                    f"{role} should be {want} but the file looks like {kind} ({detail})",
                    file=str(path),
                    path=role,
                    code="model_mismatch",
                    severity=severity,
                    hint=f"replace {path.name} with the {want} file, or plan for the family this file belongs to",
                )
            )
    return problems
