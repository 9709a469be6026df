"""`devserver-lora generate` against the double and (marker comfyui) against a real ComfyUI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from comfy_double import ComfyDouble
from comfyui_harness import ComfyServer
from conftest import SCHEMAS
from test_comfy_real import tiny_sd35_graph

from devserver_lora.cli import main
from devserver_lora.config.chunks import sd35_chunk

SMALL = ["--set", "WIDTH=64", "--set", "HEIGHT=64", "--set", "STEPS=2"]


@pytest.fixture
def sd35_double():
    models = {
        "checkpoints": ["OfficialStableDiffusion/sd3.5_large.safetensors"],
        "text_encoders": ["clip_g.safetensors", "t5xxl_enconly.safetensors"],
        "loras": ["yorubaheritage_sd35.safetensors"],
    }
    with ComfyDouble(models=models) as d:
        yield d


def test_generate_writes_images_and_says_where(sd35_double: ComfyDouble, tmp_path: Path, capsys) -> None:
    args = ["generate", "--config", "sd35_large_yoruba", "--prompt", "adire cloth", "--server", sd35_double.url]
    code = main([*args, "--out", str(tmp_path), "--seed", "3", *SMALL])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:4] == b"\x89PNG"
    assert str(pngs[0]) in captured.out and "seed 3" in captured.out
    assert "yoruba heritage, adire cloth" in captured.out
    # A second run with the same seed never overwrites the first image.
    assert main([*args, "--out", str(tmp_path), "--seed", "3", *SMALL]) == 0
    assert len(list(tmp_path.glob("*.png"))) == 2


def test_generate_json(sd35_double: ComfyDouble, tmp_path: Path, capsys) -> None:
    code = main(
        ["generate", "--config", "sd35_large_yoruba", "--prompt", "p", "--server", sd35_double.url, "--out", str(tmp_path)]
        + SMALL
        + ["--json", "--save-graph"]
    )
    body = json.loads(capsys.readouterr().out)
    assert code == 0 and Path(body["images"][0]).is_file() and isinstance(body["seed"], int)
    graph = json.loads(Path(body["graph"]).read_text())
    assert graph["8"]["inputs"]["seed"] == body["seed"]


def test_generate_errors_teach(sd35_double: ComfyDouble, tmp_path: Path, capsys) -> None:
    sd35_double.models["loras"] = []
    base = ["generate", "--config", "sd35_large_yoruba", "--prompt", "p", "--out", str(tmp_path)]
    assert main([*base, "--server", sd35_double.url, *SMALL]) == 1
    assert "yorubaheritage_sd35.safetensors' is not installed in ComfyUI" in capsys.readouterr().err
    assert main([*base, "--server", "http://127.0.0.1:9", "--timeout", "5"]) == 1
    assert "cannot reach ComfyUI" in capsys.readouterr().err
    assert main([*base, "--server", sd35_double.url, "--set", "WIDTH"]) == 1
    assert "is not KEY=VALUE" in capsys.readouterr().err
    assert main(["generate", "--config", "../x", "--prompt", "p"]) == 1


@pytest.mark.comfyui
def test_generate_through_a_real_comfyui(comfyui_server: ComfyServer, tmp_path: Path, capsys) -> None:
    """A schemas tree whose chunk is the SD3.5 chunk scaled to the tiny checkpoint, with a kohya LoRA config."""
    schemas = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, schemas)
    chunk = sd35_chunk("output_image_tiny_sd3", "dual")  # the project's own SD3.5 chunk (no DevServer file ships)
    chunk["workflow"] = tiny_sd35_graph(comfyui_server.checkpoint_name)
    chunk["input_mappings"]["checkpoint"]["default"] = comfyui_server.checkpoint_name
    (schemas / "chunks" / "output_image_tiny_sd3.json").write_text(json.dumps(chunk))
    config = json.loads((schemas / "configs" / "output" / "sd35_large_yoruba.json").read_text())
    config["parameters"].update(OUTPUT_CHUNK="output_image_tiny_sd3", SCHEDULER="sgm_uniform", CFG=4.5)
    lora = {"name": "tiny_sd3_kohya.safetensors", "strength_model": 0.9, "strength_clip": 0.6, "trigger_words": ["adire"]}
    config["lora"] = lora
    config["parameters"]["loras"] = [{**lora, "strength": 0.9}]
    (schemas / "configs" / "output" / "tiny_sd3_adire.json").write_text(json.dumps(config))
    mark = comfyui_server.log_mark()
    code = main(
        ["generate", "--config", "tiny_sd3_adire", "--prompt", "indigo cloth", "--server", comfyui_server.url]
        + ["--schemas", str(schemas), "--out", str(tmp_path / "out"), "--seed", "4", "--loras-dir", str(comfyui_server.loras_dir)]
        + ["--arch", "sd3:2:te=clip_l"]
        + SMALL
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert len(list((tmp_path / "out").glob("*.png"))) == 1
    assert "adire, indigo cloth" in captured.out
    assert "lora key not loaded" not in comfyui_server.console_log(since=mark)


def test_set_takes_devserver_names_and_refuses_what_fills_nothing(sd35_double: ComfyDouble, tmp_path: Path,
                                                                   capsys) -> None:
    base = ["generate", "--config", "sd35_large_yoruba", "--prompt", "p", "--out", str(tmp_path), "--json"]
    assert main([*base, "--server", sd35_double.url, "--set", "WIDTH=64", "--set", "HEIGHT=64", "--set", "steps=2",
                 "--save-graph"]) == 0
    graph = json.loads(Path(json.loads(capsys.readouterr().out)["graph"]).read_text())
    assert (graph["3"]["inputs"]["width"], graph["8"]["inputs"]["steps"]) == (64, 2)
    refused = ["generate", "--config", "sd35_large_yoruba", "--prompt", "p", "--out", str(tmp_path / "refused")]
    assert main([*refused, "--server", sd35_double.url, "--set", "WIDHT=64"]) == 1
    text = " ".join(capsys.readouterr().err.split())
    assert "nothing to fill with WIDHT" in text and "WIDTH" in text and "->" in text
    assert not (tmp_path / "refused").exists()  # refused before anything was rendered


def test_generate_says_once_when_the_fit_check_cannot_run(sd35_double: ComfyDouble, tmp_path: Path, capsys) -> None:
    args = ["generate", "--config", "sd35_large_yoruba", "--prompt", "p", "--server", sd35_double.url,
            "--out", str(tmp_path), *SMALL]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("fit check did not run") == 1 and "--loras-dir" in err


def test_generate_refuses_a_lora_of_the_wrong_width(sd35_double: ComfyDouble, tmp_path: Path, capsys) -> None:
    """The recorded tiny LoRA has every key name of SD3.5 Large but is 128 wide: inspect-lora refuses it, so must
    generate's pre-check (before this fix it compared names only and submitted it)."""
    from conftest import COMFY_FIXTURES

    loras = tmp_path / "loras"
    loras.mkdir()
    shutil.copyfile(COMFY_FIXTURES / "loras" / "tiny_sd3_kohya.safetensors", loras / "yorubaheritage_sd35.safetensors")
    code = main(["generate", "--config", "sd35_large_yoruba", "--prompt", "p", "--server", sd35_double.url,
                 "--out", str(tmp_path / "out"), "--loras-dir", str(loras), *SMALL])
    err = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert code == 1 and "128 wide but sd35_large_dualclip has 2432" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.png"))
    assert sd35_double.history == {}  # nothing was submitted
    assert main(["inspect-lora", str(loras / "yorubaheritage_sd35.safetensors"), "--against", "sd35_large"]) == 1
