"""Contract tests against the real DevServer (opt-in): `DEVSERVER_DIR=<checkout at conftest.DEVSERVER_COMMIT>
.venv/bin/python -m pytest -m devserver`.

DevServer's own code runs here: its `create_app()` with the README's snippet in it, its Stage-4 generation route
(`POST /api/schema/pipeline/generation`), its config loader, chunk builder, pipeline executor and BackendRouter. What
it submits to SwarmUI is captured by a stand-in on 127.0.0.1 (tests/devserver_harness.py); the last test sends it
on to the real ComfyUI test server instead and compares the images DevServer returns.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SCHEMAS, devserver_checkout
from devserver_harness import (
    SwarmStandIn,
    devserver_env,
    devserver_python,
    readme_mount_snippet,
    readme_snippet,
    running_devserver,
    start_and_wait_for_exit,
    user_settings,
    working_copy,
    write_json,
)
from devserver_tree import tiny_sd3_chunk
from lora_files import zero_lora
from PIL import Image

from devserver_lora.cli import main
from devserver_lora.config.make import make_lora_output_config
from devserver_lora.devserver.doctor import run_doctor
from devserver_lora.lora.report import ARCH_KEY, inspect_lora
from devserver_lora.lora.spec import LoraSpec

pytestmark = [pytest.mark.devserver, pytest.mark.slow]
GENERATION = "/api/schema/pipeline/generation"
COOKED = "sd3.5-large_cooked_negatives-000004.safetensors"  # the LoRA DevServer's cooked_negatives names
ADIRE = "adire_sd35.safetensors"


@pytest.fixture(scope="module")
def checkout() -> Path:
    return devserver_checkout()


@pytest.fixture(scope="module")
def python(checkout: Path) -> Path:
    return devserver_python(checkout)


def _config(folder: Path, name: str, loras: list[LoraSpec] | None = None) -> None:
    """Our JSON as `train install` writes it (the template), with `loras`, or none: a plain ComfyUI config."""
    cfg = make_lora_output_config(name, loras or [LoraSpec(name="none.safetensors")], title=name).to_json_dict()
    if not loras:
        cfg.pop("lora")
        cfg["parameters"].pop("loras")
    write_json(folder / f"{name}.json", cfg)


@pytest.fixture(scope="module")
def app(checkout: Path, python: Path, tmp_path_factory: pytest.TempPathFactory):
    """DevServer with the plugin, its LoRA configs and LoRA files, rendering into the recording stand-in."""
    root = working_copy(checkout, tmp_path_factory.mktemp("devserver"), snippet=readme_snippet(),
                        mount_snippet=readme_mount_snippet())
    out = root / "devserver" / "schemas" / "configs" / "output"
    loras = root / "ai_tools" / "SwarmUI" / "Models" / "loras"
    loras.mkdir(parents=True)
    zero_lora(loras / ADIRE, trigger_words=["adire"], arch="sd35_large")
    zero_lora(loras / "misfit.safetensors", width=128)  # an SD3 LoRA of another size: its weights would not load
    zero_lora(loras / COOKED)
    zero_lora(loras / "noted.safetensors")
    # Our JSON, as `train install` writes it, rendering through DevServer's OWN output_image_sd35_large.
    _config(out, "sd35_large_adire", [LoraSpec(name=ADIRE, strength_model=0.85, strength_clip=0.5)])
    _config(out, "sd35_large_misfit", [LoraSpec(name="misfit.safetensors")])
    _config(out, "sd35_comfy_plain")
    write_json(root / "devserver/schemas/configs/interception/lora_notes.json", {
        "pipeline": "text_transformation", "name": {"en": "Notes", "de": "Notizen"}, "context": "Keep the prompt.",
        "meta": {"stage": "interception", "loras": [{"name": "noted.safetensors", "strength": 0.6,
                                                     "note": "a key DevServer does not read"}]}})
    comfy = root / "comfy"
    with SwarmStandIn(output_dir=comfy / "output") as swarm:
        user_settings(root, swarm.port)
        env = devserver_env(root, loras_dir=loras, comfyui_dir=comfy, swarm_url=swarm.url)
        with running_devserver(root, python, env) as running:
            running.swarm = swarm  # type: ignore[attr-defined]
            yield running


def _generate(app, config: str, prompt: str, **extra: object) -> tuple[int, dict, dict | None]:
    """POST DevServer's Stage-4 route; returns (status, answer, the graph it submitted or None)."""
    before = len(app.swarm.submissions)
    status, answer = app.post(GENERATION, {"prompt": prompt, "output_config": config, **extra})
    sent = app.swarm.submissions[before:]
    assert len(sent) <= 1, "one render must submit one graph"
    return status, answer, (sent[0]["prompt"] if sent else None)


def _loras(graph: dict) -> dict[str, dict]:
    return {k: n for k, n in graph.items() if "lora" in n["class_type"].lower()}


# ----------------------------------------------------------------------------- the tree and the doctor
def test_validate_reads_devservers_whole_tree(checkout: Path, capsys) -> None:
    assert main(["validate", str(checkout / "devserver" / "schemas"), str(SCHEMAS)]) == 0
    text = capsys.readouterr().out
    assert "0 error(s)" in text and "judged" in text and "output configs without LoRAs" in text
    assert main(["validate", str(checkout / "devserver" / "schemas"), str(SCHEMAS), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["judged"] >= 3 and report["skipped"]["pipelines"] >= 10 and report["checked"] > 100


def test_offline_commands_read_devservers_tree_and_use_its_own_chunk(checkout: Path, tmp_path: Path, capsys) -> None:
    schemas = tmp_path / "schemas"
    shutil.copytree(checkout / "devserver" / "schemas", schemas, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(SCHEMAS / "configs/output/sd35_large_yoruba.json", schemas / "configs/output/sd35_large_yoruba.json")
    assert main(["show-config", "sd35_large_yoruba", "--schemas", str(schemas), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["chunk_origin"] == str(schemas / "chunks" / "output_image_sd35_large.json")  # DevServer's, not ours
    assert main(["show-config", "qwen", "--schemas", str(schemas)]) == 0  # DevServer's own configs resolve too
    capsys.readouterr()
    assert main(["inject", "--config", "sd35_large_yoruba", "--prompt", "a market", "--schemas", str(schemas)]) == 0
    graph = json.loads(capsys.readouterr().out)
    devservers = json.loads((schemas / "chunks" / "output_image_sd35_large.json").read_text(encoding="utf-8"))
    assert set(devservers["workflow"]) < set(graph)  # DevServer's graph, plus our loader
    (lora,) = _loras(graph).values()
    assert graph[lora["inputs"]["clip"][0]]["class_type"] == "DualCLIPLoader"
    loras = tmp_path / "loras"
    loras.mkdir()
    zero_lora(loras / "yorubaheritage_sd35.safetensors")
    from devserver_lora.devserver.stage4 import Stage4Runner

    runner = Stage4Runner(schemas, None, loras_dir=loras)
    assert runner.tree.errors() == [] and len(runner.tree.skipped) > 50
    workflow, seed, specs, prompt, _ = runner.prepare("sd35_large_yoruba", "a market")
    assert prompt == "yoruba heritage, a market" and 0 <= seed <= 2**31 - 1 and len(_loras(workflow)) == 1


def test_doctor_on_the_real_checkout_and_on_one_with_the_readme_snippet(checkout: Path, app) -> None:
    pristine = {c.item: c for c in run_doctor(checkout)}
    assert not pristine["app factory calls install_into_devserver"].ok
    assert readme_snippet().rstrip() in pristine["app factory calls install_into_devserver"].steps[0]
    view = Path("public/ai4artsed-frontend/src/views/text_transformation.vue")  # DevServer's main picker
    (app.root / view).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkout / view, app.root / view)
    adopted = {c.item: c for c in run_doctor(app.root, loras_dir=app.root / "ai_tools/SwarmUI/Models/loras")}
    assert adopted["app factory calls install_into_devserver"].ok
    assert adopted["schemas tree validates"].ok, adopted["schemas tree validates"].steps
    files = adopted["every LoRA config's LoRA is installed and fits its model"]
    assert not files.ok and any("misfit.safetensors" in s and "does not fit" in s for s in files.steps)
    picker = adopted["each LoRA config is offered in the frontend's pickers"]
    assert not picker.ok and any("{ id: 'sd35_large_adire'" in s for s in picker.steps)  # DevServer's fixed list


# ----------------------------------------------------------------------------- Stage 4 with the plugin installed
def test_stage4_injects_the_lora_into_devservers_own_sd35_graph(app) -> None:
    status, answer, graph = _generate(app, "sd35_large_adire", "indigo cloth at a market", seed=1234)
    assert status == 200 and answer["status"] == "success", answer
    assert graph is not None
    (lid, lora), = _loras(graph).items()  # exactly one loader: DevServer's own injector did not add another
    assert lora["class_type"] == "LoraLoader" and lora["inputs"]["lora_name"] == ADIRE
    assert (lora["inputs"]["strength_model"], lora["inputs"]["strength_clip"]) == (0.85, 0.5)  # split strengths
    clip_loader = lora["inputs"]["clip"][0]
    assert graph[clip_loader]["class_type"] == "DualCLIPLoader"
    encoders = [n for n in graph.values() if n["class_type"] == "CLIPTextEncode"]
    assert len(encoders) == 2 and all(n["inputs"]["clip"] == [lid, 1] for n in encoders)  # CLIP rewired
    sampler = next(n for n in graph.values() if n["class_type"] == "KSampler")
    assert sampler["inputs"]["model"] == [lid, 0] and sampler["inputs"]["seed"] == 1234
    texts = [n["inputs"].get("value") for n in graph.values() if n["class_type"] == "PrimitiveString"]
    assert "adire, indigo cloth at a market" in texts  # the trigger from the LoRA file, merged once
    image = app.get_bytes(answer["media_output"]["url"])  # DevServer's own code returns the rendered file
    assert image[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_trigger_the_llm_wrote_is_not_repeated(app) -> None:
    status, answer, graph = _generate(app, "sd35_large_adire", "Adire cloth, indigo", seed=5)
    assert status == 200, answer
    texts = [n["inputs"].get("value") for n in graph.values() if n["class_type"] == "PrimitiveString"]
    assert "Adire cloth, indigo" in texts and not any("adire, Adire" in str(t) for t in texts)


def test_devserver_draws_seeds_in_its_range(app) -> None:
    status, answer, graph = _generate(app, "sd35_large_adire", "a street")
    assert status == 200, answer
    seed = next(n for n in graph.values() if n["class_type"] == "KSampler")["inputs"]["seed"]
    assert 0 <= int(seed) <= 2**31 - 1 and answer["media_output"]["seed"] == seed


def test_a_lora_that_does_not_fit_is_refused_and_nothing_is_submitted(app) -> None:
    status, answer, graph = _generate(app, "sd35_large_misfit", "a street", seed=1)
    assert status == 500 and graph is None
    assert "misfit.safetensors" in answer["error"] and "does not fit the model sd35_large" in answer["error"]


def test_devservers_qwen_graph_is_left_alone(app) -> None:
    # DevServer's own interception config carries an SD3.5 LoRA; DevServer passes it to any output config.
    status, answer, graph = _generate(app, "qwen", "a street", seed=3, interception_config="cooked_negatives")
    assert status == 200, answer
    assert _loras(graph) == {}
    unet = next(k for k, n in graph.items() if n["class_type"] == "UNETLoader")
    assert any(n["inputs"].get("model") == [unet, 0] for n in graph.values())
    assert "does not fit the model of this graph" in app.log() and "qwen_image" in app.log()


def test_output_config_loras_win_over_the_interception_ones(app) -> None:
    status, answer, graph = _generate(app, "sd35_large_adire", "a street", seed=4, interception_config="cooked_negatives")
    assert status == 200, answer
    assert [n["inputs"]["lora_name"] for n in _loras(graph).values()] == [ADIRE]


def test_interception_loras_reach_a_config_without_loras_unknown_keys_and_all(app) -> None:
    status, answer, graph = _generate(app, "sd35_comfy_plain", "a street", seed=6, interception_config="lora_notes")
    assert status == 200, answer
    (lora,) = _loras(graph).values()
    assert lora["inputs"]["lora_name"] == "noted.safetensors" and lora["inputs"]["strength_model"] == 0.6
    assert app.log().count("does not read: note") == 1


def test_the_studio_mounted_by_the_readme_serves_devservers_own_app(app) -> None:
    """The README's mount() in DevServer's real create_app(): the page at /lora, names typed on the page, teachers
    from DevServer's own settings login (granted on localhost), and /api/training/* answered by this package (its
    preflight refuses a start this venv cannot train, leaving nothing behind), not by DevServer's shell trainer."""
    import httpx

    data = app.root / "home" / "devserver-lora"
    with httpx.Client(base_url=app.url, timeout=60) as admin, httpx.Client(base_url=app.url, timeout=60) as student:
        page = student.get("/lora")
        assert page.status_code == 200 and 'id="dataset-files"' in page.text, page.text[:300]
        ada = {"X-Studio-User": "ada"}
        assert student.get("/api/lora/me", headers=ada).json() == {"user": "ada", "teacher": False, "mounted": False}
        assert admin.get("/api/settings/check-auth").json()["authenticated"] is True  # DevServer's localhost login
        assert admin.get("/api/lora/me", headers=ada).json()["teacher"] is True
        assert student.get("/api/lora/me", headers=ada).json()["teacher"] is False
        status = student.get("/api/training/status").json()
        assert status["is_training"] is False and set(status) >= {"project_name", "progress", "log_lines", "vram"}
        refused = student.post("/api/training/start", data={"project_name": "../up"},
                               files=[("images", ("a.png", _png_bytes(), "image/png"))])
        assert refused.status_code == 400 and "not usable" in refused.json()["message"]
        started = student.post("/api/training/start", data={"project_name": "ada_test", "trigger_word": "adire"},
                               files=[("images", (f"{i}.png", _png_bytes(), "image/png")) for i in range(3)])
        # DevServer's own route would answer "Training started" and run bash; ours plans and checks the backend.
        assert started.status_code == 400, started.text
        assert "cannot start this job here" in started.json()["message"], started.json()
    jobs = [p.name for p in (data / "jobs").iterdir() if p.is_dir()]
    assert data.is_dir() and jobs == [], f"a refused start leaves no job behind: {jobs}"
    assert not list(data.rglob("view.json")), "nor its uploaded dataset"


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 90, 160)).save(buf, format="PNG")
    return buf.getvalue()


def test_devserver_does_not_start_without_its_loras_folder(checkout: Path, python: Path,
                                                          tmp_path: Path) -> None:
    root = working_copy(checkout, tmp_path, snippet=readme_snippet())
    with SwarmStandIn(output_dir=tmp_path / "comfy" / "output") as swarm:
        user_settings(root, swarm.port)
        env = devserver_env(root, loras_dir=tmp_path / "nowhere" / "loras", comfyui_dir=tmp_path / "comfy",
                            swarm_url=swarm.url)
        code, log = start_and_wait_for_exit(root, python, env)
    assert code not in (None, 0), log[-3000:]
    assert "the loras folder" in log and "does not exist" in log and "SwarmUI's Models/loras" in log


# ----------------------------------------------------------------------------- through the real ComfyUI
@pytest.mark.comfyui
def test_devserver_renders_a_native_lora_through_comfyui(checkout: Path, python: Path, comfyui_server,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from comfyui_setup import comfy_main, install_dir
    from native_training import TRIGGER_PROMPT, train_planted_lora

    monkeypatch.setenv("COMFYUI_DIR", str(comfy_main(install_dir()).parent))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checkpoint = (comfyui_server.base_dir / "models" / "checkpoints" / comfyui_server.checkpoint_name).resolve()
    lora = train_planted_lora(tmp_path / "train", checkpoint, output_name="devserver_magenta")
    name = comfyui_server.install_lora(lora, "devserver_magenta.safetensors")
    arch = inspect_lora(lora).metadata[ARCH_KEY]

    root = working_copy(checkout, tmp_path / "app", snippet=readme_snippet())
    schemas = root / "devserver" / "schemas"
    chunk = tiny_sd3_chunk("output_image_tiny_sd3", comfyui_server.checkpoint_name)
    chunk["requires_workflow"] = True  # DevServer's own flag: render this graph even without LoRAs
    write_json(schemas / "chunks" / "output_image_tiny_sd3.json", chunk)
    small = {"OUTPUT_CHUNK": "output_image_tiny_sd3", "WIDTH": 64, "HEIGHT": 64, "STEPS": 4}
    cfg = make_lora_output_config("tiny_sd3_magenta", [LoraSpec(name=name, trigger_words=["mgsq"])], title="magenta",
                                  base_model=arch, output_chunk="output_image_tiny_sd3").to_json_dict()
    cfg["parameters"].update(small)
    write_json(schemas / "configs" / "output" / "tiny_sd3_magenta.json", cfg)
    plain = json.loads(json.dumps(cfg))
    plain.pop("lora")
    plain["parameters"].pop("loras")
    write_json(schemas / "configs" / "output" / "tiny_sd3_plain.json", plain)

    with SwarmStandIn(output_dir=comfyui_server.output_dir, upstream=comfyui_server.url) as swarm:
        user_settings(root, swarm.port)
        env = devserver_env(root, loras_dir=comfyui_server.loras_dir, comfyui_dir=comfyui_server.base_dir,
                            swarm_url=swarm.url)
        with running_devserver(root, python, env) as running:
            images = {}
            for config, prompt in (("tiny_sd3_magenta", TRIGGER_PROMPT), ("tiny_sd3_plain", TRIGGER_PROMPT),
                                   ("tiny_sd3_plain", TRIGGER_PROMPT + " ")):
                status, answer = running.post(GENERATION, {"prompt": prompt, "output_config": config, "seed": 11})
                assert status == 200, (answer, running.log()[-4000:])
                png = running.get_bytes(answer["media_output"]["url"])
                (tmp_path / f"{config}_{len(images)}.png").write_bytes(png)  # to look at: pytest's tmp folder
                images[(config, prompt)] = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)
    with_lora = images[("tiny_sd3_magenta", TRIGGER_PROMPT)]
    without = images[("tiny_sd3_plain", TRIGGER_PROMPT)]
    again = images[("tiny_sd3_plain", TRIGGER_PROMPT + " ")]
    assert with_lora.shape == without.shape == (64, 64, 3)
    submitted = swarm.submissions[0]["prompt"]
    assert [n["inputs"]["lora_name"] for n in _loras(submitted).values()] == [name]
    noise_floor = float(np.abs(again - without).mean())
    diff = float(np.abs(with_lora - without).mean())
    print(f"DevServer through ComfyUI: mean abs pixel difference with/without LoRA {diff:.2f}, control {noise_floor:.2f}")
    assert noise_floor < 0.25, noise_floor
    assert diff > 1.0, diff
    shutil.rmtree(tmp_path / "train", ignore_errors=True)
