"""Find, check and load the SD3/SD3.5 pieces the native backend trains on, offline.

Sources users actually have:
- an SAI single-file checkpoint (`sd3.5_large.safetensors`: `model.diffusion_model.*`, VAE under
  `first_stage_model.*`, sometimes `text_encoders.*`) with separate `clip_l` / `clip_g` / `t5xxl` files;
- or a diffusers-format folder (`transformer/`, `vae/`, `text_encoder*/`, `tokenizer*/`).
Every file is checked from its safetensors header before anything heavy is loaded. The diffusers
configs for SD3.5 Large/Medium ship in `configs/`; the transformer config of a single file is read off
its tensor shapes (so tiny test checkpoints load the same way) and compared with the shipped one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from ...errors import BackendError, LoraFileError, Problem
from ...lora.fit import ArchSpec, arch_name
from ...lora.header import read_header

CONFIG_DIR = Path(__file__).with_name("configs")
MMDIT_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
EMBEDDED_TE_PREFIX = {
    "clip_l": "text_encoders.clip_l.transformer.",
    "clip_g": "text_encoders.clip_g.transformer.",
    "t5xxl": "text_encoders.t5xxl.transformer.",
}
# File names people download, in the order we try them inside `models_dir`.
CHECKPOINT_NAMES = {
    "sd35_large": ("sd3.5_large.safetensors",),
    "sd35_medium": ("sd3.5_medium.safetensors",),
}
TEXT_ENCODER_NAMES = {
    "clip_l": ("clip_l.safetensors",),
    "clip_g": ("clip_g.safetensors",),
    "t5xxl": ("t5xxl_fp16.safetensors", "t5xxl.safetensors", "t5xxl_fp8_e4m3fn.safetensors"),
}


def shipped_config(name: str) -> dict[str, Any]:
    """One of the JSON configs that ship in `native/configs/` (no hub access needed)."""
    path = CONFIG_DIR / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8"))


class ModelSource(BaseModel):
    """Where the base model lives. Either `checkpoint` (SAI single file) or `diffusers_dir`."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: Path | None = None
    diffusers_dir: Path | None = None
    clip_l: Path | None = None
    clip_g: Path | None = None
    t5xxl: Path | None = None
    # Folders holding tokenizer files: `clip/` (vocab.json + merges.txt) and `t5/` (spiece.model or tokenizer.json).
    tokenizers_dir: Path | None = None
    # Use the tiny in-code tokenizer (tests and the demo only: token ids differ from the real CLIP tokenizer).
    tiny_tokenizer: bool = False


def tensor_shapes(path: Path, *, what: str) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors header (no tensor data read)."""
    if not path.is_file():
        raise BackendError(f"{what} not found: {path}", hint="check the path (or DEVSERVER_LORA_MODELS)", diagnosis="model_missing")
    try:
        header = read_header(path)
    except LoraFileError as exc:
        raise BackendError(
            f"{what} {path} is not a readable .safetensors file ({exc.message})",
            hint="re-download it; partial downloads and .ckpt/.pt files are not supported",
            diagnosis="model_unreadable",
        ) from exc
    return {name: tuple(info.shape) for name, info in header.tensors.items()}


def infer_transformer_config(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """The diffusers SD3Transformer2DModel config of an MMDiT, read off its (prefix-free) tensor shapes."""
    need = ("context_embedder.weight", "pos_embed", "x_embedder.proj.weight", "y_embedder.mlp.0.weight")
    missing = [k for k in need if k not in shapes]
    if missing:
        raise BackendError(
            f"not an SD3 MMDiT: missing {missing}",
            hint="use an SD3/SD3.5 checkpoint (keys model.diffusion_model.joint_blocks.*)",
            diagnosis="model_not_sd3",
        )
    blocks = {int(k.split(".")[1]) for k in shapes if k.startswith("joint_blocks.")}
    depth = max(blocks) + 1
    hidden, joint_dim = shapes["context_embedder.weight"]
    patch = shapes["x_embedder.proj.weight"][-1]
    in_channels = shapes["x_embedder.proj.weight"][1]
    out_channels = shapes["final_layer.linear.weight"][0] // (patch * patch) if "final_layer.linear.weight" in shapes else in_channels
    head_dim = 64  # SD3 convention: hidden = 64 * heads
    return {
        "sample_size": 128,
        "patch_size": int(patch),
        "in_channels": int(in_channels),
        "out_channels": int(out_channels),
        "num_layers": depth,
        "attention_head_dim": head_dim,
        "num_attention_heads": int(hidden) // head_dim,
        "joint_attention_dim": int(joint_dim),
        "caption_projection_dim": int(hidden),
        "pooled_projection_dim": int(shapes["y_embedder.mlp.0.weight"][1]),
        "pos_embed_max_size": int(math.isqrt(shapes["pos_embed"][1])),
        "dual_attention_layers": sorted({int(k.split(".")[1]) for k in shapes if ".attn2." in k}),
        "qk_norm": "rms_norm" if any(".ln_q." in k for k in shapes) else None,
    }


def detect_family(config: Mapping[str, Any]) -> str | None:
    """"sd35_large" / "sd35_medium" when the config matches a shipped one, else None (e.g. a tiny test model)."""
    keys = ("num_layers", "caption_projection_dim", "dual_attention_layers", "joint_attention_dim")
    for family in ("sd35_large", "sd35_medium"):
        ref = shipped_config(f"{family}_transformer")
        if all(list(ref[k]) == list(config[k]) if isinstance(ref[k], list) else ref[k] == config[k] for k in keys):
            return family
    return None


def resolve_source(family: str, models_dir: Path | None) -> ModelSource:
    """Find the standard file names for `family` inside `models_dir` (BackendError saying what to put where)."""
    if models_dir is None:
        raise BackendError(
            "no base model configured for native training",
            hint="set DEVSERVER_LORA_MODELS to the folder holding e.g. sd3.5_large.safetensors, clip_l.safetensors, "
            "clip_g.safetensors and t5xxl_fp16.safetensors (the files ComfyUI uses)",
            diagnosis="model_missing",
        )
    models_dir = Path(models_dir)
    if (models_dir / family / "transformer").is_dir():
        return ModelSource(diffusers_dir=models_dir / family)

    def first(names: tuple[str, ...]) -> Path | None:
        for sub in ("", "checkpoints", "clip", "text_encoders"):
            for n in names:
                if (models_dir / sub / n).is_file():
                    return models_dir / sub / n
        return None

    ckpt = first(CHECKPOINT_NAMES.get(family, ()))
    if ckpt is None:
        raise BackendError(
            f"no {family} checkpoint in {models_dir}",
            hint=f"put one of {list(CHECKPOINT_NAMES.get(family, ()))} there, or a diffusers folder {models_dir / family}/",
            diagnosis="model_missing",
        )
    return ModelSource(
        checkpoint=ckpt,
        clip_l=first(TEXT_ENCODER_NAMES["clip_l"]),
        clip_g=first(TEXT_ENCODER_NAMES["clip_g"]),
        t5xxl=first(TEXT_ENCODER_NAMES["t5xxl"]),
        tokenizers_dir=models_dir / "tokenizers" if (models_dir / "tokenizers").is_dir() else None,
    )


@dataclass
class SourceInfo:
    """What the headers said: the transformer config, its MMDiT shapes, and which pieces are present."""

    transformer_config: dict[str, Any]
    mmdit_shapes: dict[str, tuple[int, ...]]
    family: str | None
    has_vae: bool
    text_encoders: dict[str, str] = field(default_factory=dict)  # name -> "embedded" | file path


def inspect_source(source: ModelSource, *, family: str | None = None) -> SourceInfo:
    """Read every header; BackendError before any heavy load if something is missing or mismatched."""
    if source.diffusers_dir is not None:
        root = Path(source.diffusers_dir)
        cfg_path = root / "transformer" / "config.json"
        if not cfg_path.is_file():
            raise BackendError(f"{root} is not a diffusers SD3 folder (no transformer/config.json)", diagnosis="model_missing")
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
        folders = {name: str(root / sub) for name, sub in (("clip_l", "text_encoder"), ("clip_g", "text_encoder_2"), ("t5xxl", "text_encoder_3")) if (root / sub).is_dir()}
        return SourceInfo(config, {}, detect_family(config), (root / "vae").is_dir(), folders)
    if source.checkpoint is None:
        raise BackendError("the model source names neither a checkpoint nor a diffusers folder", diagnosis="model_missing")
    header = tensor_shapes(Path(source.checkpoint), what="base checkpoint")
    mmdit = {k[len(MMDIT_PREFIX):]: v for k, v in header.items() if k.startswith(MMDIT_PREFIX)}
    if not mmdit:
        raise BackendError(
            f"{source.checkpoint} holds no model.diffusion_model.* tensors",
            hint="use the SAI single-file SD3.5 checkpoint (the one ComfyUI loads), not a text encoder or LoRA",
            diagnosis="model_not_sd3",
        )
    config = infer_transformer_config(mmdit)
    detected = detect_family(config)
    if family is not None and detected is not None and detected != family:
        raise BackendError(
            f"{source.checkpoint.name} is {detected}, but the plan trains {family}",
            hint=f"plan for {detected}, or point to a {family} checkpoint",
            diagnosis="model_mismatch",
        )
    tes: dict[str, str] = {}
    for name, prefix in EMBEDDED_TE_PREFIX.items():
        if any(k.startswith(prefix) for k in header):
            tes[name] = "embedded"
    for name, path in (("clip_l", source.clip_l), ("clip_g", source.clip_g), ("t5xxl", source.t5xxl)):
        if path is None:
            continue
        te_header = tensor_shapes(Path(path), what=f"{name} text encoder")
        _check_text_encoder(name, Path(path), te_header)
        tes[name] = str(path)
    return SourceInfo(config, mmdit, detected, any(k.startswith(VAE_PREFIX) for k in header), tes)


def trained_arch(info: SourceInfo) -> str:
    """The `lora.fit` name of the model a LoRA is trained on, as the source holds it (depth, attn2, encoders)."""
    cfg = info.transformer_config
    encoders = tuple(e for e in ("clip_l", "clip_g", "t5xxl") if e in info.text_encoders) or ("clip_l", "clip_g", "t5xxl")
    spec = ArchSpec.sd3(
        int(cfg["num_layers"]), attn2_blocks=cfg.get("dual_attention_layers") or (), qk_norm=bool(cfg.get("qk_norm")),
        text_encoders=encoders,
    )
    return arch_name(spec)


def _check_text_encoder(name: str, path: Path, header: Mapping[str, tuple[int, ...]]) -> None:
    cfg = shipped_config(name)
    if name == "t5xxl":
        key, want = "encoder.final_layer_norm.weight", (cfg["d_model"],)
    else:
        key, want = "text_model.final_layer_norm.weight", (cfg["hidden_size"],)
    got = header.get(key)
    if got != want:
        raise BackendError(
            f"{path.name} does not look like {name} ({key}: {got}, expected {want})",
            hint=f"pass the {name} file ComfyUI uses (e.g. {TEXT_ENCODER_NAMES[name][0]})",
            diagnosis="model_mismatch",
        )


def load_tensors(path: Path, prefix: str, *, dtype: Any = None) -> dict[str, Any]:
    """The tensors under `prefix` (prefix stripped), read lazily from the file."""
    from safetensors import safe_open

    out: dict[str, Any] = {}
    with safe_open(str(path), framework="pt") as fh:
        for k in fh.keys():  # noqa: SIM118
            if k.startswith(prefix):
                t = fh.get_tensor(k)
                out[k[len(prefix):]] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
    return out


def _checkpoint(source: ModelSource) -> Path:
    """The single-file checkpoint a load without a diffusers folder reads (inspect_source refused a source with neither)."""
    if source.checkpoint is None:
        raise BackendError("the model source names neither a checkpoint nor a diffusers folder", diagnosis="model_missing")
    return Path(source.checkpoint)


def load_transformer(source: ModelSource, info: SourceInfo, *, dtype: Any) -> Any:
    """diffusers' SD3Transformer2DModel with the base weights, converted by diffusers' own SAI converter."""
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    if source.diffusers_dir is not None:
        return SD3Transformer2DModel.from_pretrained(
            Path(source.diffusers_dir) / "transformer", local_files_only=True, torch_dtype=dtype
        )
    state = load_tensors(_checkpoint(source), MMDIT_PREFIX, dtype=dtype)
    converted = convert_sd3_transformer_checkpoint_to_diffusers(state)
    model = SD3Transformer2DModel.from_config(info.transformer_config)
    _load_strict(model, converted, what=f"transformer from {source.checkpoint}")
    return model if dtype is None or dtype == model.dtype else model.to(dtype)


def load_vae(source: ModelSource, *, dtype: Any) -> Any:
    """The SD3 VAE from the single file (diffusers' converter + the shipped config) or the diffusers folder."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    if source.diffusers_dir is not None:
        return AutoencoderKL.from_pretrained(Path(source.diffusers_dir) / "vae", local_files_only=True, torch_dtype=dtype)
    config = shipped_config("sd3_vae")
    state = load_tensors(_checkpoint(source), VAE_PREFIX, dtype=dtype)
    if not state:
        raise BackendError(
            f"{source.checkpoint} has no VAE (first_stage_model.*)",
            hint="use the full SAI checkpoint that includes the VAE",
            diagnosis="model_missing",
        )
    converted = convert_ldm_vae_checkpoint({VAE_PREFIX + k: v for k, v in state.items()}, config)
    vae = AutoencoderKL.from_config(config)
    _load_strict(vae, converted, what=f"VAE from {source.checkpoint}")
    return vae if dtype is None or dtype == vae.dtype else vae.to(dtype)


def load_text_encoder(name: str, where: str, source: ModelSource, *, dtype: Any) -> Any:
    """CLIP-L/CLIP-G (with projection) or the T5-XXL encoder, from a folder, a separate file or the checkpoint."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, PreTrainedModel, T5Config, T5EncoderModel

    is_t5 = name == "t5xxl"
    cls = T5EncoderModel if is_t5 else CLIPTextModelWithProjection
    if Path(where).is_dir():
        return cls.from_pretrained(where, local_files_only=True, torch_dtype=dtype)
    if where == "embedded":
        state = load_tensors(_checkpoint(source), EMBEDDED_TE_PREFIX[name], dtype=dtype)
    else:
        state = load_tensors(Path(where), "", dtype=dtype)
    cfg = shipped_config(name)
    cfg = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type")}
    model: PreTrainedModel
    if is_t5:
        model = T5EncoderModel(T5Config(**cfg))
        if "shared.weight" in state and "encoder.embed_tokens.weight" not in state:
            state["encoder.embed_tokens.weight"] = state["shared.weight"]
    else:
        model = CLIPTextModelWithProjection(CLIPTextConfig(**cfg))
        if "text_projection.weight" not in state:
            # ComfyUI's CLIP-L files often omit the projection; SD3 then uses the identity (as ComfyUI does).
            import torch

            state["text_projection.weight"] = torch.eye(cfg["projection_dim"], cfg["hidden_size"], dtype=dtype)
    _load_strict(model, state, what=f"{name} from {where}", allow_missing=("position_ids", "shared.weight"))
    return model.to(dtype)


def _load_strict(model: Any, state: dict[str, Any], *, what: str, allow_missing: tuple[str, ...] = ()) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not any(a in k for a in allow_missing)]
    unexpected = [k for k in unexpected if not any(a in k for a in allow_missing)]
    if missing or unexpected:
        raise BackendError(
            f"cannot load {what}: {len(missing)} missing, {len(unexpected)} unexpected tensors "
            f"(e.g. {(missing or unexpected)[:3]})",
            hint="the file does not match the expected SD3 layout; re-download it or pick the right file",
            diagnosis="model_mismatch",
        )


def model_source_problems(source: ModelSource, family: str | None) -> list[Problem]:
    """preflight: every header-level problem as a Problem (nothing heavy loaded)."""
    try:
        info = inspect_source(source, family=family)
    except BackendError as exc:
        return [Problem(exc.message, hint=exc.hint, code=exc.diagnosis or "model")]
    problems: list[Problem] = []
    if not info.has_vae:
        problems.append(Problem("the base model has no VAE", code="model_missing", hint="use the full SAI checkpoint"))
    if not any(n in info.text_encoders for n in ("clip_l", "clip_g", "t5xxl")):
        problems.append(
            Problem(
                "no text encoder found",
                code="model_missing",
                hint="pass clip_l / clip_g / t5xxl files (the ones ComfyUI uses) next to the checkpoint",
            )
        )
    for kind in info.text_encoders:
        if not (source.tiny_tokenizer and kind != "t5xxl") and find_tokenizer_dir(kind, source) is None:
            problems.append(
                Problem(
                    f"no tokenizer files for {kind}",
                    code="tokenizer_missing",
                    hint="set COMFYUI_DIR to your ComfyUI folder (it ships them), or put them in "
                    f"<models>/tokenizers/{'t5' if kind == 't5xxl' else 'clip'}/",
                )
            )
    return problems


def env_offline() -> None:
    """Make sure nothing reaches for the hub while loading."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


_DIFFUSERS_TOKENIZER = {"clip_l": "tokenizer", "clip_g": "tokenizer_2", "t5xxl": "tokenizer_3"}
_COMFY_TOKENIZER = {"clip_l": "comfy/sd1_tokenizer", "clip_g": "comfy/sd1_tokenizer", "t5xxl": "comfy/text_encoders/t5_tokenizer"}


def tokenizer_dirs(kind: str, source: ModelSource) -> list[Path]:
    """Where the tokenizer files for `kind` may be, in order: diffusers folder, tokenizers_dir, a ComfyUI tree."""
    sub = "t5" if kind == "t5xxl" else "clip"
    found: list[Path] = []
    if source.diffusers_dir is not None:
        found.append(Path(source.diffusers_dir) / _DIFFUSERS_TOKENIZER[kind])
    if source.tokenizers_dir is not None:
        found.append(Path(source.tokenizers_dir) / sub)
    comfy = os.environ.get("COMFYUI_DIR")
    if comfy:
        # ComfyUI ships the CLIP and T5 tokenizer files in its source tree: a DevServer host has them already.
        found.append(Path(comfy) / _COMFY_TOKENIZER[kind])
    return found


def find_tokenizer_dir(kind: str, source: ModelSource) -> Path | None:
    for d in tokenizer_dirs(kind, source):
        if d.is_dir() and any((d / f).is_file() for f in ("tokenizer.json", "vocab.json", "spiece.model")):
            return d
    return None


def load_tokenizer(kind: str, source: ModelSource) -> Any:
    """The tokenizer for a text encoder, from local files only (BackendError saying where to put them)."""
    if source.tiny_tokenizer and kind != "t5xxl":
        from .tiny import tiny_clip_tokenizer

        return tiny_clip_tokenizer()
    d = find_tokenizer_dir(kind, source)
    if d is None:
        raise BackendError(
            f"no tokenizer files for {kind}",
            hint="set COMFYUI_DIR to your ComfyUI folder (it ships them), or put them in "
            f"<models>/tokenizers/{'t5' if kind == 't5xxl' else 'clip'}/",
            diagnosis="tokenizer_missing",
        )
    if kind == "t5xxl":
        # A class in transformers 4, a lazy alias of T5Tokenizer in 5 that type checkers cannot see.
        from transformers import T5TokenizerFast  # type: ignore[attr-defined, unused-ignore]

        return T5TokenizerFast.from_pretrained(str(d), local_files_only=True)
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(d), local_files_only=True)
    if kind == "clip_g" and "!" in tok.get_vocab():
        # CLIP-G pads with "!" (id 0), as ComfyUI and diffusers' SD3 tokenizer_2 do; CLIP-L pads with the end token.
        tok.pad_token = "!"
    return tok
