"""LoRA files: header reading, description, and ComfyUI's key warnings predicted from the recorded run."""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import COMFY_FIXTURES, KOHYA_FIXTURES
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from devserver_lora.errors import LoraFileError
from devserver_lora.lora.fit import ARCHS, ArchSpec, fit_problems, predict_not_loaded
from devserver_lora.lora.header import TensorInfo
from devserver_lora.lora.report import TRIGGER_WORDS_KEY, describe_lora, inspect_lora

LORAS = COMFY_FIXTURES / "loras"
# The model of the recorded ComfyUI run: depth-2 MMDiT (hidden 128), CLIP-L loaded, no CLIP-G, no T5.
RECORDED = ArchSpec.sd3(2, text_encoders=("clip_l",))
# The model of the recorded Kohya run: SD3.5-Medium style (attn2 in block 0), all three encoders.
KOHYA_MODEL = ArchSpec.sd3(2, attn2_blocks=(0,), text_encoders=("clip_l", "clip_g", "t5xxl"))


def _summary() -> dict:
    return json.loads((COMFY_FIXTURES / "lora_warning_summary.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", ["kohya", "diffusers", "peft_base_model", "bad_keys"])
def test_predicts_exactly_the_recorded_comfyui_lines(name: str) -> None:
    expected = _summary()[name]["lora_key_not_loaded_lines"]
    assert predict_not_loaded(LORAS / f"tiny_sd3_{name}.safetensors", RECORDED) == expected


def test_bad_keys_lines_in_comfyui_order() -> None:
    lines = predict_not_loaded(LORAS / "tiny_sd3_bad_keys.safetensors", RECORDED)
    assert len(lines) == 10
    assert lines[-1] == "NOT LOADED diffusion_model.joint_blocks.1.context_block.attn.proj.weight"
    assert all(line.startswith("lora key not loaded: ") for line in lines[:-1])


def test_model_only_loader_drops_every_text_encoder_key() -> None:
    lines = predict_not_loaded(LORAS / "tiny_sd3_kohya.safetensors", RECORDED, with_clip=False)
    assert lines and all(re.match(r"lora key not loaded: lora_te1_", line) for line in lines)
    assert len(lines) == 2 * 6 * 3  # 2 CLIP-L layers x 6 linears x (alpha, up, down)


def test_clip_g_lora_on_a_clip_l_only_model() -> None:
    report = inspect_lora(LORAS / "tiny_sd3_bad_keys.safetensors")
    assert report.text_encoders == ["clip_g"]
    problems = fit_problems(report, RECORDED)
    assert [p.message for p in problems if p.code == "encoder_not_loaded"] == [
        "the LoRA patches clip_g, which sd3:2:te=clip_l does not load"
    ]
    # The one fit check also lists each key ComfyUI would skip, exactly as predict_not_loaded does.
    assert [p.message for p in problems if p.code == "key_not_loaded"] == predict_not_loaded(report, RECORDED)


def test_reports_of_the_recorded_files() -> None:
    k = inspect_lora(LORAS / "tiny_sd3_kohya.safetensors")
    assert (k.format, k.architecture, k.family, k.depth, k.hidden_size, k.rank) == ("kohya", "sd3", "sd3", 2, 128, 4)
    assert k.has_alpha and k.text_encoders == ["clip_l"] and k.has_text_encoder and k.has_unet
    assert k.tensor_count == len(k.keys) == 75 and k.keys == sorted(k.keys)
    assert k.metadata["ss_network_module"] == "networks.lora_sd3"
    d = inspect_lora(LORAS / "tiny_sd3_diffusers.safetensors")
    assert (d.format, d.architecture, d.depth, d.rank, d.has_alpha) == ("diffusers", "sd3", 2, 4, False)
    assert not d.has_text_encoder
    assert any("factor 1.0" in w for w in d.warnings)
    p = inspect_lora(LORAS / "tiny_sd3_peft_base_model.safetensors")
    assert (p.format, p.architecture, p.depth) == ("peft", "sd3", 2)
    assert inspect_lora(LORAS / "tiny_sd3_bad_keys.safetensors").format == "mixed"


def test_shape_mismatch_with_the_real_model_is_reported() -> None:
    k = inspect_lora(LORAS / "tiny_sd3_kohya.safetensors")
    [problem] = fit_problems(k, "sd35_large")
    assert problem.code == "wrong_width" and "128 wide but sd35_large has 2432" in problem.message
    assert fit_problems(k, RECORDED) == []
    assert "not for sdxl" in fit_problems(k, "sdxl")[0].message


def _kohya_listing() -> list[tuple[dict[str, TensorInfo], dict[str, str]]]:
    """The LoRA files of the recorded Kohya runs, from their key/shape/metadata listing."""
    dtypes = {"bfloat16": "BF16", "float32": "F32", "float16": "F16"}
    files: list[tuple[dict[str, TensorInfo], dict[str, str]]] = []
    in_meta = False
    for line in (KOHYA_FIXTURES / "lora_keys.txt").read_text(encoding="utf-8").splitlines():
        if line.startswith("# file: "):
            if not files or files[-1][0]:
                files.append(({}, {}))
            in_meta = False
        elif line.startswith("# metadata"):
            in_meta = True
        elif line.startswith("#"):
            in_meta = False
        elif files and (m := re.fullmatch(r"(\S+)\t\(([\d, ]*)\)\ttorch\.(\w+)", line)):
            shape = [int(x) for x in m.group(2).replace(" ", "").split(",") if x]
            files[-1][0][m.group(1)] = TensorInfo(dtype=dtypes[m.group(3)], shape=shape)
        elif in_meta and " = " in line:
            key, value = line.split(" = ", 1)
            files[-1][1][key] = value
    return files


def test_real_kohya_output_predicts_nothing_against_its_model() -> None:
    files = _kohya_listing()
    assert [len(t) for t, _ in files] == [57, 849]
    for tensors, metadata in files:
        report = describe_lora(tensors, metadata)
        assert report.format == "kohya" and report.architecture == "sd3" and report.attn2_blocks == [0]
        assert report.rank == 4 and report.has_alpha
        assert predict_not_loaded(report, KOHYA_MODEL) == []
        assert report.trigger_words == ["tinyobj"]
    unet_only, with_te = (describe_lora(t, m) for t, m in files)
    assert unet_only.text_encoders == [] and not unet_only.has_text_encoder
    assert with_te.text_encoders == ["clip_l", "clip_g"]
    # On the recorded ComfyUI model (no attn2, no CLIP-G) the same file would lose those keys.
    lines = predict_not_loaded(with_te, RECORDED)
    assert sum("attn2" in line for line in lines) == 6 and sum("lora_te2_" in line for line in lines) == 576
    assert not any("lora_te1_" in line for line in lines)


def test_text_encoder_lora_on_devserver_dualclip_chunk_loses_its_text_encoder_keys() -> None:
    """DevServer's SD3.5 chunk feeds the encoders from DualCLIPLoader(clip_g, t5xxl): no CLIP-L, and with
    CLIP-L absent ComfyUI names CLIP-G keys lora_te_, so Kohya's lora_te1_/lora_te2_ keys all miss."""
    _, with_te = (describe_lora(t, m) for t, m in _kohya_listing())
    dual = ArchSpec.sd3(2, attn2_blocks=(0,), text_encoders=("clip_g", "t5xxl"))
    lines = predict_not_loaded(with_te, dual)
    assert len(lines) == 216 + 576
    assert {line.split(": ")[1][:9] for line in lines} == {"lora_te1_", "lora_te2_"}
    assert ARCHS["sd35_large_dualclip"].text_encoders == ("clip_g", "t5xxl")
    # A CLIP-G key spelled the way ComfyUI maps it without CLIP-L does load there.
    solo = describe_lora(_lora_tensors(["lora_te_text_model_encoder_layers_0_mlp_fc1"], width=1280))
    assert predict_not_loaded(solo, "sd35_large_dualclip") == []


def test_kohya_sd35_keys_on_the_big_models() -> None:
    def kohya_keys(depth: int, attn2: range) -> dict[str, TensorInfo]:
        t = {}
        for i in range(depth):
            for side in ("context", "x"):
                mods = ["attn_qkv", "attn_proj", "mlp_fc1", "mlp_fc2", "adaLN_modulation_1"]
                if side == "context" and i == depth - 1:
                    mods = ["attn_qkv", "adaLN_modulation_1"]
                if side == "x" and i in attn2:
                    mods += ["attn2_qkv", "attn2_proj"]
                for m in mods:
                    stem = f"lora_unet_joint_blocks_{i}_{side}_block_{m}"
                    t[stem + ".alpha"] = TensorInfo(dtype="BF16", shape=[])
                    t[stem + ".lora_down.weight"] = TensorInfo(dtype="BF16", shape=[16, 64 * depth])
                    t[stem + ".lora_up.weight"] = TensorInfo(dtype="BF16", shape=[64 * depth, 16])
        return t

    large = describe_lora(kohya_keys(38, range(0)))
    assert (large.architecture, large.depth, large.rank) == ("sd35_large", 38, 16)
    assert predict_not_loaded(large, "sd35_large") == []
    medium = describe_lora(kohya_keys(24, range(13)))
    assert (medium.architecture, medium.attn2_blocks) == ("sd35_medium", list(range(13)))
    assert predict_not_loaded(medium, "sd35_medium") == []
    lines = predict_not_loaded(medium, "sd3_medium")  # SD3 Medium has no attn2 blocks
    assert len(lines) == 13 * 2 * 3


def _lora_tensors(stems: list[str], rank: int = 4, width: int = 8) -> dict[str, TensorInfo]:
    t = {}
    for s in stems:
        t[f"{s}.lora_down.weight"] = TensorInfo(dtype="F16", shape=[rank, width])
        t[f"{s}.lora_up.weight"] = TensorInfo(dtype="F16", shape=[width, rank])
        t[f"{s}.alpha"] = TensorInfo(dtype="F16", shape=[])
    return t


def test_sdxl_sd15_flux_key_names_from_real_trainers() -> None:
    # Kohya SDXL names UNet layers the SGM way; SD1.5 the diffusers way; both load in ComfyUI.
    sdxl = ["lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k",
            "lora_unet_output_blocks_0_1_transformer_blocks_9_ff_net_2",
            "lora_unet_middle_block_1_transformer_blocks_9_attn1_to_out_0",
            "lora_unet_input_blocks_8_1_proj_in", "lora_unet_down_blocks_2_attentions_1_transformer_blocks_9_attn1_to_q",
            "lora_te1_text_model_encoder_layers_11_mlp_fc1", "lora_te2_text_model_encoder_layers_31_self_attn_out_proj"]
    assert predict_not_loaded(describe_lora(_lora_tensors(sdxl)), "sdxl") == []
    sd15 = ["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
            "lora_unet_up_blocks_3_attentions_2_proj_out", "lora_unet_mid_block_attentions_0_proj_in",
            "lora_unet_up_blocks_1_resnets_2_conv1", "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_v",
            "lora_te_text_model_encoder_layers_11_mlp_fc2", "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"]
    assert predict_not_loaded(describe_lora(_lora_tensors(sd15)), "sd15") == []
    flux = ["lora_unet_double_blocks_18_img_attn_qkv", "lora_unet_double_blocks_0_txt_mlp_0",
            "lora_unet_single_blocks_37_linear1", "lora_unet_single_blocks_0_modulation_lin",
            "transformer.single_transformer_blocks.3.proj_mlp", "transformer.transformer_blocks.2.attn.add_k_proj",
            "lora_te1_text_model_encoder_layers_3_mlp_fc1"]
    assert predict_not_loaded(describe_lora(_lora_tensors(flux)), "flux_dev") == []
    # Layers these models do not have: SDXL has no attention at its first level, SD1.5 has no
    # input_blocks 12, FLUX has 38 single blocks (0-37), and no model here loads CLIP-G for FLUX.
    bad = {
        "sdxl": "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q",
        "sd15": "lora_unet_input_blocks_12_1_proj_in",
        "flux_dev": "lora_unet_single_blocks_38_linear1",
    }
    for arch, stem in bad.items():
        lines = predict_not_loaded(describe_lora(_lora_tensors([stem])), arch)
        assert lines == [f"lora key not loaded: {stem}{s}" for s in (".alpha", ".lora_down.weight", ".lora_up.weight")]
    # A diffusers key whose target does not exist is "NOT LOADED", not "not loaded".
    lines = predict_not_loaded(describe_lora(_lora_tensors(["transformer.transformer_blocks.37.ff_context.net.2"])), "sd35_large")
    assert lines == ["NOT LOADED diffusion_model.joint_blocks.37.context_block.mlp.fc2.weight"]
    lines = predict_not_loaded(describe_lora(_lora_tensors(["transformer.transformer_blocks.0.attn2.to_q"])), "sd35_large")
    assert lines == ["NOT LOADED ('diffusion_model.joint_blocks.0.x_block.attn2.qkv.weight', (0, 0, 2432))"]


def test_architecture_detection_of_other_families() -> None:
    sdxl = describe_lora(_lora_tensors(["lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"], width=2048))
    assert sdxl.architecture == "sdxl"
    sd15 = describe_lora(_lora_tensors(["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"], width=768))
    assert sd15.architecture == "sd15"
    flux = describe_lora(_lora_tensors(["lora_unet_double_blocks_3_img_attn_qkv", "lora_te1_text_model_encoder_layers_0_mlp_fc1"], width=3072))
    assert (flux.architecture, flux.depth) == ("flux", 4)
    assert set(ARCHS) >= {"sd35_large", "sd35_medium", "sdxl", "sd15", "flux_dev"}
    with pytest.raises(LoraFileError, match="unknown architecture"):
        predict_not_loaded(sdxl, "sd9")


def _write(path: Path, header: dict | bytes, data: bytes = b"", *, length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def test_library_written_file_with_trigger_metadata(tmp_path: Path) -> None:
    path = tmp_path / "mine.safetensors"
    tensors = {
        "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": np.zeros((8, 128), np.float16),
        "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight": np.zeros((384, 8), np.float16),
        "lora_unet_joint_blocks_0_x_block_attn_qkv.alpha": np.array(4.0, np.float32),
    }
    meta = {
        TRIGGER_WORDS_KEY: json.dumps(["Ọmọ Yorùbá", "adire cloth"]),
        "modelspec.trigger_phrase": "adire cloth, indigo",
        "ss_tag_frequency": json.dumps({"10_yoruba textile": {"yoruba textile": 12, "indigo": 3}}),
    }
    save_file(tensors, str(path), metadata=meta)
    report = inspect_lora(path)
    assert report.trigger_words == ["Ọmọ Yorùbá", "adire cloth", "indigo", "yoruba textile"]
    assert report.rank == 8 and report.file_size == path.stat().st_size


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickle_files_are_refused_unopened(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"evil{suffix}"
    path.write_bytes(b"\x80\x04\x95cos\nsystem\n")  # would run code if unpickled
    with pytest.raises(LoraFileError, match="pickle"):
        inspect_lora(path)


def test_pickle_behind_a_safetensors_name(tmp_path: Path) -> None:
    zip_file = tmp_path / "disguised.safetensors"
    zip_file.write_bytes(b"PK\x03\x04" + b"\0" * 60)
    with pytest.raises(LoraFileError, match="zip/pickle"):
        inspect_lora(zip_file)


def test_corrupt_files_each_give_a_clear_error(tmp_path: Path) -> None:
    good = (LORAS / "tiny_sd3_kohya.safetensors").read_bytes()
    cases = {
        "truncated": (good[: len(good) // 2], "truncated|outside"),
        "empty": (b"", "too short"),
        "huge header": (struct.pack("<Q", 2**40) + b"{}", "over the"),
        "header longer than file": (struct.pack("<Q", 5000) + b"{}", "claims 5000 bytes"),
        "not json": (struct.pack("<Q", 4) + b"nope", "not valid JSON"),
        "json list": (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        "padded": (good + b"\0" * 16, "cover"),
    }
    for name, (data, pattern) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.safetensors"
        path.write_bytes(data)
        with pytest.raises(LoraFileError, match=pattern):
            inspect_lora(path)


def test_headers_that_lie(tmp_path: Path) -> None:
    data = b"\0" * 32
    lies = {
        "offsets beyond data": {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 64]}},
        "shape disagrees with bytes": {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 32]}},
        "overlap": {"a": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}, "b": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]}},
        "gap": {"a": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]}},
        "bad dtype": {"a": {"dtype": "F128", "shape": [2], "data_offsets": [0, 32]}},
        "negative dim": {"a": {"dtype": "F32", "shape": [-8], "data_offsets": [0, 32]}},
        "reversed offsets": {"a": {"dtype": "F32", "shape": [0], "data_offsets": [32, 0]}},
    }
    for name, header in lies.items():
        path = _write(tmp_path / "lie.safetensors", header, data)
        with pytest.raises(LoraFileError) as err:
            inspect_lora(path)
        assert "tensor 'a'" in str(err.value) or "tensor 'b'" in str(err.value), name


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(LoraFileError, match="no such LoRA file"):
        inspect_lora(tmp_path / "gone.safetensors")
    with pytest.raises(LoraFileError, match="folder"):
        inspect_lora(tmp_path)
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(LoraFileError, match="not a regular file"):
        inspect_lora(fifo)  # must not block waiting for a writer


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash(tmp_path_factory: pytest.TempPathFactory, blob: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "f.safetensors"
    path.write_bytes(blob)
    try:
        inspect_lora(path)
    except LoraFileError:
        pass


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=5), st.lists(st.integers(-3, 70), max_size=3),
       st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "I8", "X"]), "shape": st.lists(st.integers(-1, 4), max_size=2),
                              "data_offsets": st.lists(st.integers(-1, 70), max_size=3)})), max_size=4))
def test_random_headers_never_crash(tmp_path_factory: pytest.TempPathFactory, header: dict) -> None:
    path = _write(tmp_path_factory.mktemp("fuzz") / "h.safetensors", header, b"\0" * 64)
    try:
        inspect_lora(path)
    except LoraFileError:
        pass


@pytest.mark.parametrize("length", [0x0180, 0x0280, 0x4B50, 0x034B50])
def test_valid_files_whose_header_length_looks_like_a_pickle_or_zip(tmp_path: Path, length: int) -> None:
    # The 8-byte length prefix may start with 0x80 or "PK"; that alone must not make a file "a pickle".
    path = tmp_path / "lora.safetensors"
    tensors = {"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": np.zeros((4, 128), dtype=np.float16)}
    save_file(tensors, str(path), metadata={"pad": ""})
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    header["__metadata__"]["pad"] = "x" * (length - n)  # grow the JSON to exactly `length` bytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (length - len(raw))
    assert len(raw) == length
    path.write_bytes(struct.pack("<Q", length) + raw + blob[8 + n :])
    assert path.read_bytes()[:1] in (b"\x80", b"P")
    report = inspect_lora(path)
    assert report.rank == 4
