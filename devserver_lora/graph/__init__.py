"""ComfyUI API-format graphs: their edges and node types (`api`), LoRA injection (`inject`), and offline
validation against an object_info snapshot in ComfyUI's own words (`check`).

Imports the foundation and `lora.spec`; the client, DevServer wiring and the CLIs build on it.
"""
