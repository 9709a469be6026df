"""Training LoRAs: dataset -> plan -> backend (Kohya or native) -> LoRA file -> install."""
