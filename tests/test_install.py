"""Installing a trained LoRA: checkpoint choice, header-only metadata, never overwriting, the output config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kohya_standin import fixtures as standin_fixtures
from kohya_standin.build import schemas_tree, write_safetensors

from devserver_lora.config.files import load_output_config
from devserver_lora.config.make import make_lora_output_config
from devserver_lora.config.tree import SchemasTree
from devserver_lora.config.validate import tree_problems
from devserver_lora.errors import ConfigError, JobError, LoraFileError
from devserver_lora.graph.inject import inject_loras
from devserver_lora.lora.header import read_header, tensor_bytes_equal, write_with_metadata
from devserver_lora.lora.spec import LoraSpec
from devserver_lora.train.families import get_family
from devserver_lora.train.install import install_job, pick_checkpoint, trained_on
from devserver_lora.train.kohya.backend import KohyaBackend

kohya_env = standin_fixtures.kohya_env  # the shared pytest fixture


# These jobs train on the depth-2 test checkpoint and install where ComfyUI loads that checkpoint, so each install
# says so (`against`); without it the LoRA is judged against the family's real model (test below).


@pytest.fixture
def trained(kohya_env):
    job = kohya_env.job()
    KohyaBackend(kohya_env.settings, progress_interval_s=0).run(job)
    job.set_state("done", lora_path=str(job.outputs_dir / "tiny_sd3_lora.safetensors"))
    return job


def test_header_rewrite_keeps_tensor_bytes(tmp_path):
    src = write_safetensors(tmp_path / "a.safetensors", ["x", "y"], {"ss_a": "1"})
    out = write_with_metadata(src, tmp_path / "b.safetensors", {"ss_a": "1", "devserver_lora.x": "é" * 3})
    assert tensor_bytes_equal(src, out) and read_header(out).metadata["devserver_lora.x"] == "ééé"
    assert read_header(out).data_start % 8 == 0
    again = write_with_metadata(src, tmp_path / "b.safetensors", {})
    assert again.name == "b-2.safetensors" and read_header(out).metadata  # the first copy is untouched
    (tmp_path / "cut.safetensors").write_bytes(src.read_bytes()[:-1])
    with pytest.raises(LoraFileError, match="incomplete"):
        write_with_metadata(tmp_path / "cut.safetensors", tmp_path / "c.safetensors", {})


def test_install_whole_flow_config_loads_validates_and_injects(kohya_env, trained):
    schemas = schemas_tree(kohya_env.root / "schemas")
    loras = kohya_env.root / "loras"
    result = install_job(trained, against=trained_on(trained), loras_dir=loras, schemas_dir=schemas)
    installed = loras / "tiny_sd3_lora.safetensors"
    assert result.lora_path == str(installed) and result.config_name == "sd35_large_tiny_sd3_lora"
    assert tensor_bytes_equal(installed, trained.outputs_dir / "tiny_sd3_lora.safetensors")
    meta = read_header(installed).metadata
    assert json.loads(meta["devserver_lora.trigger_words"]) == ["tinyobj"]
    assert json.loads(meta["devserver_lora.card"])["licence"] == "CC0-1.0"
    assert json.loads(meta["devserver_lora.plan"])["output_name"] == "tiny_sd3_lora"
    assert meta["modelspec.trigger_phrase"] == "tinyobj" and meta["modelspec.license"] == "CC0-1.0"
    assert meta["ss_network_dim"] == "4"  # the trainer's own ss_* entries are kept
    assert (installed.stat().st_mode & 0o777) == 0o644
    # the config: both spellings, valid, resolvable, and it injects a LoRA loader for our file
    path = schemas / "configs" / "output" / "sd35_large_tiny_sd3_lora.json"
    raw = json.loads(path.read_text())
    top = raw["lora"] if isinstance(raw["lora"], list) else [raw["lora"]]
    assert top[0]["name"] == "tiny_sd3_lora.safetensors"
    assert raw["parameters"]["loras"][0]["name"] == "tiny_sd3_lora.safetensors"
    assert raw["parameters"]["OUTPUT_CHUNK"] == "output_image_sd35_large"
    cfg = load_output_config(path)
    assert [s.name for s in cfg.loras] == ["tiny_sd3_lora.safetensors"] and cfg.loras[0].trigger_words == ("tinyobj",)
    assert [p for p in tree_problems([schemas]) if p.severity == "error"] == []
    resolved = SchemasTree.load(schemas).resolve("sd35_large_tiny_sd3_lora")
    graph = inject_loras(resolved.chunk.workflow, resolved.loras)
    loaders = [n for n in graph.values() if n["class_type"].startswith("LoraLoader")]
    assert [n["inputs"]["lora_name"] for n in loaders] == ["tiny_sd3_lora.safetensors"]
    assert json.loads((trained.dir / "install.json").read_text())["config_path"] == str(path)


def test_install_never_overwrites(kohya_env, trained):
    schemas = schemas_tree(kohya_env.root / "schemas")
    loras = kohya_env.root / "loras"
    first = install_job(trained, against=trained_on(trained), loras_dir=loras, schemas_dir=schemas)
    with pytest.raises(ConfigError, match="already exists"):
        install_job(trained, against=trained_on(trained), loras_dir=loras, schemas_dir=schemas)
    second = install_job(trained, against=trained_on(trained), loras_dir=loras, schemas_dir=schemas, config_name="sd35_large_tiny_again")
    assert second.lora_name == "tiny_sd3_lora-2.safetensors" and first.lora_name == "tiny_sd3_lora.safetensors"
    again = load_output_config(schemas / "configs/output/sd35_large_tiny_again.json")
    assert [s.name for s in again.loras] == ["tiny_sd3_lora-2.safetensors"]


def test_unsafe_config_names_are_refused_with_a_suggestion(kohya_env, trained):
    schemas = schemas_tree(kohya_env.root / "schemas")
    for bad, marker in (("sd35_large_faces", "ace"), ("sd35_large_music_room", "music")):
        with pytest.raises(ConfigError, match=marker) as exc:
            install_job(trained, against=trained_on(trained), loras_dir=kohya_env.root / "loras", schemas_dir=schemas, config_name=bad)
        assert "--config-name" in exc.value.hint
    with pytest.raises(Exception, match="not allowed"):
        install_job(trained, against=trained_on(trained), loras_dir=kohya_env.root / "loras", schemas_dir=schemas, config_name="../x")
    assert not (kohya_env.root / "loras").exists()  # refused before anything was copied


def test_epoch_choice_and_unfinished_jobs(kohya_env, trained):
    assert pick_checkpoint(trained, 1).name == "tiny_sd3_lora-000001.safetensors"
    assert pick_checkpoint(trained, 2).name == "tiny_sd3_lora.safetensors"  # the last epoch is the final file
    with pytest.raises(JobError, match="epoch 7"):
        pick_checkpoint(trained, 7)
    result = install_job(trained, against=trained_on(trained), loras_dir=kohya_env.root / "loras", schemas_dir=None, epoch=1)
    assert result.lora_name == "tiny_sd3_lora-000001.safetensors" and result.config_path is None
    assert any("--schemas" in w for w in result.warnings)
    step = install_job(trained, against=trained_on(trained), loras_dir=kohya_env.root / "loras", schemas_dir=None,
                       checkpoint="tiny_sd3_lora-step00000002.safetensors")
    assert step.lora_name == "tiny_sd3_lora-step00000002.safetensors"
    with pytest.raises(Exception, match="not allowed"):
        pick_checkpoint(trained, checkpoint="../../etc/passwd")
    with pytest.raises(JobError, match="no checkpoint"):
        pick_checkpoint(trained, checkpoint="nope.safetensors")
    fresh = kohya_env.job("not_trained")
    with pytest.raises(JobError, match="no final LoRA"):
        pick_checkpoint(fresh)


def test_keys_that_would_not_load_are_refused(kohya_env, trained):
    final = trained.outputs_dir / "tiny_sd3_lora.safetensors"
    header = read_header(final)
    end = header.file_size - header.data_start
    bad = {n: {"dtype": t.dtype, "shape": t.shape, "data_offsets": list(header.offsets[n])}
           for n, t in header.tensors.items()}
    # an SD3.5 Medium key: Large has no attn2, so ComfyUI would log "lora key not loaded"
    bad["lora_unet_joint_blocks_0_x_block_attn2_qkv.lora_down.weight"] = {
        "dtype": "BF16", "shape": [4, 128], "data_offsets": [end, end + 1024]}
    body = final.read_bytes()[header.data_start:]
    final.unlink()
    raw = json.dumps({"__metadata__": header.metadata, **bad}).encode()
    raw += b" " * (-len(raw) % 8)
    import struct

    final.write_bytes(struct.pack("<Q", len(raw)) + raw + body + bytes(1024))
    with pytest.raises(LoraFileError, match="does not fit the model .*ComfyUI would skip 1 of its keys"):
        install_job(trained, against=trained_on(trained), loras_dir=kohya_env.root / "loras", schemas_dir=None)
    assert not (kohya_env.root / "loras").exists()


def test_rewritten_headers_of_every_length_read_back(tmp_path):
    """Header lengths whose first byte is 0x80 or "PK" must still read as safetensors, not as pickles."""
    src = write_safetensors(tmp_path / "a.safetensors", ["x"])
    firsts = set()
    for n in range(0, 300, 3):
        out = write_with_metadata(src, tmp_path / f"o{n}.safetensors", {"k": "v" * n})
        firsts.add(out.read_bytes()[:1])
        again = read_header(out)
        assert again.metadata["k"] == "v" * n and again.tensors
        assert tensor_bytes_equal(src, out)
    assert b"\x80" in firsts


def test_text_encoder_lora_gets_the_triple_clip_chunk(kohya_env):
    # The DevServer SD3.5 chunk loads only CLIP-G + T5 (DualCLIPLoader): a LoRA's lora_te1_/lora_te2_
    # keys would be dropped there, so such a LoRA's config must render through all three encoders.
    job = kohya_env.job(output_name="te_lora", train_text_encoder=True)
    KohyaBackend(kohya_env.settings, progress_interval_s=0).run(job)
    job.set_state("done")
    schemas = schemas_tree(kohya_env.root / "schemas")
    assert not (schemas / "chunks" / "output_image_sd35_large_triple_clip.json").exists()
    result = install_job(job, against=trained_on(job), loras_dir=kohya_env.root / "loras", schemas_dir=schemas)
    raw = json.loads((schemas / "configs" / "output" / f"{result.config_name}.json").read_text())
    assert raw["parameters"]["OUTPUT_CHUNK"] == "output_image_sd35_large_triple_clip"
    assert any("text encoders" in w for w in result.warnings)
    resolved = SchemasTree.load(schemas).resolve(result.config_name)
    graph = inject_loras(resolved.chunk.workflow, resolved.loras)
    (loader,) = [n for n in graph.values() if n["class_type"] == "LoraLoader"]
    assert graph[loader["inputs"]["clip"][0]]["class_type"] == "TripleCLIPLoader"
    assert [p for p in tree_problems([schemas]) if p.severity == "error"] == []


def _words(value: object) -> set[str]:
    """Every word of every text VALUE in a config (names, descriptions, tags, provenance, LoRAs); keys are shape."""
    import re

    if isinstance(value, dict):
        return set().union(*(_words(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_words(v) for v in value)) if value else set()
    return {w.casefold() for w in re.findall(r"[^\W\d_]{3,}", value)} if isinstance(value, str) else set()


def test_each_config_is_written_from_its_own_card_and_nothing_else(kohya_env, tmp_path):
    """Two students, two LoRAs: neither config carries a word of the other's card, trigger or file."""
    from kohya_standin.build import make_dataset, make_job

    cards = {
        "adire": {"title": "Adire aṣọ láti Abẹ́òkúta", "description": "Àwọn aṣọ adire tí a fi indigo ṣe",
                  "source": "fọ́tò ara wa", "rights_holder": "Kíláàsì Ọ̀gbẹ́ni Adébáyọ̀", "licence": "CC-BY-4.0",
                  "consent": "not_applicable", "cultural_context": "aṣọ ìbílẹ̀ Yorùbá",
                  "approved_by": "ìgbìmọ̀ àwọn òbí", "language": "yo", "tags": ["aṣọ", "àwọ̀"]},
        "ruhr": {"title": "Zechen im Ruhrgebiet", "description": "Fördertürme und Halden, fotografiert von der 9b",
                 "source": "eigene Fotos der Klasse", "rights_holder": "Gesamtschule Bochum", "licence": "eigene Werke",
                 "consent": "yes", "cultural_context": "Industriekultur nach dem Bergbau",
                 "approved_by": "Fachschaft Kunst", "language": "de", "tags": ["Förderturm", "Halde"]},
    }
    schemas = schemas_tree(kohya_env.root / "schemas")
    configs = {}
    for trigger, card in cards.items():
        dataset = make_dataset(tmp_path / f"ds_{trigger}", trigger=trigger)
        (dataset / "card.json").write_text(json.dumps(card), encoding="utf-8")
        job = make_job(kohya_env.jobs_dir, dataset, output_name=f"{trigger}_lora",
                       overrides={"max_train_steps": 2, "save_every_n_steps": 2, "repeats": 1, "batch_size": 1})
        KohyaBackend(kohya_env.settings, progress_interval_s=0).run(job)
        job.set_state("done")
        result = install_job(job, against=trained_on(job), loras_dir=kohya_env.root / "loras", schemas_dir=schemas)
        assert not any("language" in w for w in result.warnings)
        configs[trigger] = json.loads(Path(result.config_path).read_text(encoding="utf-8"))
    adire, ruhr = configs["adire"], configs["ruhr"]
    # Each config shows its own card, under the card's language only.
    assert adire["description"]["yo"] == cards["adire"]["description"] and "yo" not in adire["name"]
    assert ruhr["description"]["de"] == cards["ruhr"]["description"]
    assert cards["ruhr"]["description"] not in json.dumps(ruhr["description"]["en"], ensure_ascii=False)
    assert adire["tags"]["yo"] == ["aṣọ", "àwọ̀"] and "aṣọ" not in adire["tags"]["en"] + adire["tags"]["de"]
    assert adire["meta"]["provenance"]["rights_holder"] == cards["adire"]["rights_holder"]
    assert ruhr["meta"]["provenance"]["consent"] == "yes" and ruhr["lora"]["trigger_words"] == ["ruhr"]
    assert adire["parameters"]["loras"][0]["name"] == "adire_lora.safetensors"
    # Nothing of one reaches the other (the template's own words are the only words they share).
    template = _words(make_lora_output_config(
        "sd35_large_x", [LoraSpec(name="x.safetensors")], title="x", model_label=get_family("sd35_large").label,
        base_model=adire["meta"]["base_model"], output_chunk=adire["parameters"]["OUTPUT_CHUNK"],
        provenance={"trained_on": adire["meta"]["base_model"]}).to_json_dict())
    own_adire = _words(adire) - template
    own_ruhr = _words(ruhr) - template
    assert own_adire and own_ruhr and not own_adire & own_ruhr, own_adire & own_ruhr
    assert "ruhr" not in _words(adire) and "adire" not in _words(ruhr)
    assert not {"yoruba", "heritage", "🪘"} & (_words(adire) | _words(ruhr))
    assert "🪘" not in json.dumps(adire, ensure_ascii=False) + json.dumps(ruhr, ensure_ascii=False)


def _wide_lora(path: Path) -> Path:
    """A LoRA of a depth-2 SD3 model (128 wide), written by the safetensors library with sd-scripts' key names."""
    import torch
    from safetensors.torch import save_file

    tensors = {}
    for block in range(2):
        stem = f"lora_unet_joint_blocks_{block}_x_block_attn_qkv"
        tensors[f"{stem}.lora_down.weight"] = torch.zeros(4, 128)
        tensors[f"{stem}.lora_up.weight"] = torch.zeros(3 * 128, 4)
        tensors[f"{stem}.alpha"] = torch.tensor(4.0)
    save_file(tensors, str(path), metadata={"ss_network_dim": "4"})
    return path


def test_install_runs_the_full_fit_check_for_the_family_model(kohya_env):
    # issue 12 item 5: a 128-wide LoRA trained on a test-sized checkpoint for an SD3.5 Medium job went into the
    # loras folder (install judged it against what it was trained on); inspect-lora --against sd35_medium refuses it.
    from kohya_standin.build import make_job

    from devserver_lora.cli import main as cli_main
    from devserver_lora.lora.fit import fit_problems
    from devserver_lora.train.cli import main as train_main

    job = make_job(kohya_env.jobs_dir, kohya_env.dataset_dir, family="sd35_medium", output_name="wide",
                   overrides={"max_train_steps": 4})
    lora = _wide_lora(job.outputs_dir / "wide.safetensors")
    job.set_state("done", lora_path=str(lora), base_arch="sd3:2:te=clip_l,clip_g,t5xxl")  # as the backend records
    loras = kohya_env.root / "loras"
    with pytest.raises(LoraFileError) as exc:
        install_job(job, loras_dir=loras, schemas_dir=None)
    expected = [p.message for p in fit_problems(lora, "sd35_medium")]
    assert expected and all(m in exc.value.message for m in expected)  # the same check as inspect-lora's
    assert "128 wide but sd35_medium has 1536" in exc.value.message
    assert f"install {job.id} --against sd3:2:te=clip_l,clip_g,t5xxl" in exc.value.hint
    assert not loras.exists()  # refused before anything was copied
    assert cli_main(["inspect-lora", str(lora), "--against", "sd35_medium"]) != 0
    common = ["--jobs-dir", str(kohya_env.jobs_dir)]
    assert train_main(["install", job.id, "--loras-dir", str(loras), *common]) != 0
    assert not loras.exists()
    # told which model the ComfyUI loads, the same check passes and the file is installed
    assert train_main(["install", job.id, "--loras-dir", str(loras), "--against", "sd3:2:te=clip_l,clip_g,t5xxl",
                       *common]) == 0
    assert (loras / "wide.safetensors").is_file()
