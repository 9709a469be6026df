"""Hand-written ComfyUI API-format graphs in the shapes ComfyUI's own templates use.

Each function returns a fresh dict; tests may mutate it. Reusable by other test modules:
`from graphs import sd15_graph, sdxl_refiner_graph, flux_graph, wan_graph, sd35_chunk_workflow`.
"""

from __future__ import annotations

import json
from typing import Any

from devserver_lora.config.chunks import sd35_workflow


def sd35_chunk_workflow() -> dict[str, Any]:
    """DevServer's SD3.5 Large chunk graph as the project writes it (dangling TripleCLIPLoader "7" included)."""
    return sd35_workflow("dual")


def _sampler(model: list, pos: list, neg: list, latent: list, **kw: Any) -> dict[str, Any]:
    inputs = {
        "seed": 42,
        "steps": 20,
        "cfg": 7.0,
        "sampler_name": "euler",
        "scheduler": "normal",
        "denoise": 1.0,
        "model": model,
        "positive": pos,
        "negative": neg,
        "latent_image": latent,
    }
    inputs.update(kw)
    return {"class_type": "KSampler", "inputs": inputs}


def sd15_graph() -> dict[str, Any]:
    """SD1.5 text-to-image: checkpoint MODEL/CLIP/VAE, CLIPSetLastLayer before the encoders."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "12": {"class_type": "CLIPSetLastLayer", "inputs": {"stop_at_clip_layer": -2, "clip": ["4", 1]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a bowl of fruit", "clip": ["12", 0]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["12", 0]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "3": _sampler(["4", 0], ["6", 0], ["7", 0], ["5", 0]),
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "sd15", "images": ["8", 0]}},
    }


def sdxl_graph() -> dict[str, Any]:
    """SDXL base only, with the CLIP read directly from the checkpoint."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
        "3": _sampler(["4", 0], ["6", 0], ["7", 0], ["5", 0]),
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "sdxl", "images": ["8", 0]}},
    }


def _advanced(model: list, pos: list, neg: list, latent: list, start: int, end: int, noise: str) -> dict[str, Any]:
    return {
        "class_type": "KSamplerAdvanced",
        "inputs": {
            "add_noise": noise,
            "noise_seed": 7,
            "steps": 25,
            "cfg": 8.0,
            "sampler_name": "euler",
            "scheduler": "normal",
            "start_at_step": start,
            "end_at_step": end,
            "return_with_leftover_noise": "enable" if noise == "enable" else "disable",
            "model": model,
            "positive": pos,
            "negative": neg,
            "latent_image": latent,
        },
    }


def sdxl_refiner_graph() -> dict[str, Any]:
    """SDXL base + refiner: two checkpoints, each with its own CLIP and encoders (ComfyUI's template shape)."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "12": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_refiner_1.0.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text", "clip": ["4", 1]}},
        "15": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": ["12", 1]}},
        "16": {"class_type": "CLIPTextEncode", "inputs": {"text": "text", "clip": ["12", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
        "10": _advanced(["4", 0], ["6", 0], ["7", 0], ["5", 0], 0, 20, "enable"),
        "11": _advanced(["12", 0], ["15", 0], ["16", 0], ["10", 0], 20, 10000, "disable"),
        "17": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["12", 2]}},
        "19": {"class_type": "SaveImage", "inputs": {"filename_prefix": "sdxl_refined", "images": ["17", 0]}},
    }


def flux_graph() -> dict[str, Any]:
    """FLUX dev: UNETLoader + DualCLIPLoader + VAELoader, ModelSamplingFlux, CLIPTextEncodeFlux,
    FluxGuidance, BasicGuider and SamplerCustomAdvanced (the shape of ComfyUI's flux example)."""
    return {
        "12": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}},
        "11": {
            "class_type": "DualCLIPLoader",
            "inputs": {"clip_name1": "t5xxl_fp16.safetensors", "clip_name2": "clip_l.safetensors", "type": "flux"},
        },
        "10": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "30": {
            "class_type": "ModelSamplingFlux",
            "inputs": {"model": ["12", 0], "max_shift": 1.15, "base_shift": 0.5, "width": 1024, "height": 1024},
        },
        "6": {
            "class_type": "CLIPTextEncodeFlux",
            "inputs": {"clip": ["11", 0], "clip_l": "a heron", "t5xxl": "a heron at dawn", "guidance": 3.5},
        },
        "26": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["6", 0], "guidance": 3.5}},
        "22": {"class_type": "BasicGuider", "inputs": {"model": ["30", 0], "conditioning": ["26", 0]}},
        "25": {"class_type": "RandomNoise", "inputs": {"noise_seed": 1}},
        "16": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "17": {"class_type": "BasicScheduler", "inputs": {"scheduler": "simple", "steps": 20, "denoise": 1.0, "model": ["30", 0]}},
        "27": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
        "13": {
            "class_type": "SamplerCustomAdvanced",
            "inputs": {"noise": ["25", 0], "guider": ["22", 0], "sampler": ["16", 0], "sigmas": ["17", 0], "latent_image": ["27", 0]},
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["10", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "flux", "images": ["8", 0]}},
    }


def wan_graph() -> dict[str, Any]:
    """Wan 2.2 style: two UNETLoaders (high / low noise experts) with non-numeric ids, one CLIPLoader,
    each expert through ModelSamplingSD3 into its own KSamplerAdvanced; ids like "115:110" as in subgraphs."""
    return {
        "unet_high_noise": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "weight_dtype": "default"},
        },
        "unet_low_noise": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors", "weight_dtype": "default"},
        },
        "38": {
            "class_type": "CLIPLoader",
            "inputs": {"clip_name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "type": "wan", "device": "default"},
        },
        "39": {"class_type": "VAELoader", "inputs": {"vae_name": "wan_2.1_vae.safetensors"}},
        "54": {"class_type": "ModelSamplingSD3", "inputs": {"shift": 8.0, "model": ["unet_high_noise", 0]}},
        "55": {"class_type": "ModelSamplingSD3", "inputs": {"shift": 8.0, "model": ["unet_low_noise", 0]}},
        "115:110": {"class_type": "CLIPTextEncode", "inputs": {"text": "a kite festival", "clip": ["38", 0]}},
        "115:111": {"class_type": "CLIPTextEncode", "inputs": {"text": "static, blurry", "clip": ["38", 0]}},
        "59": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 640, "height": 640, "length": 81, "batch_size": 1}},
        "57": _advanced(["54", 0], ["115:110", 0], ["115:111", 0], ["59", 0], 0, 10, "enable"),
        "58": _advanced(["55", 0], ["115:110", 0], ["115:111", 0], ["57", 0], 10, 10000, "disable"),
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["58", 0], "vae": ["39", 0]}},
        "60": {"class_type": "SaveImage", "inputs": {"filename_prefix": "wan", "images": ["8", 0]}},
    }


def sd3_with_lora_graph() -> dict[str, Any]:
    """The recorded run's graph (fixtures/comfyui/sd3_lora_workflow_api.json): a LoraLoader already present."""
    from conftest import COMFY_FIXTURES

    return json.loads((COMFY_FIXTURES / "sd3_lora_workflow_api.json").read_text(encoding="utf-8"))
