"""LoRA Studio: the web page and REST API where teachers and students train, watch and install LoRAs (issue 14).

`mount(app, ...)` adds it to DevServer's Flask app next to `install_into_devserver`; `create_app(...)` makes a
standalone app (`devserver-lora studio`). Flask is an optional dependency: `pip install devserver-lora[studio]`.
The REST contract is API.md beside this file.
"""

from __future__ import annotations

from .app import Studio, create_app, mount

__all__ = ["Studio", "create_app", "mount"]
