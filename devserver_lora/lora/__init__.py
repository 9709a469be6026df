"""LoRA files and what applies them: the spec a config names, the safetensors header, ComfyUI's key map for each
model, the file's description, the fit check, and the trigger-word merge.

Imports only the foundation (`errors`, `paths`, `safe_json`); everything above (configs, graphs, the client,
DevServer wiring, training) may import it. Modules: `spec` (LoraSpec), `header` (the one safetensors header
reader and rewriter), `keys` (model weight names and ComfyUI's key map), `report` (inspect a file), `fit` (does it
fit a model), `triggers` (merge trigger words into a prompt).
"""
