"""Numbers beside the pictures.

- `mean_abs_change(a, b)`: the mean absolute difference of two renders in 0-255 RGB units (0 = identical). Against
  the no-LoRA render of the same prompt and seed it says how much the LoRA changed the picture; it says nothing
  about whether the change is good.
- `ClipScorer`: the CLIP score (as in the SDXL training guide and torchmetrics): 100 x the cosine similarity of the
  image and prompt embeddings, floored at 0, with a CLIP model from a LOCAL folder only (never a hub download):
  a transformers CLIP folder (`config.json` of a CLIPModel, tokenizer and image-processor files), or a diffusers
  folder holding `image_encoder/` + `text_encoder/` (+ `tokenizer/`, `feature_extractor/`) with the same projection.
  Higher means the picture matches the words better, for that CLIP model; compare columns, not absolute values.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ...errors import TrainingError


def mean_abs_change(a: Any, b: Any) -> float:
    import numpy as np

    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"images differ in size: {x.shape} vs {y.shape}")
    return float(np.abs(x - y).mean())


def mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def _model_type(folder: Path) -> str | None:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


class ClipScorer:
    """CLIP score of (image, prompt) pairs with a local CLIP model."""

    def __init__(self, path: str | Path) -> None:
        import os

        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        root = Path(path).expanduser()
        if not root.is_dir():
            raise TrainingError(f"CLIP model folder {root} does not exist",
                                hint="pass a local CLIP folder (transformers save_pretrained) or a diffusers folder "
                                "with image_encoder/ and text_encoder/; nothing is downloaded")
        self.root = root
        if _model_type(root) == "clip":
            self.model: Any = CLIPModel.from_pretrained(root, local_files_only=True).eval()
            self.tokenizer = CLIPTokenizer.from_pretrained(root, local_files_only=True)
            self.processor = CLIPImageProcessor.from_pretrained(root, local_files_only=True)
            self.vision: Any = None
            self.text: Any = None
        elif (root / "image_encoder").is_dir() and (root / "text_encoder").is_dir():
            from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

            self.model = None
            self.vision = CLIPVisionModelWithProjection.from_pretrained(root / "image_encoder", local_files_only=True)
            self.text = CLIPTextModelWithProjection.from_pretrained(root / "text_encoder", local_files_only=True)
            self.tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
            self.processor = CLIPImageProcessor.from_pretrained(root / "feature_extractor", local_files_only=True)
        else:
            raise TrainingError(f"{root} is neither a CLIP model folder nor a diffusers folder with a CLIP "
                                "image_encoder/ and text_encoder/",
                                hint="save one with transformers' CLIPModel.save_pretrained (plus its tokenizer "
                                "and image processor), offline")

    def score(self, image: Any, prompt: str) -> float:
        """The CLIP score: 100 x cosine similarity, floored at 0."""
        return max(0.0, 100.0 * self.cosine(image, prompt))

    def cosine(self, image: Any, prompt: str) -> float:
        """Cosine similarity of the image and prompt embeddings (-1 to 1)."""
        import torch

        tokens = self.tokenizer([prompt], padding="max_length", truncation=True, max_length=77, return_tensors="pt")
        pixels = self.processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            if self.model is not None:
                img = self.model.get_image_features(pixel_values=pixels)
                txt = self.model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
            else:
                img = self.vision(pixel_values=pixels).image_embeds
                txt = self.text(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).text_embeds
        img = _tensor(img)
        txt = _tensor(txt)
        return float(torch.nn.functional.cosine_similarity(img, txt).item())

    @property
    def name(self) -> str:
        return self.root.name


def _tensor(value: Any) -> Any:
    """transformers 5 may return an output object where 4 returned a tensor: take the pooled embedding."""
    if hasattr(value, "pooler_output") and not hasattr(value, "shape"):
        return value.pooler_output
    return value
