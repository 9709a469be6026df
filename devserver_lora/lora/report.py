"""What a LoRA file holds, read from its header alone: key format, adapter, architecture, rank, encoders, triggers.

`inspect_lora(path)` reads the validated header (`lora.header`) and describes the LoRA; `describe_lora` does the
same for names, shapes and metadata already in hand. Whether the LoRA fits a model is `lora.fit`'s question.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from typing import Literal

from pydantic import BaseModel, Field

from .. import safe_json
from ..errors import LoraFileError
from .header import TensorInfo, read_header

__all__ = ["ARCH_KEY", "LoraReport", "TRIGGER_WORDS_KEY", "describe_lora", "inspect_lora"]

# The product's own metadata keys: a JSON list of trigger words, written at install time, and the model the LoRA
# was trained on (`lora.fit.arch_name`, e.g. "sd35_large"), written by the trainers.
TRIGGER_WORDS_KEY = "devserver_lora.trigger_words"
ARCH_KEY = "devserver_lora.arch"

Format = Literal["kohya", "diffusers", "peft", "onetrainer", "comfy", "lycoris", "mixed", "unknown"]


class LoraReport(BaseModel):
    """What a LoRA file holds, read from its header alone."""

    path: str
    file_size: int
    tensor_count: int
    keys: list[str] = Field(description="Tensor names, sorted (the order ComfyUI loads and logs them)")
    tensors: dict[str, TensorInfo] = Field(default_factory=dict, repr=False)
    metadata: dict[str, str] = Field(default_factory=dict, repr=False)
    format: Format = "unknown"
    adapter: str = "lora"
    architecture: str = Field(default="unknown", description="sd3 / sd35_large / sd35_medium / sd3_medium / sdxl / sd15 / flux")
    family: str = "unknown"
    depth: int | None = Field(default=None, description="SD3: joint blocks (hidden / 64); FLUX: double blocks")
    hidden_size: int | None = None
    attn2_blocks: list[int] = Field(default_factory=list)
    rank: int | None = Field(default=None, description="The most common rank")
    ranks: list[int] = Field(default_factory=list)
    has_alpha: bool = False
    text_encoders: list[str] = Field(default_factory=list, description="clip_l / clip_g / t5xxl parts the LoRA patches")
    has_text_encoder: bool = False
    has_unet: bool = False
    trigger_words: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)


# ----------------------------------------------------------------------------- description
_LORA_DOWN = (".lora_down.weight", ".lora_A.weight", "_lora.down.weight", ".lora.down.weight",
              ".lora_linear_layer.down.weight", ".lora_A.default.weight", ".lora_A")


def _stem_down(key: str) -> str | None:
    for s in _LORA_DOWN:
        if key.endswith(s):
            return key[: -len(s)]
    return None


def _format(keys: list[str]) -> Format:
    kinds = set()
    for k in keys:
        if k.startswith(("lora_unet_", "lora_te")):
            kinds.add("kohya")
        elif k.startswith(("transformer.", "unet.", "text_encoder.", "text_encoder_2.")):
            kinds.add("diffusers")
        elif k.startswith("base_model.model."):
            kinds.add("peft")
        elif k.startswith("lora_transformer_"):
            kinds.add("onetrainer")
        elif k.startswith(("diffusion_model.", "text_encoders.")):
            kinds.add("comfy")
        elif k.startswith("lycoris_"):
            kinds.add("lycoris")
        else:
            kinds.add("unknown")
    if len(kinds) == 1:
        return kinds.pop()  # type: ignore[return-value]
    return "mixed" if kinds else "unknown"


def _adapter(keys: list[str]) -> str:
    joined = "\n".join(keys)
    for marker, name in ((".hada_w1_a", "loha"), (".lokr_w", "lokr"), (".oft_blocks", "oft"), (".a1.weight", "glora")):
        if marker in joined:
            return name
    if ".diff" in joined and "lora" not in joined.lower():
        return "full-diff"
    return "lora"


_TE_BY_WIDTH = {768: "clip_l", 1280: "clip_g", 4096: "t5xxl"}


def _text_encoders(tensors: dict[str, TensorInfo]) -> list[str]:
    found = set()
    for k, t in tensors.items():
        stem = _stem_down(k)
        if stem is None:
            continue
        if stem.startswith(("lora_te", "text_encoder", "text_encoders.")) and len(t.shape) >= 2:
            enc = _TE_BY_WIDTH.get(t.shape[1])
            if enc is None:
                # Only a layer whose input width does not tell (mlp fc2): fall back on the prefix.
                enc = "clip_g" if stem.startswith(("lora_te2_", "text_encoder_2.")) else (
                    "t5xxl" if stem.startswith("lora_te3_") else "clip_l")
            found.add(enc)
    return sorted(found, key=["clip_l", "clip_g", "t5xxl"].index)


def _unet_stem(stem: str) -> str:
    for prefix in ("transformer.", "base_model.model.", "unet.", "diffusion_model.", "lora_unet_", "lora_transformer_", "lycoris_"):
        if stem.startswith(prefix):
            return stem[len(prefix):]
    return stem


def _architecture(report: LoraReport) -> None:
    stems: dict[str, list[int]] = {}
    for k, t in report.tensors.items():
        s = _stem_down(k)
        if s is not None and not s.startswith(("lora_te", "text_encoder")):
            stems[_unet_stem(s)] = t.shape
    report.has_unet = bool(stems)
    names = "\n".join(stems)
    if not stems:
        return
    if re.search(r"(^|\n)(double_blocks|single_blocks|single_transformer_blocks)[._]", names) or (
        "transformer_blocks" in names and any(sh[1] == 3072 for sh in stems.values() if len(sh) > 1)
    ):
        report.family = report.architecture = "flux"
        blocks = {int(m) for m in re.findall(r"(?:double_blocks|(?<!single_)transformer_blocks)[._](\d+)", names)}
        report.depth = max(blocks) + 1 if blocks else None
        report.hidden_size = 3072
        return
    if re.search(r"joint_blocks[._]\d+|transformer_blocks[._]\d+[._]attn[._]add_", names) or "transformer_blocks" in names and "ff_context" in names:
        report.family = "sd3"
        hidden = None
        for s, sh in stems.items():
            if re.search(r"(attn[._]qkv|attn[._]to_q|attn[._]proj|to_out[._]0)$", s) and len(sh) > 1:
                hidden = sh[1]
                break
        if hidden is None:
            hidden = max((sh[1] for sh in stems.values() if len(sh) > 1), default=0)
        report.hidden_size = hidden
        report.depth = hidden // 64 if hidden else None
        report.attn2_blocks = sorted(
            {int(m) for m in re.findall(r"(?:joint_blocks|transformer_blocks)[._](\d+)[._](?:x_block[._])?attn2", names)}
        )
        if report.depth == 38:
            report.architecture = "sd35_large"
        elif report.depth == 24:
            report.architecture = "sd35_medium" if report.attn2_blocks else "sd3_medium"
        else:
            report.architecture = "sd3"
        return
    if re.search(r"(input_blocks|output_blocks|middle_block|down_blocks|up_blocks|mid_block)", names):
        report.family = "unet"
        context = {sh[1] for s, sh in stems.items() if re.search(r"attn2[._]to_[kv]$", s) and len(sh) > 1}
        if 2048 in context or re.search(r"(^|\n)(input_blocks|output_blocks)[._]", names) and 768 not in context:
            report.architecture = report.family = "sdxl"
        elif 768 in context or "down_blocks" in names:
            report.architecture = report.family = "sd15"


def _trigger_words(metadata: dict[str, str]) -> list[str]:
    words: list[str] = []
    own = metadata.get(TRIGGER_WORDS_KEY)
    if own:
        try:
            value = safe_json.loads(own)
        except json.JSONDecodeError:
            value = [own]
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            words += [w for w in value if isinstance(w, str)]
    phrase = metadata.get("modelspec.trigger_phrase")
    if phrase:
        words += [w for w in phrase.split(",")]
    freq = metadata.get("ss_tag_frequency")
    if freq:
        try:
            dirs = safe_json.loads(freq)
        except json.JSONDecodeError:
            dirs = {}
        for folder, tags in (dirs.items() if isinstance(dirs, dict) else ()):
            # Kohya's "<repeats>_<class token>" folders: the class token is the trigger it trained.
            m = re.fullmatch(r"\d+_(.+)", str(folder))
            if m:
                words.append(m.group(1))
            elif isinstance(tags, dict) and tags:
                counts = sorted(((c, t) for t, c in tags.items() if isinstance(c, int)), reverse=True)
                if counts and (len(counts) == 1 or counts[0][0] > counts[1][0]):
                    words.append(counts[0][1])
    out: list[str] = []
    seen: set[str] = set()
    for w in words:
        w = " ".join(w.split())
        if w and w.casefold() not in seen:
            seen.add(w.casefold())
            out.append(w)
    return out


def inspect_lora(path: str | os.PathLike[str]) -> LoraReport:
    """Read the header of a .safetensors LoRA (no tensors loaded) and describe it.

    Raises `LoraFileError` for a missing, corrupt, truncated, lying or pickle file.
    """
    if not os.path.lexists(path):
        raise LoraFileError(f"{path}: no such LoRA file", hint="check the name and the loras folder")
    header = read_header(path)
    return describe_lora(header.tensors, header.metadata, path=str(path), file_size=header.file_size)


def describe_lora(
    tensors: dict[str, TensorInfo], metadata: dict[str, str] | None = None, *, path: str = "<memory>", file_size: int = 0
) -> LoraReport:
    """The report for tensor names/shapes and metadata already in hand (e.g. from a key listing)."""
    metadata = dict(metadata or {})
    keys = sorted(tensors)
    report = LoraReport(
        path=path, file_size=file_size, tensor_count=len(keys), keys=keys, tensors=tensors, metadata=metadata
    )
    report.format = _format(keys)
    report.adapter = _adapter(keys)
    ranks = Counter(t.shape[0] for k, t in tensors.items() if _stem_down(k) is not None and t.shape)
    report.ranks = sorted(ranks)
    report.rank = ranks.most_common(1)[0][0] if ranks else None
    alpha_keys = [k for k in keys if k.endswith(".alpha")]
    report.has_alpha = bool(alpha_keys)
    if not alpha_keys and metadata.get("ss_network_alpha"):
        report.warnings.append("metadata names an alpha but the file has no .alpha tensors")
    if not alpha_keys and report.adapter == "lora" and report.rank:
        report.warnings.append(
            "no .alpha keys: ComfyUI applies the LoRA at factor 1.0 (alpha = rank); a PEFT LoRA trained "
            "with alpha != rank will look too weak or too strong"
        )
    report.text_encoders = _text_encoders(tensors)
    report.has_text_encoder = bool(report.text_encoders) or any(k.startswith(("lora_te", "text_encoder")) for k in keys)
    _architecture(report)
    report.trigger_words = _trigger_words(metadata)
    return report
