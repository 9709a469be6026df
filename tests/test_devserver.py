"""DevServer wiring: our injector inside a stand-in BackendRouter, and the Stage-4 runner against the double."""

from __future__ import annotations

import copy
import json
import random
import shutil
from pathlib import Path

import pytest
from comfy_double import ComfyDouble
from conftest import COMFY_FIXTURES, SCHEMAS

from devserver_lora.devserver.hook import install_into_devserver
from devserver_lora.devserver.injector import to_specs, triggers_in
from devserver_lora.devserver.stage4 import Stage4Runner, apply_input_mappings
from devserver_lora.errors import ComfyValidationError, ConfigError, DevserverLoraError, WorkflowError

LORA_TRIGGERS = [{"name": "global_fallback.safetensors", "strength": 1.0}]  # DevServer's global default list


class StandInBackendRouter:
    """A minimal stand-in for DevServer's BackendRouter (DESIGN.md section 1), written for these tests.

    Same method names and arguments as devserver/schemas/engine/backend_router.py:
    `_inject_lora_nodes(self, workflow, loras) -> workflow`,
    `_apply_input_mappings(self, workflow, mappings, input_data) -> (workflow, seed)`, and the order
    `_process_workflow_chunk` calls them in (LoRAs from parameters['loras'] or the global list, then mappings).
    """

    def _inject_lora_nodes(self, workflow: dict, loras: list) -> dict:
        # Upstream behaviour: first checkpoint, CLIP from the DualCLIPLoader, ONE strength, only MODEL rewired.
        workflow = copy.deepcopy(workflow)
        ckpt = next(k for k, n in workflow.items() if n.get("class_type") == "CheckpointLoaderSimple")
        clip = next(([k, 0] for k, n in workflow.items() if n.get("class_type") == "DualCLIPLoader"), [ckpt, 1])
        consumers = [k for k, n in workflow.items() if n.get("inputs", {}).get("model") == [ckpt, 0]]
        next_id = max(int(k) for k in workflow if k.isdigit()) + 1
        model = [ckpt, 0]
        for i, lora in enumerate(loras):
            nid = str(next_id + i)
            workflow[nid] = {
                "class_type": "LoraLoader",
                "inputs": {
                    "lora_name": lora["name"],
                    "strength_model": lora.get("strength", 1.0),
                    "strength_clip": lora.get("strength", 1.0),
                    "model": model,
                    "clip": clip,
                },
            }
            model, clip = [nid, 0], [nid, 1]
        for c in consumers:
            workflow[c]["inputs"]["model"] = model
        return workflow

    def _apply_input_mappings(self, workflow: dict, mappings: dict, input_data: dict):
        seed = None
        for key, mapping in mappings.items():
            targets = mapping if isinstance(mapping, list) else [mapping]
            value = input_data.get(key)
            if value is None:
                value = targets[0].get("default")
            if value is None and targets[0].get("source") == "{{PREVIOUS_OUTPUT}}":
                value = input_data.get("prompt", "")
            if key == "seed":
                if value == "random":
                    value = random.randint(0, 2**32 - 1)
                seed = value
            if value is not None:
                for t in targets:
                    parts = t["field"].split(".")
                    holder = workflow.setdefault(t["node_id"], {})
                    for p in parts[:-1]:
                        holder = holder.setdefault(p, {})
                    holder[parts[-1]] = value
        return workflow, seed

    def process_workflow_chunk(self, prompt: str, parameters: dict, chunk: dict):
        workflow = copy.deepcopy(chunk["workflow"])
        loras = parameters.get("loras", LORA_TRIGGERS)
        if loras:
            workflow = self._inject_lora_nodes(workflow, loras)
        input_data = {"prompt": prompt, **parameters}
        return self._apply_input_mappings(workflow, chunk.get("input_mappings", {}), input_data)


def chunk() -> dict:
    return json.loads((SCHEMAS / "chunks" / "output_image_sd35_large.json").read_text())


def yoruba_parameters() -> dict:
    return json.loads((SCHEMAS / "configs" / "output" / "sd35_large_yoruba.json").read_text())["parameters"]


@pytest.fixture
def router_cls():
    # A fresh subclass per test, so patching one test's class never leaks into another.
    return type("Router", (StandInBackendRouter,), {})


def _loras_dir(tmp_path: Path, *names: str) -> Path:
    d = tmp_path / "loras"
    d.mkdir()
    for name in names:
        shutil.copyfile(COMFY_FIXTURES / "loras" / "tiny_sd3_kohya.safetensors", d / name)
    return d


def test_upstream_injector_leaves_text_encoders_on_the_old_clip(router_cls) -> None:
    wf, _ = router_cls().process_workflow_chunk("a cloth", yoruba_parameters(), chunk())
    # The defect we fix: CLIPTextEncode still reads the DualCLIPLoader, so strength_clip does nothing.
    assert wf["1"]["inputs"]["clip"] == ["9", 0]


def test_installed_injector_rewires_clip_and_merges_trigger(router_cls, tmp_path: Path) -> None:
    install_into_devserver(router_cls, schemas_dir=SCHEMAS, loras_dir=_loras_dir(tmp_path, "yorubaheritage_sd35.safetensors"))
    wf, _ = router_cls().process_workflow_chunk("indigo cloth at a market", yoruba_parameters(), chunk())
    loaders = {k: n for k, n in wf.items() if n["class_type"] in ("LoraLoader", "LoraLoaderModelOnly")}
    assert len(loaders) == 1
    (lid, lora), = loaders.items()
    assert lora["inputs"]["lora_name"] == "yorubaheritage_sd35.safetensors"
    assert (lora["inputs"]["strength_model"], lora["inputs"]["strength_clip"]) == (0.85, 0.85)
    assert lora["inputs"]["clip"] == ["9", 0] and lora["inputs"]["model"] == ["5", 0]
    assert wf["1"]["inputs"]["clip"] == [lid, 1] and wf["6"]["inputs"]["clip"] == [lid, 1]
    assert wf["8"]["inputs"]["model"] == [lid, 0]
    assert wf["10"]["inputs"]["value"] == "yoruba heritage, indigo cloth at a market"


def test_trigger_already_written_by_the_llm_is_not_repeated(router_cls) -> None:
    install_into_devserver(router_cls, schemas_dir=SCHEMAS)
    prompt = "Yoruba Heritage textiles, adire"
    wf, _ = router_cls().process_workflow_chunk(prompt, yoruba_parameters(), chunk())
    assert wf["10"]["inputs"]["value"] == prompt


def test_separate_model_and_clip_strengths_and_idempotence(router_cls) -> None:
    injector = install_into_devserver(router_cls, schemas_dir=SCHEMAS)
    params = {"loras": [{"name": "a.safetensors", "strength_model": 0.9, "strength_clip": 0.3}]}
    wf, _ = router_cls().process_workflow_chunk("x", params, chunk())
    lora = next(n for n in wf.values() if n["class_type"] == "LoraLoader")
    assert (lora["inputs"]["strength_model"], lora["inputs"]["strength_clip"]) == (0.9, 0.3)
    again = injector(wf, params["loras"])  # injecting the same spec again adds no second chain
    assert sum(n["class_type"] == "LoraLoader" for n in again.values()) == 1


def test_install_on_one_instance_only(router_cls) -> None:
    patched, plain = router_cls(), router_cls()
    install_into_devserver(patched, schemas_dir=SCHEMAS)
    params = {"loras": [{"name": "a.safetensors", "strength": 0.5}]}
    wf_patched, _ = patched.process_workflow_chunk("x", params, chunk())
    wf_plain, _ = plain.process_workflow_chunk("x", params, chunk())
    lid = next(k for k, n in wf_patched.items() if n["class_type"] == "LoraLoader")
    assert wf_patched["1"]["inputs"]["clip"] == [lid, 1]
    assert wf_plain["1"]["inputs"]["clip"] == ["9", 0]


def test_missing_lora_refused_from_object_info(router_cls) -> None:
    info = json.loads((COMFY_FIXTURES / "object_info.json").read_text())
    install_into_devserver(router_cls, schemas_dir=SCHEMAS, object_info=info)
    with pytest.raises(ComfyValidationError) as exc:
        router_cls().process_workflow_chunk("x", yoruba_parameters(), chunk())
    assert "LoRA 'yorubaheritage_sd35.safetensors' is not installed in ComfyUI; installed: tiny_sd3_bad_keys" in str(exc.value)


def test_bad_lora_items_and_bad_router() -> None:
    with pytest.raises(WorkflowError, match="LoRA #1 .* is invalid"):
        to_specs([{"name": "../../etc/passwd.safetensors", "strength": 1}])
    with pytest.raises(WorkflowError):
        to_specs([{"name": "a.safetensors", "weight": 1}])
    assert [s.name for s in to_specs([{"name": "a.safetensors"}, {"name": "a.safetensors", "strength": 2}])] == ["a.safetensors"]
    with pytest.raises(DevserverLoraError, match="not DevServer's BackendRouter"):
        install_into_devserver(object(), schemas_dir=SCHEMAS)


def test_apply_input_mappings_like_devserver() -> None:
    from devserver_lora.config.files import parse_output_chunk

    data = chunk()
    del data["input_mappings"]["negative_prompt"]  # node 11 is the second prompt target here
    data["input_mappings"]["prompt"] = [
        {"node_id": "10", "field": "inputs.value", "source": "{{PREVIOUS_OUTPUT}}"},
        {"node_id": "11", "field": "inputs.value"},
    ]
    c = parse_output_chunk(data)
    wf = copy.deepcopy(c.workflow)
    seed = apply_input_mappings(wf, c, {"prompt": "p", "width": "64", "cfg": "4.5", "seed": "random"}, rng=random.Random(1))
    assert wf["10"]["inputs"]["value"] == wf["11"]["inputs"]["value"] == "p"  # list of targets
    assert wf["3"]["inputs"]["width"] == 64 and wf["8"]["inputs"]["cfg"] == 4.5
    assert wf["8"]["inputs"]["seed"] == seed and 0 <= seed < 2**32
    assert wf["3"]["inputs"]["height"] == 1024  # default from the mapping
    with pytest.raises(ConfigError, match="'width': 'wide' is not a number"):
        apply_input_mappings(copy.deepcopy(c.workflow), c, {"width": "wide"})
    with pytest.raises(ConfigError, match="whole number"):
        apply_input_mappings(copy.deepcopy(c.workflow), c, {"steps": "2.5"})


@pytest.fixture
def sd35_double():
    models = {
        "checkpoints": ["OfficialStableDiffusion/sd3.5_large.safetensors"],
        "text_encoders": ["clip_g.safetensors", "clip_l.safetensors", "t5xxl_enconly.safetensors"],
        "loras": ["yorubaheritage_sd35.safetensors", "other.safetensors"],
    }
    with ComfyDouble(models=models) as d:
        yield d


SMALL = {"WIDTH": "64", "HEIGHT": "64", "STEPS": "2"}


def test_stage4_runner_renders_yoruba_config(sd35_double: ComfyDouble) -> None:
    runner = Stage4Runner(SCHEMAS, sd35_double.url)
    result = runner.run("sd35_large_yoruba", "a market in Ibadan", seed=7, overrides=SMALL)
    assert result.images and result.images[0][:4] == b"\x89PNG"
    assert result.seed == 7 and [s.name for s in result.loras] == ["yorubaheritage_sd35.safetensors"]
    assert result.prompt == "yoruba heritage, a market in Ibadan"
    sent = sd35_double.submissions[-1]
    assert sent["prompt_id"] == result.prompt_id
    wf = sent["prompt"]
    assert wf["3"]["inputs"]["width"] == 64 and wf["8"]["inputs"]["steps"] == 2 and wf["8"]["inputs"]["seed"] == 7
    assert wf["10"]["inputs"]["value"] == "yoruba heritage, a market in Ibadan"
    assert triggers_in(wf) == ["yoruba heritage"]
    assert sum(n["class_type"] == "LoraLoader" for n in wf.values()) == 1


async def test_stage4_random_seed_and_extra_loras_from_interception(sd35_double: ComfyDouble) -> None:
    runner = Stage4Runner(SCHEMAS, sd35_double.url)
    extra = {"loras": [{"name": "other.safetensors", "strength": 0.4}], **SMALL}
    result = await runner.arun("sd35_large_yoruba", "x", overrides=extra)
    assert isinstance(result.seed, int) and 0 <= result.seed < 2**32
    assert [s.name for s in result.loras] == ["yorubaheritage_sd35.safetensors", "other.safetensors"]
    wf = sd35_double.submissions[-1]["prompt"]
    assert wf["8"]["inputs"]["seed"] == result.seed
    assert sum(n["class_type"] == "LoraLoader" for n in wf.values()) == 2


async def test_stage4_sync_run_from_inside_an_event_loop(sd35_double: ComfyDouble) -> None:
    # DevServer's Stage 4 is async: the blocking facade must not deadlock when called from a running loop.
    result = Stage4Runner(SCHEMAS, sd35_double.url).run("sd35_large_yoruba", "y", seed=1, overrides=SMALL)
    assert result.images


def test_stage4_missing_lora_on_server(sd35_double: ComfyDouble) -> None:
    sd35_double.models["loras"] = ["other.safetensors"]
    with pytest.raises(ComfyValidationError, match="yorubaheritage_sd35.safetensors' is not installed"):
        Stage4Runner(SCHEMAS, sd35_double.url).run("sd35_large_yoruba", "x", overrides=SMALL)
    assert not sd35_double.submissions


def test_stage4_refuses_the_diffusers_chunk(tmp_path: Path) -> None:
    schemas = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, schemas)
    cfg = json.loads((schemas / "configs" / "output" / "sd35_large_yoruba.json").read_text())
    cfg["parameters"]["OUTPUT_CHUNK"] = "output_image_sd35_diffusers"
    (schemas / "configs" / "output" / "sd35_diffusers_lora.json").write_text(json.dumps(cfg))
    diff = chunk()
    diff.update(name="output_image_sd35_diffusers", backend_type="diffusers")
    (schemas / "chunks" / "output_image_sd35_diffusers.json").write_text(json.dumps(diff))
    with pytest.raises(ConfigError, match="ignores LoRAs"):
        Stage4Runner(schemas, "http://127.0.0.1:9").prepare("sd35_diffusers_lora", "x")


def test_installed_injector_refuses_a_lora_that_would_not_load(router_cls, tmp_path: Path) -> None:
    from devserver_lora.errors import LoraFileError

    loras = tmp_path / "loras"
    loras.mkdir()
    bad = COMFY_FIXTURES / "loras" / "tiny_sd3_bad_keys.safetensors"
    shutil.copyfile(bad, loras / "yorubaheritage_sd35.safetensors")
    install_into_devserver(router_cls, schemas_dir=SCHEMAS, loras_dir=loras, arch="sd3:2:te=clip_l")
    with pytest.raises(LoraFileError, match="does not fit the model sd3:2:te=clip_g,t5xxl: ComfyUI would skip 10 of its keys"):
        router_cls().process_workflow_chunk("x", yoruba_parameters(), chunk())


def test_install_checks_only_lora_configs(router_cls, tmp_path: Path) -> None:
    from devserver_lora.devserver.hook import check_lora_configs

    schemas = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, schemas)
    out = schemas / "configs" / "output"
    (out / "acestep_music.json").write_text(json.dumps({"whatever": "DevServer's own shape"}))
    assert check_lora_configs(schemas) == ["sd35_large_yoruba"]
    broken = json.loads((out / "sd35_large_yoruba.json").read_text())
    broken["lora"]["strength_model"] = 500
    (out / "broken_lora.json").write_text(json.dumps(broken))
    with pytest.raises(ConfigError) as info:
        install_into_devserver(router_cls, schemas_dir=schemas)
    assert "broken_lora.json" in str(info.value)
