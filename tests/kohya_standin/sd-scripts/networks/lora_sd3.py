"""Stand-in marker: the real module trains LoRA for SD3 MMDiT."""
