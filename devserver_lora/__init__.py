"""devserver-lora: train LoRAs and render with them through ComfyUI in the AI4ArtsEd DevServer."""

__version__ = "0.1.0"
