"""Does a LoRA fit a model? The one fit check: shapes (family, layer width, text encoders), then key names.

ComfyUI applies a LoRA key only where its name maps to a weight of the loaded model, and only LOGS the keys it
skips ("lora key not loaded: <key>", "NOT LOADED <weight>"); a LoRA of the wrong width is refused weight by
weight, also only in the log. The student gets an image without the LoRA's effect and no error. So every place
that applies or installs a LoRA asks `fit_problems` (or `check_fit`) first: `inspect-lora --against`, `generate`'s
pre-check, the DevServer injector and `train install` all run this same function.
"""

from __future__ import annotations

import dataclasses
import os
import re

from ..errors import LoraFileError, Problem
from .keys import ARCHS, ArchSpec, Target, clip_weights, comfy_key_map, model_weights, target_text
from .report import LoraReport, inspect_lora

__all__ = ["ARCHS", "ArchSpec", "arch_name", "check_fit", "fit_problems", "predict_not_loaded", "resolve_arch"]

# ----------------------------------------------------------------------------- coverage
_ALWAYS = (".alpha", ".dora_scale")
# (up name, down name, mid name) in the order ComfyUI's LoRA adapter tries them.
_LORA_PAIRS = (
    (".lora_up.weight", ".lora_down.weight", ".lora_mid.weight"),
    ("_lora.up.weight", "_lora.down.weight", None),
    (".lora_B.weight", ".lora_A.weight", None),
    (".lora.up.weight", ".lora.down.weight", None),
    (".lora_B", ".lora_A", None),
    (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight", None),
    (".lora_B.default.weight", ".lora_A.default.weight", None),
)
_LOHA = (".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b")
_LOKR = (".lokr_w1", ".lokr_w2", ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2_a", ".lokr_w2_b", ".lokr_t2")
_GLORA = (".a1.weight", ".a2.weight", ".b1.weight", ".b2.weight")
_SUFFIXES = tuple(
    sorted(
        {*_ALWAYS, ".reshape_weight", *(s for trio in _LORA_PAIRS for s in trio if s), *_LOHA, ".hada_t1", ".hada_t2",
         *_LOKR, *_GLORA, ".oft_blocks", ".rescale", ".w_norm", ".b_norm", ".diff", ".diff_b", ".set_weight"},
        key=len,
        reverse=True,
    )
)


def _consume(x: str, keys: set[str], loaded: set[str]) -> list[Target | tuple[str, str]]:
    """Keys of stem `x` ComfyUI's load_lora consumes (added to `loaded`); returns patch kinds made."""
    patches: list = []
    for s in _ALWAYS:
        if x + s in keys:
            loaded.add(x + s)
    for up, down, mid in _LORA_PAIRS:
        if x + up in keys:
            loaded.update((x + up, x + down))
            if mid and x + mid in keys:
                loaded.add(x + mid)
            if x + ".reshape_weight" in keys:
                loaded.add(x + ".reshape_weight")
            patches.append("weight")
            break
    if x + ".hada_w1_a" in keys:
        loaded.update(x + s for s in _LOHA)
        if x + ".hada_t1" in keys:
            loaded.update((x + ".hada_t1", x + ".hada_t2"))
        patches.append("weight")
    present = [x + s for s in _LOKR if x + s in keys]
    if present:
        loaded.update(present)
        if any(x + s in keys for s in (".lokr_w1", ".lokr_w2", ".lokr_w1_a", ".lokr_w2_a")):
            patches.append("weight")
    if x + ".a1.weight" in keys:
        loaded.update(x + s for s in _GLORA)
        patches.append("weight")
    if x + ".oft_blocks" in keys:
        loaded.add(x + ".oft_blocks")
        if x + ".rescale" in keys:
            loaded.add(x + ".rescale")
        patches.append("weight")
    if x + ".w_norm" in keys:
        loaded.add(x + ".w_norm")
        patches.append("weight")
        if x + ".b_norm" in keys:
            loaded.add(x + ".b_norm")
            patches.append("bias")
    for s, kind in ((".diff", "weight"), (".diff_b", "bias"), (".set_weight", "weight")):
        if x + s in keys:
            loaded.add(x + s)
            patches.append(kind)
    return patches


_SD3_SPEC = re.compile(r"sd3:(\d+)(?::attn2=(\d+)-(\d+))?(?::te=([a-z0-9_,]+))?")


def resolve_arch(arch: str | ArchSpec) -> ArchSpec:
    """An `ArchSpec` from itself, a name in `ARCHS`, or "sd3:DEPTH[:attn2=A-B][:te=clip_l,...]".

    The last form describes test models, e.g. the recorded tiny one is "sd3:2:te=clip_l".
    """
    if isinstance(arch, ArchSpec):
        return arch
    if arch in ARCHS:
        return ARCHS[arch]
    m = _SD3_SPEC.fullmatch(arch)
    if m:
        encoders = tuple(m.group(4).split(",")) if m.group(4) else ("clip_l", "clip_g", "t5xxl")
        bad = [e for e in encoders if e not in ("clip_l", "clip_g", "t5xxl")]
        if not bad:
            attn2 = range(int(m.group(2)), int(m.group(3)) + 1) if m.group(2) else ()
            return ArchSpec.sd3(int(m.group(1)), attn2_blocks=attn2, text_encoders=encoders)
    raise LoraFileError(
        f"unknown architecture '{arch}'",
        hint=f"use one of: {', '.join(sorted(ARCHS))}, or sd3:DEPTH[:attn2=A-B][:te=clip_l,clip_g,t5xxl]",
    )


def arch_name(spec: ArchSpec) -> str:
    """The name `resolve_arch` reads back as `spec`: its `ARCHS` key, else "sd3:DEPTH[:attn2=A-B]:te=...".

    LoRA metadata and output configs record it, so a LoRA trained on a test-sized model is labelled as what it
    is, not as the family it stands in for.
    """
    for name, known in ARCHS.items():
        if dataclasses.replace(known, name=spec.name) == spec:
            return name
    attn2 = sorted(spec.attn2_blocks)
    contiguous = not attn2 or attn2 == list(range(attn2[0], attn2[-1] + 1))
    if spec.family != "sd3" or not spec.qk_norm or not contiguous:
        raise LoraFileError(f"no name for the model {spec!r}", hint="name it in ARCHS (devserver_lora.lora.keys)")
    parts = [f"sd3:{spec.depth}"] + ([f"attn2={attn2[0]}-{attn2[-1]}"] if attn2 else [])
    return ":".join([*parts, "te=" + ",".join(spec.text_encoders)])


def predict_not_loaded(
    path_or_report: str | os.PathLike[str] | LoraReport,
    arch: str | ArchSpec,
    *,
    with_clip: bool = True,
) -> list[str]:
    """The "lora key not loaded: <key>" and "NOT LOADED <weight>" lines ComfyUI would log, in its order.

    `arch` is a name in `ARCHS` (e.g. "sd35_large") or an `ArchSpec`; `with_clip=False` predicts
    LoraLoaderModelOnly (no text encoder, so every text-encoder key is not loaded). An empty list
    means every key lands on a weight of that model.
    """
    report = path_or_report if isinstance(path_or_report, LoraReport) else inspect_lora(path_or_report)
    spec = resolve_arch(arch)
    key_map = comfy_key_map(spec, with_model=True, with_clip=with_clip)
    keys = set(report.keys)
    stems: set[str] = set()
    for k in keys:
        for s in _SUFFIXES:
            if k.endswith(s) and k[: -len(s)] in key_map:
                stems.add(k[: -len(s)])
    order = {stem: i for i, stem in enumerate(key_map)} if stems else {}
    loaded: set[str] = set()
    patched: dict[str, None] = {}  # insertion-ordered set of printed targets
    present = set(model_weights(spec)) | (set(clip_weights(spec)) if with_clip else set())
    missing: list[str] = []
    for x in sorted(stems, key=order.__getitem__):
        target = key_map[x]
        for kind in _consume(x, keys, loaded):
            weight = target if isinstance(target, str) else target[0]
            if kind == "bias":
                if not isinstance(target, str):
                    continue
                shown: Target = target[: -len(".weight")] + ".bias"
            else:
                shown = target
            text = target_text(shown)
            if text in patched:
                continue
            patched[text] = None
            if weight not in present:
                missing.append(f"NOT LOADED {text}")
    lines = [f"lora key not loaded: {k}" for k in report.keys if k not in loaded]
    return lines + missing


def _label(spec: ArchSpec) -> str:
    try:
        return arch_name(spec)
    except LoraFileError:
        return spec.name


def _shape_problems(report: LoraReport, spec: ArchSpec) -> list[Problem]:
    """Reasons the LoRA's shapes cannot fit `spec` even where its key names match (family, width, encoders)."""
    out: list[Problem] = []
    name = _label(spec)
    if report.has_unet and report.family not in ("unknown", "unet") and report.family != spec.family:
        out.append(Problem(
            f"the LoRA was trained for {report.architecture}, not for {name} ({spec.family})", code="wrong_family",
            hint="choose a LoRA trained for this model, or the output config of the model it was trained for",
        ))
    elif spec.family in ("sd3", "flux") and report.hidden_size and report.hidden_size != spec.hidden:
        out.append(Problem(
            f"the LoRA's layers are {report.hidden_size} wide but {name} has {spec.hidden} "
            f"(depth {report.depth} vs {spec.depth}): ComfyUI refuses every such weight with a shape mismatch",
            code="wrong_width",
            hint="the LoRA was trained on another model of this family: retrain it on this base model",
        ))
    missing = [enc for enc in report.text_encoders if enc not in spec.text_encoders]
    if missing:
        out.append(Problem(
            f"the LoRA patches {', '.join(missing)}, which {name} does not load", code="encoder_not_loaded",
            hint="render through a chunk whose CLIP loader loads those encoders (e.g. the triple-CLIP chunk)",
        ))
    return out


def fit_problems(
    lora: str | os.PathLike[str] | LoraReport, arch: str | ArchSpec, *, with_clip: bool = True
) -> list[Problem]:
    """Every reason `lora` would not fully apply to `arch` ([] = it fits): shape problems, then each key ComfyUI
    would skip, in the order ComfyUI logs them. `with_clip=False` judges LoraLoaderModelOnly."""
    report = lora if isinstance(lora, LoraReport) else inspect_lora(lora)
    spec = resolve_arch(arch)
    problems = _shape_problems(report, spec)
    problems += [Problem(line, code="key_not_loaded") for line in predict_not_loaded(report, spec, with_clip=with_clip)]
    return [dataclasses.replace(p, file=report.path) for p in problems]


def check_fit(
    lora: str | os.PathLike[str] | LoraReport, arch: str | ArchSpec, *, with_clip: bool = True, name: str | None = None
) -> None:
    """Raise `LoraFileError` naming what does not fit when `fit_problems` finds anything."""
    problems = fit_problems(lora, arch, with_clip=with_clip)
    if not problems:
        return
    label = name or (lora.path if isinstance(lora, LoraReport) else str(lora))
    shapes = [p for p in problems if p.code != "key_not_loaded"]
    keys = [p.message for p in problems if p.code == "key_not_loaded"]
    lines = [p.message for p in shapes]
    if keys:
        shown = "\n    ".join(keys[:8]) + (f"\n    ... and {len(keys) - 8} more" if len(keys) > 8 else "")
        lines.append(f"ComfyUI would skip {len(keys)} of its keys:\n    {shown}")
    raise LoraFileError(
        f"LoRA {label!r} does not fit the model {_label(resolve_arch(arch))}: " + "\n  ".join(lines),
        hint=(shapes[0].hint if shapes else None)
        or "it was trained for a different base model (or its keys use an unknown naming): retrain it for this "
        "model, or choose a LoRA made for it",
    )
