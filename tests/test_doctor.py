"""`devserver-lora devserver doctor`: per item ok or the exact step left, on a DevServer-shaped checkout written in
code (the real checkout: tests/test_devserver_contract.py, `-m devserver`)."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SCHEMAS
from devserver_tree import write_devserver_tree
from lora_files import zero_lora

from devserver_lora.cli import main
from devserver_lora.devserver.doctor import APP_FACTORY_SNIPPET, run_doctor

# The shape of DevServer's app factory and picker (function and variable names are the facts; the text is ours).
FACTORY = '''"""App factory."""
from flask import Flask


def reload_user_settings():
    pass


def create_app():
    reload_user_settings()
    app = Flask(__name__)
    return app
'''
PICKER = """<script setup lang="ts">
const configsByCategory: Record<string, Config[]> = {
  image: [
    { id: 'sd35_large', label: 'SD', emoji: '🎨', color: '#2196F3', description: 'x' },
  ],
  video: [
    { id: 'wan22_video', label: 'Wan', emoji: '🎬', color: '#E91E63', description: 'y' }
  ]
}
</script>
"""


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    root = tmp_path / "ai" / "ai4artsed_webserver"
    schemas = write_devserver_tree(root / "devserver" / "schemas")
    (schemas / "configs/output/sd35_large_yoruba.json").write_text(
        (SCHEMAS / "configs/output/sd35_large_yoruba.json").read_text(encoding="utf-8"), encoding="utf-8")
    factory = root / "devserver" / "my_app" / "__init__.py"
    factory.parent.mkdir(parents=True)
    factory.write_text(FACTORY, encoding="utf-8")
    view = root / "public/ai4artsed-frontend/src/views/text_transformation.vue"
    view.parent.mkdir(parents=True)
    view.write_text(PICKER, encoding="utf-8")
    return root


def _env(root: Path) -> dict[str, str]:
    """DevServer's own variables, cleared: the checkout's parent is <AI tools>, as in DevServer's config.py."""
    return {k: v for k, v in os.environ.items()
            if k not in ("AI_TOOLS_BASE", "SWARMUI_PATH", "COMFYUI_PATH", "LORA_OUTPUT_DIR")}


def _venv_with_devserver_lora(venv: Path) -> None:
    """DevServer's venv, sharing this test run's site-packages (where devserver-lora is installed)."""
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text((Path(sys.prefix) / "pyvenv.cfg").read_text(encoding="utf-8"), encoding="utf-8")
    (venv / "lib").symlink_to(Path(sys.prefix) / "lib")
    (venv / "bin" / "python").symlink_to(Path(sys.prefix) / "bin" / "python")


def _todo(checks) -> dict[str, list[str]]:
    return {c.item: c.steps for c in checks if not c.ok}


def test_readme_snippet_is_the_one_the_doctor_asks_for() -> None:
    assert APP_FACTORY_SNIPPET in (ROOT / "README.md").read_text(encoding="utf-8")


def test_doctor_names_each_step_left_and_is_satisfied_when_they_are_done(checkout: Path, monkeypatch) -> None:
    for var in ("AI_TOOLS_BASE", "SWARMUI_PATH", "COMFYUI_PATH", "LORA_OUTPUT_DIR"):
        monkeypatch.delenv(var, raising=False)
    tools = checkout.parent
    loras = tools / "SwarmUI" / "Models" / "loras"
    todo = _todo(run_doctor(checkout))
    assert set(todo) == {"app factory calls install_into_devserver", "DevServer's venv imports devserver_lora",
                         "loras folder exists and is the one ComfyUI reads",
                         "every LoRA config's LoRA is installed and fits its model",
                         "each LoRA config is offered in the frontend's pickers"}
    assert APP_FACTORY_SNIPPET.rstrip() in todo["app factory calls install_into_devserver"][0]
    assert todo["loras folder exists and is the one ComfyUI reads"] == [
        f"mkdir -p {loras} (or point LORA_OUTPUT_DIR at the folder SwarmUI's ComfyUI reads LoRAs from)"]
    picker = todo["each LoRA config is offered in the frontend's pickers"]
    assert "{ id: 'sd35_large_yoruba'" in picker[0] and "npm run build" in picker[-1]

    # Do each step as it says.
    factory = checkout / "devserver/my_app/__init__.py"
    text = factory.read_text(encoding="utf-8")
    factory.write_text(text.replace("    reload_user_settings()\n", "    reload_user_settings()\n" + APP_FACTORY_SNIPPET),
                       encoding="utf-8")
    _venv_with_devserver_lora(checkout / "venv")
    loras.mkdir(parents=True)
    todo = _todo(run_doctor(checkout))
    assert set(todo) == {"every LoRA config's LoRA is installed and fits its model",
                         "each LoRA config is offered in the frontend's pickers"}
    assert "yorubaheritage_sd35.safetensors is not in" in todo["every LoRA config's LoRA is installed and fits its model"][0]

    zero_lora(loras / "yorubaheritage_sd35.safetensors", width=128)  # the wrong model: refused by name
    steps = _todo(run_doctor(checkout))["every LoRA config's LoRA is installed and fits its model"]
    assert "does not fit the model sd35_large" in steps[0]
    zero_lora(loras / "yorubaheritage_sd35.safetensors")  # one that fits SD3.5 Large as the chunk wires it

    view = checkout / "public/ai4artsed-frontend/src/views/text_transformation.vue"
    entry = re.search(r"\{ id: 'sd35_large_yoruba'.*\},", picker[0]).group(0)
    view.write_text(view.read_text(encoding="utf-8").replace("  image: [\n", "  image: [\n    " + entry + "\n"),
                    encoding="utf-8")
    checks = run_doctor(checkout)
    assert _todo(checks) == {}, _todo(checks)
    assert main(["devserver", "doctor", "--devserver", str(checkout)]) == 0


def test_doctor_sees_a_comfyui_folder_without_the_lora_and_a_broken_config(checkout: Path, monkeypatch,
                                                                           capsys) -> None:
    tools = checkout.parent
    monkeypatch.setenv("AI_TOOLS_BASE", str(tools))
    monkeypatch.delenv("LORA_OUTPUT_DIR", raising=False)
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    loras = tools / "SwarmUI" / "Models" / "loras"
    loras.mkdir(parents=True)
    zero_lora(loras / "yorubaheritage_sd35.safetensors")
    comfy = tools / "SwarmUI" / "dlbackend" / "ComfyUI" / "models" / "loras"
    comfy.mkdir(parents=True)
    steps = _todo(run_doctor(checkout))["loras folder exists and is the one ComfyUI reads"]
    assert steps == [f"ln -s {loras / 'yorubaheritage_sd35.safetensors'} {comfy / 'yorubaheritage_sd35.safetensors'}"
                     "   # DevServer links each LoRA into ComfyUI"]
    (comfy / "yorubaheritage_sd35.safetensors").symlink_to(loras / "yorubaheritage_sd35.safetensors")
    assert "loras folder exists and is the one ComfyUI reads" not in _todo(run_doctor(checkout))

    broken = json.loads((SCHEMAS / "configs/output/sd35_large_yoruba.json").read_text(encoding="utf-8"))
    broken["parameters"]["OUTPUT_CHUNK"] = "output_image_sd35_large_triple_clip"  # not in DevServer's tree
    (checkout / "devserver/schemas/configs/output/sd35_large_te.json").write_text(json.dumps(broken))
    assert main(["devserver", "doctor", "--devserver", str(checkout), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    tree = next(c for c in report["checks"] if c["item"] == "schemas tree validates")
    assert not tree["ok"] and any("sd35_large_te.json" in s and "chunk" in s for s in tree["steps"])


def test_doctor_refuses_a_folder_that_is_no_devserver(tmp_path: Path, capsys) -> None:
    assert main(["devserver", "doctor", "--devserver", str(tmp_path)]) == 1
    assert "not a DevServer checkout" in capsys.readouterr().err
