"""`devserver-lora inject` and `devserver-lora inspect-lora` end to end (in process)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import COMFY_FIXTURES, SCHEMAS
from safetensors.numpy import save_file

from devserver_lora.cli import main
from devserver_lora.lora.report import TRIGGER_WORDS_KEY


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_inject_shipped_yoruba_config_with_prompt(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "inject", "--config", "sd35_large_yoruba", "--schemas", str(SCHEMAS), "--prompt", "a market at dawn")
    assert code == 0
    wf = json.loads(out)
    loras = [k for k, n in wf.items() if n["class_type"] == "LoraLoader"]
    assert len(loras) == 1
    lora = wf[loras[0]]
    assert lora["inputs"]["lora_name"] == "yorubaheritage_sd35.safetensors"
    assert lora["inputs"]["strength_model"] == lora["inputs"]["strength_clip"] == 0.85
    assert wf["1"]["inputs"]["clip"] == wf["6"]["inputs"]["clip"] == [loras[0], 1]
    assert wf["10"]["inputs"]["value"] == "yoruba heritage, a market at dawn"

    code, out, _ = _run(capsys, "inject", "--config", "sd35_large_yoruba", "--schemas", str(SCHEMAS),
                        "--prompt", "Yoruba Heritage textiles", "--trigger-position", "suffix")
    assert json.loads(out)["10"]["inputs"]["value"] == "Yoruba Heritage textiles"


def test_inject_validates_against_object_info(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    info_path = COMFY_FIXTURES / "object_info.json"
    code, out, err = _run(capsys, "inject", "--config", "sd35_large_yoruba", "--schemas", str(SCHEMAS),
                          "--object-info", str(info_path), "--json")
    assert code == 1
    body = json.loads(out)
    assert body["error"] == "GraphValidationError"
    assert {p["code"] for p in body["problems"]} == {"value_not_in_list"}
    names = {p["path"] for p in body["problems"]}
    assert "$.5.inputs.ckpt_name" in names and any(p.endswith(".inputs.lora_name") for p in names)

    info = json.loads(info_path.read_text(encoding="utf-8"))
    info["LoraLoader"]["input"]["required"]["lora_name"][0].append("yorubaheritage_sd35.safetensors")
    info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0].append("OfficialStableDiffusion/sd3.5_large.safetensors")
    info["DualCLIPLoader"]["input"]["required"]["clip_name1"][0].append("clip_g.safetensors")
    info["DualCLIPLoader"]["input"]["required"]["clip_name2"][0].append("t5xxl_enconly.safetensors")
    patched = tmp_path / "object_info.json"
    patched.write_text(json.dumps(info), encoding="utf-8")
    code, out, _ = _run(capsys, "inject", "--config", "sd35_large_yoruba", "--schemas", str(SCHEMAS), "--object-info", str(patched))
    assert code == 0 and json.loads(out)


def test_inject_reads_triggers_and_text_encoder_keys_from_the_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    schemas = tmp_path / "schemas"
    shutil.copytree(SCHEMAS / "chunks", schemas / "chunks")
    (schemas / "configs" / "output").mkdir(parents=True)
    config = json.loads((SCHEMAS / "configs/output/sd35_large_yoruba.json").read_text(encoding="utf-8"))
    config.pop("lora")
    config["parameters"]["loras"] = [{"name": "unet_only.safetensors", "strength": 0.6}]
    (schemas / "configs/output/sd35_large_unet.json").write_text(json.dumps(config), encoding="utf-8")
    loras = tmp_path / "loras"
    loras.mkdir()
    save_file(
        {"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": np.zeros((4, 2432), np.float16),
         "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight": np.zeros((7296, 4), np.float16)},
        str(loras / "unet_only.safetensors"),
        metadata={TRIGGER_WORDS_KEY: json.dumps(["àdìrẹ"])},
    )
    code, out, _ = _run(capsys, "inject", "--config", "sd35_large_unet", "--schemas", str(schemas),
                        "--loras-dir", str(loras), "--prompt", "indigo cloth")
    assert code == 0
    wf = json.loads(out)
    [node] = [n for n in wf.values() if n["class_type"].startswith("LoraLoader")]
    assert node["class_type"] == "LoraLoaderModelOnly" and node["inputs"]["strength_model"] == 0.6
    assert wf["10"]["inputs"]["value"] == "àdìrẹ, indigo cloth"

    (tmp_path / "empty").mkdir()
    code, out, _ = _run(capsys, "inject", "--config", "sd35_large_unet", "--schemas", str(schemas),
                        "--loras-dir", str(tmp_path / "empty"), "--json")
    assert code == 1 and "'unet_only.safetensors' is not installed" in json.loads(out)["message"]
    code, out, _ = _run(capsys, "inject", "--config", "sd35_large_unet", "--schemas", str(schemas),
                        "--loras-dir", str(tmp_path / "nowhere"), "--json")
    assert code == 1 and "does not exist" in json.loads(out)["message"]


def test_inject_applies_the_configs_parameters_like_stage_4(capsys: pytest.CaptureFixture[str]) -> None:
    # The printed graph is what Stage 4 would submit: the config's size, steps, CFG, negative prompt and seed.
    code, out, _ = _run(capsys, "inject", "--config", "sd35_large_yoruba", "--schemas", str(SCHEMAS),
                        "--prompt", "a market", "--seed", "42")
    assert code == 0
    wf = json.loads(out)
    cfg = json.loads((SCHEMAS / "configs/output/sd35_large_yoruba.json").read_text(encoding="utf-8"))["parameters"]
    assert wf["8"]["inputs"]["seed"] == 42
    assert (wf["3"]["inputs"]["width"], wf["8"]["inputs"]["steps"], wf["8"]["inputs"]["cfg"]) == (
        cfg["WIDTH"], cfg["STEPS"], cfg["CFG"])
    assert wf["11"]["inputs"]["value"] == cfg["NEGATIVE_PROMPT"]


def test_inject_unknown_config(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "inject", "--config", "nope", "--schemas", str(SCHEMAS))
    assert code == 1 and "no output config named 'nope'" in err


def test_inspect_lora_predicts_recorded_lines(capsys: pytest.CaptureFixture[str]) -> None:
    bad = str(COMFY_FIXTURES / "loras/tiny_sd3_bad_keys.safetensors")
    code, out, _ = _run(capsys, "inspect-lora", bad, "--against", "sd3:2:te=clip_l", "--json")
    assert code == 1
    body = json.loads(out)
    recorded = json.loads((COMFY_FIXTURES / "lora_warning_summary.json").read_text(encoding="utf-8"))
    assert body["not_loaded"] == recorded["bad_keys"]["lora_key_not_loaded_lines"]
    assert "tensors" not in body and body["architecture"] == "sd3"

    good = str(COMFY_FIXTURES / "loras/tiny_sd3_kohya.safetensors")
    code, out, _ = _run(capsys, "inspect-lora", good, "--against", "sd3:2:te=clip_l")
    assert code == 0 and "every key loads" in out
    code, out, _ = _run(capsys, "inspect-lora", good)
    assert code == 0 and "format kohya" in out and "depth 2" in out
    code, out, _ = _run(capsys, "inspect-lora", good, "--against", "sd35_large")
    assert code == 1 and "2432" in out


def test_inspect_lora_refuses_pickle(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(b"\x80\x04junk")
    code, _, err = _run(capsys, "inspect-lora", str(evil))
    assert code == 1 and "pickle" in err
