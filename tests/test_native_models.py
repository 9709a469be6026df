"""Offline model loading for the native backend: shipped configs, SAI single files, separate text-encoder files,
header checks before any heavy load, and the tiny model staying in sync with the real-ComfyUI test checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from devserver_lora.errors import BackendError
from devserver_lora.train.families import FAMILIES, TEXT_ENCODER_PARAMS_B
from devserver_lora.train.native import models, tiny

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def sai_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.tiny_sai_checkpoint(tmp_path_factory.mktemp("tiny_sai"))


def _params_b(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e9


@pytest.mark.parametrize("family", ["sd35_large", "sd35_medium"])
def test_shipped_transformer_configs_build_the_published_model_sizes(family: str) -> None:
    from diffusers import SD3Transformer2DModel

    cfg = models.shipped_config(f"{family}_transformer")
    with torch.device("meta"):
        model = SD3Transformer2DModel.from_config(cfg)
    # SD3.5 Medium is announced as 2.5B; its MMDiT-X transformer counts 2.24B (depth 24, attn2 in blocks 0-12).
    assert _params_b(model) == pytest.approx(FAMILIES[family].model_params_b, rel=0.12)
    assert _params_b(model) == pytest.approx({"sd35_large": 8.06, "sd35_medium": 2.24}[family], rel=0.01)
    assert models.detect_family(cfg) == family


@pytest.mark.parametrize("name", ["clip_l", "clip_g", "t5xxl"])
def test_shipped_text_encoder_configs_build_the_published_sizes(name: str) -> None:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    cfg = {k: v for k, v in models.shipped_config(name).items() if k not in ("architectures", "model_type")}
    with torch.device("meta"):
        model = T5EncoderModel(T5Config(**cfg)) if name == "t5xxl" else CLIPTextModelWithProjection(CLIPTextConfig(**cfg))
    assert _params_b(model) == pytest.approx(TEXT_ENCODER_PARAMS_B[name], rel=0.05)


def test_tiny_model_matches_the_comfyui_test_checkpoint(sai_checkpoint: Path) -> None:
    info = models.inspect_source(models.ModelSource(checkpoint=sai_checkpoint), family="sd35_large")
    expected = {k: v for k, v in tiny.TINY_TRANSFORMER_CONFIG.items() if k != "sample_size"}
    assert {k: v for k, v in info.transformer_config.items() if k != "sample_size"} == expected
    assert info.family is None  # tiny: no mismatch error against any family
    assert info.has_vae and info.text_encoders == {"clip_l": "embedded"}


def test_separate_clip_file_loads_like_the_embedded_one(sai_checkpoint: Path, tmp_path: Path) -> None:
    """ComfyUI's clip_l.safetensors holds `text_model.*` keys (no prefix): load it as a separate file."""
    embedded = models.load_tensors(sai_checkpoint, models.EMBEDDED_TE_PREFIX["clip_l"])
    clip_file = tmp_path / "clip_l.safetensors"
    save_file({k: v.contiguous() for k, v in embedded.items() if k != "text_projection.weight"}, str(clip_file))
    src = models.ModelSource(checkpoint=sai_checkpoint, clip_l=clip_file, tiny_tokenizer=True)
    info = models.inspect_source(src)
    assert info.text_encoders["clip_l"] == str(clip_file)
    a = models.load_text_encoder("clip_l", "embedded", src, dtype=torch.float32)
    b = models.load_text_encoder("clip_l", str(clip_file), src, dtype=torch.float32)  # projection -> identity
    ids = tiny.tiny_clip_tokenizer()(["mgsq"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        ea, eb = a(ids, output_hidden_states=True), b(ids, output_hidden_states=True)
    assert torch.allclose(ea.hidden_states[-2], eb.hidden_states[-2]) and torch.allclose(ea.text_embeds, eb.text_embeds)
    # The same file offered as T5 is refused from its header, naming what was expected.
    with pytest.raises(BackendError, match="does not look like t5xxl") as exc:
        models.inspect_source(src.model_copy(update={"t5xxl": clip_file}))
    assert exc.value.diagnosis == "model_mismatch"


def test_resolve_source_finds_the_files_comfyui_uses(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "clip").mkdir()
    for p in ("checkpoints/sd3.5_large.safetensors", "clip/clip_l.safetensors", "clip/t5xxl_fp16.safetensors"):
        (tmp_path / p).write_bytes(b"")
    src = models.resolve_source("sd35_large", tmp_path)
    assert src.checkpoint == tmp_path / "checkpoints/sd3.5_large.safetensors"
    assert src.clip_l == tmp_path / "clip/clip_l.safetensors" and src.t5xxl == tmp_path / "clip/t5xxl_fp16.safetensors"
    assert src.clip_g is None
    with pytest.raises(BackendError, match="no sd35_medium checkpoint") as exc:
        models.resolve_source("sd35_medium", tmp_path)
    assert "sd3.5_medium.safetensors" in (exc.value.hint or "")
    with pytest.raises(BackendError, match="DEVSERVER_LORA_MODELS"):
        models.resolve_source("sd35_large", None)


def test_tokenizers_come_from_local_files_or_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMFYUI_DIR", raising=False)
    src = models.ModelSource(checkpoint=tmp_path / "x.safetensors", tokenizers_dir=tmp_path / "tok")
    with pytest.raises(BackendError, match="no tokenizer files for clip_l") as exc:
        models.load_tokenizer("clip_l", src)
    assert "COMFYUI_DIR" in (exc.value.hint or "")
    tiny.tiny_clip_tokenizer().save_pretrained(str(tmp_path / "tok" / "clip"))
    tok = models.load_tokenizer("clip_l", src)
    assert tok("mgsq").input_ids[0] == tok.bos_token_id
