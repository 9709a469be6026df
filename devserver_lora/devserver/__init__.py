"""Wiring into the AI4ArtsEd DevServer: our LoRA injector in place of its own (`injector`), the one call its app
factory makes (`hook.install_into_devserver`), and Stage 4 as DevServer runs it (`stage4.Stage4Runner`).

The top of the core: imports configs, graphs, LoRA files and the ComfyUI client; only the CLIs and the Studio
import it.
"""

from .hook import check_lora_configs, install_into_devserver
from .injector import LoraInjector, to_specs, triggers_in
from .stage4 import Stage4Result, Stage4Runner, apply_input_mappings

__all__ = [
    "LoraInjector",
    "Stage4Result",
    "Stage4Runner",
    "apply_input_mappings",
    "check_lora_configs",
    "install_into_devserver",
    "to_specs",
    "triggers_in",
]
