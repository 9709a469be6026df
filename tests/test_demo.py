"""`train demo`: the newcomer's first run, end to end: training, install, the local ComfyUI started by `--render`,
and then exactly the README's Quick start 1 commands on the demo's config, as the demo prints them."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import time
from pathlib import Path

import pytest
from comfyui_harness import require_install
from conftest import ROOT
from PIL import Image

from devserver_lora.cli import main as cli_main
from devserver_lora.comfy import local
from devserver_lora.invocation import cli_command
from devserver_lora.lora.fit import predict_not_loaded
from devserver_lora.lora.header import read_header
from devserver_lora.lora.keys import ArchSpec
from devserver_lora.train.cli import build_parser, main
from devserver_lora.train.demo import NOISE_NOTE


def test_demo_checks_its_comfyui_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["demo", "--out", str(tmp_path), "--steps", "5"])
    assert args.steps == 5 and args.comfyui is None and not args.render
    cases = [
        (["--comfyui", "http://127.0.0.1:9"], "--comfyui-models"),
        (["--comfyui", "http://127.0.0.1:9", "--comfyui-models", str(tmp_path / "none")], "--comfyui-models"),
        (["--comfyui", "http://127.0.0.1:9", "--comfyui-models", str(tmp_path)], "no ComfyUI answers at --comfyui"),
        (["--render", "--comfyui", "http://127.0.0.1:9"], "give one of them"),
    ]
    for i, (flags, expected) in enumerate(cases):
        out = tmp_path / f"d{i}"
        t0 = time.monotonic()
        assert main(["demo", "--out", str(out), *flags]) == 1
        text = capsys.readouterr().err
        assert expected in text, text
        assert time.monotonic() - t0 < 10 and not (out / "jobs").exists()  # refused before any training
    assert "--comfyui" in text or "--render" in text


def test_demo_without_an_install_names_the_install_step(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv(local.INSTALL_ENV, str(tmp_path / "no_install"))
    assert main(["demo", "--out", str(tmp_path / "d"), "--render", "--comfyui-base", str(tmp_path / "b")]) == 1
    text = capsys.readouterr().err
    assert "--render needs the ComfyUI the install sets up" in text and "comfyui_setup.py" in text
    assert not (tmp_path / "d" / "jobs").exists()


def test_the_demo_output_folder_is_ignored_by_git() -> None:
    default = build_parser().parse_args(["demo"]).out
    for path in (default / "jobs" / "x.safetensors", Path("devserver-lora-output") / "a.png"):
        done = subprocess.run(["git", "check-ignore", "--no-index", "-q", str(path)], cwd=ROOT, timeout=30, check=False)
        assert done.returncode == 0, f"{path} is not in .gitignore"


def _run_printed(command: str) -> int:
    """Run a command the demo printed through the CLI in this process (its program is this venv's devserver-lora)."""
    prefix = shlex.split(cli_command())
    argv = shlex.split(command)
    assert argv[: len(prefix)] == prefix, command
    return cli_main(argv[len(prefix):])


@pytest.mark.comfyui
@pytest.mark.slow
def test_newcomer_path_demo_render_then_quick_start_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_install()
    out, base = tmp_path / "demo", local.BaseDir(tmp_path / "comfyui_base")
    try:
        code = main(["demo", "--out", str(out), "--render", "--comfyui-base", str(base.root), "--steps", "12"])
        shown = capsys.readouterr()
        assert code == 0, shown
        result = json.loads((out / "demo_result.json").read_text(encoding="utf-8"))
        # The demo started the local ComfyUI by itself and left it running for what comes next.
        assert result["comfyui_started"] and result["comfyui_url"].startswith("http://127.0.0.1:")
        st = local.status(base)
        assert st.alive and st.answering and st.record is not None and st.record.url == result["comfyui_url"]
        assert "encoding 4 images and captions" in shown.out + shown.err  # the caching phase has a label
        # It printed the final LoRA (in ComfyUI's loras folder, not a saved step) with a rounded loss.
        lora = Path(result["lora_path"])
        assert lora.parent == base.loras and lora.name == "demo_magenta.safetensors"
        assert f"final LoRA: {lora}" in shown.out and f"loss at the last step {result['final_loss']:.3g}" in shown.out
        assert result["job_state"] == "done" and result["pixel_difference"] > 1.0
        assert Path(result["renders"]["before"]).is_file() and Path(result["renders"]["after"]).is_file()
        # It says the tiny model draws noise, and shows what a real run shows: samples during training, the loss plot,
        # the before/after sheet with its difference image, and the job's report, whose path it prints last.
        assert NOISE_NOTE in shown.out
        assert Path(result["renders"]["difference"]).is_file() and Path(result["renders"]["sheet"]).is_file()
        assert len(result["samples"]) == 2 * 4 and all(Path(p).is_file() for p in result["samples"])  # steps 0,4,8,12
        assert Path(result["loss_plot"]).is_file()
        report = Path(result["report"])
        assert report.is_file() and shown.out.strip().splitlines()[-1] == f"report: {report}"
        facts = json.loads((report.parent / "report.json").read_text(encoding="utf-8"))
        assert "test-sized model" in facts["note"] and facts["evaluation"]["sheets"][0]["kind"] == "before_after"
        assert facts["install"]["output_config"]["meta"]["base_model"] == "sd3:2:te=clip_l"
        assert all(c in shown.out for c in result["real_model_commands"]) and "evaluate JOB" in shown.out
        # The LoRA says what it was trained on; the config carries that as meta.base_model.
        arch = read_header(lora).metadata["devserver_lora.arch"]
        assert arch == result["arch"] == "sd3:2:te=clip_l"
        config = json.loads(Path(result["config_path"]).read_text(encoding="utf-8"))
        assert config["meta"]["base_model"] == arch and config["parameters"]["loras"][0]["name"] == lora.name
        assert predict_not_loaded(lora, ArchSpec.sd3(2, text_encoders=("clip_l",))) == []
        # Every file the demo wrote is readable by the group (ComfyUI or DevServer may run as another user).
        private = [p for p in out.rglob("*") if p.is_file() and not p.stat().st_mode & stat.S_IRGRP]
        assert not private, private
        # The README's Quick start 1, exactly as the demo printed it: validate, show-config, inspect-lora, generate.
        commands = result["next_commands"]
        assert [shlex.split(c)[len(shlex.split(cli_command()))] for c in commands] == [
            "validate", "show-config", "inspect-lora", "generate"]
        for command in commands:
            assert command in shown.out
        mark = base.log.stat().st_size
        for command in commands:
            assert _run_printed(command) == 0, (command, capsys.readouterr())
        text = capsys.readouterr()
        assert "the LoRA fit check did not run" not in text.err
        images = sorted((out / "generated").glob("*.png"))
        assert len(images) == 1 and images[0].read_bytes()[:4] == b"\x89PNG"
        ran = json.loads(Image.open(images[0]).text["prompt"])
        texts = [n["inputs"]["text"] for n in ran.values() if n["class_type"] == "CLIPTextEncode"]
        assert "mgsq, a magenta square on a plain background" in texts  # the trigger word merged in
        assert any(n["class_type"].startswith("LoraLoader") and n["inputs"]["lora_name"] == lora.name for n in ran.values())
        log = base.log.read_bytes()[mark:].decode("utf-8", "replace")
        assert "lora key not loaded" not in log and "NOT LOADED" not in log
        assert _run_printed(f"{cli_command()} comfyui status --base {base.root}") == 0
    finally:
        record = local.read_record(base) if base.pid_file.exists() else None
        assert cli_main(["comfyui", "stop", "--base", str(base.root)]) == 0
    assert record is not None and local._start_ticks(record.pid) is None  # gone
    assert cli_main(["comfyui", "status", "--base", str(base.root)]) == 3
    assert not os.path.exists(base.pid_file)


def test_progress_names_the_phase_before_the_first_step_and_rounds_the_loss() -> None:
    from devserver_lora.train.progress_view import format_loss, phase_of

    encoding = {"type": "log", "level": "info", "message": "encoding 4 images and captions (cached once)"}
    assert phase_of(encoding) == "encoding 4 images and captions (cached once)…"
    assert phase_of({"type": "log", "level": "debug", "message": "x"}) is None
    assert phase_of({"type": "progress", "step": 1, "total_steps": 2}) is None
    assert format_loss({"loss": 2.2713851928710938}) == "2.27"
    assert format_loss({"loss": 0.081234}) == "0.0812"
    assert format_loss({"loss": None, "loss_is_nan": True}) == "nan"
