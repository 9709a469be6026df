"""`python -m devserver_lora.train demo`: the newcomer's first run, end to end (with a real ComfyUI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from comfyui_harness import ComfyServer

from devserver_lora.lora.fit import predict_not_loaded
from devserver_lora.lora.keys import ArchSpec
from devserver_lora.train.cli import build_parser, main


def test_demo_is_a_registered_command_and_explains_a_missing_models_folder(tmp_path: Path, capsys) -> None:
    args = build_parser().parse_args(["demo", "--out", str(tmp_path), "--steps", "5"])
    assert args.steps == 5 and args.comfyui is None
    code = main(["demo", "--out", str(tmp_path / "d"), "--comfyui", "http://127.0.0.1:9"])
    assert code != 0
    text = capsys.readouterr()
    assert "--comfyui-models" in text.out + text.err


@pytest.mark.comfyui
@pytest.mark.slow
def test_demo_trains_installs_and_renders_before_and_after(comfyui_server: ComfyServer, tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    mark = comfyui_server.log_mark()
    code = main(["demo", "--out", str(out), "--comfyui", comfyui_server.url,
                 "--comfyui-models", str(comfyui_server.base_dir / "models"), "--steps", "16", "--json"])
    assert code == 0, capsys.readouterr()
    result = json.loads((out / "demo_result.json").read_text(encoding="utf-8"))
    assert result["job_state"] == "done"
    lora = Path(result["lora_path"])
    assert lora.parent == comfyui_server.loras_dir and lora.is_file()
    assert predict_not_loaded(lora, ArchSpec.sd3(2, text_encoders=("clip_l",))) == []
    config = json.loads(Path(result["config_path"]).read_text(encoding="utf-8"))
    assert config["parameters"]["loras"][0]["name"] == lora.name
    assert Path(result["renders"]["before"]).is_file() and Path(result["renders"]["after"]).is_file()
    assert result["pixel_difference"] > 1.0
    log = comfyui_server.console_log(since=mark)
    assert "lora key not loaded" not in log and "NOT LOADED" not in log
