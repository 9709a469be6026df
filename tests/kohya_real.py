"""The REAL kohya-ss sd-scripts for the `kohya_real` tier: its install and tiny model files it accepts, both cached.

Install: `trainer/setup.sh --source ../shared/third_party/sd-scripts --cuda cpu` (the product's own setup, from the
plain source tree: no GitHub here) into ~/.cache/devserver-lora/kohya-<commit>-<requirements hash>/, like the
ComfyUI test venv. torch/torchvision: the pair this machine's disk serves from pip's own index (torch 2.14.1 +
torchvision 0.29.1; torch 2.13.0's only torchvision here fails to import, see ../shared/third_party/README.md).
A `.ready` file marks a finished install; a folder without it is a broken earlier attempt and is built again.

Models (~/.cache/devserver-lora/kohya-tiny-models-v1/, built once in code, nothing downloaded):
- `sd3.5_large.safetensors`: the SAI single-file layout sd-scripts reads (`model.diffusion_model.*` MMDiT +
  `first_stage_model.*` VAE). It IS the ComfyUI test checkpoint (`devserver_lora.testing.tiny_sd3`, same seed, so
  the same tensors ComfyUI renders with): depth-2 MMDiT whose q/k RMSNorm weights and positional embedding are
  written explicitly (sd-scripts creates both with `torch.empty` and loads with `strict=False`, so a file without
  them trains on garbage), full-size random SD3 VAE.
- `clip_l.safetensors`: that checkpoint's CLIP-L, renamed to the transformers layout sd-scripts loads.
- `clip_g.safetensors`: full-size random CLIP-G (32 layers, 1280 wide), fp16, norms 1, projection the identity.
- `t5xxl_fp8_e4m3fn.safetensors`: a full-size T5-XXL encoder (24 blocks, 4096 wide), every weight zero, in fp8:
  written as a sparse file (header, then a hole), so 4.8 GB on paper and nothing on disk.
Tokenizers: synthetic CLIP and T5 tokenizers saved under the install's `tokenizers/` (the folder names sd-scripts'
`--tokenizer_cache_dir` looks for), built with the Kohya venv's own transformers so it surely reads them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import NEEDS_SD_SCRIPTS, ROOT, SHARED

from devserver_lora.paths import publish_path
from devserver_lora.train.kohya.venv import PINNED_COMMIT

SD_SCRIPTS = SHARED / "third_party" / "sd-scripts"
CACHE = Path(os.environ.get("DEVSERVER_LORA_TEST_CACHE", Path.home() / ".cache" / "devserver-lora"))
MODELS_VERSION = "v1"  # bump when a builder below changes what it writes
# The torch pair this machine's disk serves for the trainer's venv (the shared README's facts).
TORCH, TORCHVISION = "2.14.1", "0.29.1"
SETUP_TIMEOUT_S = 3600


def require_sd_scripts() -> Path:
    """The pinned sd-scripts source tree; skips the test with NEEDS_SD_SCRIPTS when this clone has none beside it."""
    if not (SD_SCRIPTS / "sd3_train_network.py").is_file():
        pytest.skip(f"{NEEDS_SD_SCRIPTS}: ../shared/third_party/sd-scripts (sd-scripts at {PINNED_COMMIT[:8]})")
    return SD_SCRIPTS


def install_dir() -> Path:
    """Cache key: the pinned commit and the hash of the tree's own requirements.txt (what the venv holds)."""
    req = hashlib.sha256((SD_SCRIPTS / "requirements.txt").read_bytes()).hexdigest()
    return CACHE / f"kohya-{PINNED_COMMIT[:8]}-{req[:12]}"


def ensure_install() -> Path:
    """KOHYA_DIR of a real sd-scripts install made by trainer/setup.sh --source (cached); built when missing."""
    require_sd_scripts()
    target = install_dir()
    if (target / ".ready").is_file():
        return target
    if target.exists():  # an interrupted earlier build of our own cache folder
        shutil.rmtree(target)
    argv = ["bash", str(ROOT / "trainer" / "setup.sh"), "--dir", str(target), "--source", str(SD_SCRIPTS),
            "--cuda", "cpu", "--torch", TORCH, "--torchvision", TORCHVISION, "--torch-index", "pypi",
            "--skip-tokenizers"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=SETUP_TIMEOUT_S, check=False)
    if result.returncode != 0:
        pytest.fail(f"trainer/setup.sh --source failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                    f"{result.stderr[-3000:]}")
    write_tokenizers(target / "venv" / "bin" / "python", target / "tokenizers")
    (target / ".ready").write_text(json.dumps({"torch": TORCH, "torchvision": TORCHVISION}))
    return target


# --- synthetic offline tokenizers ------------------------------------------------------------------------------
_TOKENIZER_SCRIPT = r'''
import json, sys
from pathlib import Path
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import CLIPTokenizer, T5TokenizerFast

cache = Path(sys.argv[1])
# CLIP: byte-level BPE; every byte alone and as a word end, no merges (each character is a token).
from transformers.models.clip.tokenization_clip import bytes_to_unicode
chars = list(bytes_to_unicode().values())
vocab = {c: i for i, c in enumerate(chars)}
vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
vocab["<|startoftext|>"] = 49406
vocab["<|endoftext|>"] = 49407
for hub_id in ("openai/clip-vit-large-patch14", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"):
    tmp = cache / ("_src_" + hub_id.replace("/", "_"))
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "vocab.json").write_text(json.dumps(vocab))
    (tmp / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"), model_max_length=77)
    tok.save_pretrained(cache / hub_id.replace("/", "_"))
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
# T5: a word-level vocabulary of 1000 ids (< 32128), pad 0, eos 1, unk 2.
words = {"<pad>": 0, "</s>": 1, "<unk>": 2}
words.update({f"w{i}": i for i in range(3, 1000)})
core = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
core.pre_tokenizer = pre_tokenizers.Whitespace()
t5 = T5TokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0,
                     model_max_length=512)
t5.save_pretrained(cache / "google_t5-v1_1-xxl")
print("tokenizers saved in", cache)
'''


def write_tokenizers(python: Path, cache: Path) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(python), "-c", _TOKENIZER_SCRIPT, str(cache)], check=True, timeout=300,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})


# --- tiny model files -------------------------------------------------------------------------------------------
def models_dir() -> Path:
    return CACHE / f"kohya-tiny-models-{MODELS_VERSION}"


def ensure_models() -> Path:
    """DEVSERVER_LORA_MODELS for sd35_large with the tiny files (module doc); built once."""
    target = models_dir()
    done = target / ".ready"
    if done.is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    from devserver_lora.testing.tiny_sd3 import write_tiny_sd3_checkpoint

    checkpoint = target / "sd3.5_large.safetensors"
    write_tiny_sd3_checkpoint(checkpoint, seed=0)
    write_clip_l(checkpoint, target / "clip_l.safetensors")
    write_clip_g(target / "clip_g.safetensors")
    write_zero_t5xxl_fp8(target / "t5xxl_fp8_e4m3fn.safetensors")
    done.write_text(MODELS_VERSION)
    return target


def write_clip_l(checkpoint: Path, dest: Path) -> Path:
    """The checkpoint's CLIP-L (ComfyUI's `text_encoders.clip_l.transformer.*`) under transformers' names."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    tensors = {}
    with safe_open(str(checkpoint), framework="pt") as fh:
        for key in fh.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
            if key.startswith("text_encoders.clip_l.transformer."):
                tensors[key[len("text_encoders.clip_l.transformer."):]] = fh.get_tensor(key)
    return publish_path(dest, lambda tmp: save_file(tensors, str(tmp)), overwrite=True)


CLIP_G = {"width": 1280, "layers": 32, "mlp": 5120, "vocab": 49408, "positions": 77}


def clip_g_shapes() -> dict[str, tuple[int, ...]]:
    w, t = CLIP_G["width"], "text_model"
    shapes: dict[str, tuple[int, ...]] = {
        f"{t}.embeddings.token_embedding.weight": (CLIP_G["vocab"], w),
        f"{t}.embeddings.position_embedding.weight": (CLIP_G["positions"], w),
        f"{t}.final_layer_norm.weight": (w,), f"{t}.final_layer_norm.bias": (w,),
        "text_projection.weight": (w, w),
    }
    for i in range(CLIP_G["layers"]):
        p = f"{t}.encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{p}.self_attn.{proj}.weight"] = (w, w)
            shapes[f"{p}.self_attn.{proj}.bias"] = (w,)
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[f"{p}.{norm}.weight"] = (w,)
            shapes[f"{p}.{norm}.bias"] = (w,)
        shapes[f"{p}.mlp.fc1.weight"], shapes[f"{p}.mlp.fc1.bias"] = (CLIP_G["mlp"], w), (CLIP_G["mlp"],)
        shapes[f"{p}.mlp.fc2.weight"], shapes[f"{p}.mlp.fc2.bias"] = (w, CLIP_G["mlp"]), (w,)
    return shapes


def write_clip_g(dest: Path, seed: int = 1) -> Path:
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, shape in clip_g_shapes().items():
        if key == "text_projection.weight":
            value = torch.eye(shape[0])
        elif "norm" in key:
            value = torch.ones(shape) if key.endswith(".weight") else torch.zeros(shape)
        elif key.endswith(".bias"):
            value = torch.zeros(shape)
        elif "embedding" in key:
            value = torch.randn(shape, generator=gen) * 0.02
        else:
            value = torch.randn(shape, generator=gen) / math.sqrt(shape[1])
        tensors[key] = value.to(torch.float16).contiguous()
    return publish_path(dest, lambda tmp: save_file(tensors, str(tmp)), overwrite=True)


T5 = {"d_model": 4096, "d_ff": 10240, "blocks": 24, "vocab": 32128, "heads": 64, "buckets": 32}


def t5xxl_shapes() -> dict[str, tuple[int, ...]]:
    d, ff = T5["d_model"], T5["d_ff"]
    shapes: dict[str, tuple[int, ...]] = {"shared.weight": (T5["vocab"], d),
                                          "encoder.embed_tokens.weight": (T5["vocab"], d)}
    for i in range(T5["blocks"]):
        p = f"encoder.block.{i}.layer"
        for name in ("q", "k", "v", "o"):
            shapes[f"{p}.0.SelfAttention.{name}.weight"] = (d, d)
        if i == 0:
            shapes[f"{p}.0.SelfAttention.relative_attention_bias.weight"] = (T5["buckets"], T5["heads"])
        shapes[f"{p}.0.layer_norm.weight"] = (d,)
        shapes[f"{p}.1.DenseReluDense.wi_0.weight"] = (ff, d)
        shapes[f"{p}.1.DenseReluDense.wi_1.weight"] = (ff, d)
        shapes[f"{p}.1.DenseReluDense.wo.weight"] = (d, ff)
        shapes[f"{p}.1.layer_norm.weight"] = (d,)
    shapes["encoder.final_layer_norm.weight"] = (d,)
    return shapes


def write_zero_t5xxl_fp8(dest: Path) -> Path:
    """All-zero fp8 (F8_E4M3) T5-XXL encoder: the safetensors header, then a hole up to the data's end (sparse)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt", "devserver_lora": "all-zero t5xxl for tests"}}
    offset = 0
    for key, shape in t5xxl_shapes().items():
        size = math.prod(shape)  # one byte per fp8 value
        header[key] = {"dtype": "F8_E4M3", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)

    def fill(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(struct.pack("<Q", len(raw)) + raw)
            fh.truncate(8 + len(raw) + offset)

    return publish_path(dest, fill, overwrite=True)


if __name__ == "__main__":  # build both caches ahead of a test run: python tests/kohya_real.py
    print(ensure_install(), ensure_models())
