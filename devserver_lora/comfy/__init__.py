"""ComfyUI client: HTTP + websocket, typed events and errors."""
