"""The native training backend: SD3/SD3.5 LoRA training in-process with diffusers + peft.

Modules: `models` (finding/checking/loading base models offline, shipped configs in `configs/`),
`caches` (latents and text embeddings), `objective` (rectified flow), `loop` (the trainer),
`lora_export` (peft -> kohya/diffusers keys, q/k/v fusion), `backend` (`NativeBackend`),
`tiny` (tiny models, tokenizer and a synthetic dataset for tests and the demo).
"""

from .backend import NativeBackend

__all__ = ["NativeBackend"]
