"""The newcomer's first run: a synthetic dataset and a tiny SD3 model, trained with the native backend
through the job store, installed with an output config, and (given a ComfyUI) rendered before and after.
The model has random weights: its pictures are noise, and the demo says so. It shows what a real run shows (samples
during training, the loss plot, the before/after sheet with its difference image, the job's report) and points at
the commands that do the same with a real SD3.5 model.

Everything is real except the data and the weights: the dataset goes through `prepare`, the plan through
`make_plan`, training through the detached runner and the job store, the LoRA through `install` (fit check,
provenance), the output config through `config.make` and `validate`. `render=True` starts the local ComfyUI the
install set up (`comfy.local`, as `devserver-lora comfyui start` does) unless it already runs, and leaves it running
so that the README's Quick start 1 commands, which the result lists, work on the new config at once.

The tiny checkpoint carries only CLIP-L, so DevServer's SD3.5 chunks (CLIP-G + T5 loaders) cannot run on it: the
demo writes its own output chunk for it (`demo_chunk`), the same minimal text-to-image graph it renders before/after.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ..errors import TrainingError
from ..invocation import cli_command, shown_path
from .card import load_card

if TYPE_CHECKING:
    from .jobs import Job

TRIGGER = "mgsq"
OUTPUT_NAME = "demo_magenta"
PROMPT = "a magenta square on a plain background"
DEMO_PROMPT = f"{TRIGGER}, {PROMPT}"
DEMO_CHUNK = "output_image_tiny_sd3_demo"
MODEL_LABEL = "tiny SD3 (demo)"
# What renders in seconds on a CPU with the tiny model (the chunk's defaults and the config's parameters).
RENDER = {"width": 128, "height": 128, "steps": 6, "cfg": 4.5, "sampler_name": "euler", "scheduler": "sgm_uniform",
          "seed": 7}
_PARAMETERS = {"WIDTH": "width", "HEIGHT": "height", "STEPS": "steps", "CFG": "cfg", "SAMPLER": "sampler_name",
               "SCHEDULER": "scheduler", "SEED": "seed"}
_NO_SCHEMAS_NOTE = "no DevServer schemas folder given"  # install's note; the demo writes its own config instead


# The demo's samples and evaluation: one prompt with the trigger, one without, at fixed seeds, as small as the chunk.
SAMPLE_PROMPTS = ((DEMO_PROMPT, 1000), (PROMPT, 1001))
NOISE_NOTE = ("The tiny model has random weights, so every picture it makes is noise: the difference image shows "
              "what the LoRA changed, not what it learned.")


class DemoResult(BaseModel):
    out_dir: str
    job_id: str
    job_state: str
    lora_path: str
    lora_name: str
    arch: str  # what the LoRA was trained on (its devserver_lora.arch label), e.g. sd3:2:te=clip_l
    steps: int
    final_loss: float | None = None
    config_name: str | None = None
    config_path: str | None = None
    schemas_dir: str | None = None
    base_model_file: str
    comfyui_url: str | None = None
    comfyui_started: bool = False  # this run started the local ComfyUI (it keeps running)
    loras_dir: str
    renders: dict[str, str] = {}  # before, after, difference (images alone) and sheet (before/after, with numbers)
    pixel_difference: float | None = None
    samples: list[str] = []  # rendered during training
    loss_plot: str | None = None
    report: str | None = None
    warnings: list[str] = []
    next_commands: list[str] = []
    real_model_commands: list[str] = []


class _Renderer(BaseModel):
    url: str | None
    models_dir: str
    started: bool = False
    base: str | None = None


def _free_config_name(schemas_dir: Path, base: str) -> str:
    name, n = base, 2
    while (schemas_dir / "configs" / "output" / f"{name}.json").exists():
        name, n = f"{base}_{n}", n + 1
    return name


def tiny_workflow(checkpoint: str, *, prompt: str = DEMO_PROMPT, negative: str = "", **render: Any) -> dict[str, Any]:
    """A minimal SD3 text-to-image graph for the tiny checkpoint, whose CLIP comes from the checkpoint itself."""
    r = {**RENDER, **render}
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "3": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 3.0}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["1", 1]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["1", 1]}},
        "6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": r["width"], "height": r["height"],
                                                              "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {"model": ["3", 0], "seed": r["seed"], "steps": r["steps"],
                                                   "cfg": r["cfg"], "sampler_name": r["sampler_name"],
                                                   "scheduler": r["scheduler"], "positive": ["4", 0],
                                                   "negative": ["5", 0], "latent_image": ["6", 0], "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "devserver_lora_demo"}},
    }


def render_graph(checkpoint: str, *, lora: str | None, seed: int = 7, prompt: str = DEMO_PROMPT) -> dict[str, Any]:
    """The before (lora=None) or after graph: `tiny_workflow` with the LoRA injected the way `generate` injects it."""
    from ..graph.inject import inject_loras
    from ..lora.spec import LoraSpec

    graph = tiny_workflow(checkpoint, prompt=prompt, seed=seed)
    return graph if lora is None else inject_loras(graph, [LoraSpec(name=lora, strength_model=1.0, strength_clip=1.0, trigger_words=None, target=None)])


def demo_chunk(checkpoint: str) -> dict[str, Any]:
    """A DevServer output chunk rendering `tiny_workflow`, filled through DevServer's input mapping keys."""
    def at(node: str, field: str, what: str, **extra: Any) -> dict[str, Any]:
        return {"node_id": node, "field": f"inputs.{field}", **extra, "description": what}

    r = RENDER
    return {
        "name": DEMO_CHUNK,
        "type": "output_chunk",
        "backend_type": "comfyui",
        "media_type": "image",
        "description": "The demo's tiny SD3 checkpoint through ComfyUI (CLIP-L from the checkpoint); for the first "
                       "run on a CPU, not for real images.",
        "workflow": tiny_workflow(checkpoint, prompt=""),
        "input_mappings": {
            "prompt": at("4", "text", "the prompt Stage 2 wrote", source="{{PREVIOUS_OUTPUT}}"),
            "negative_prompt": at("5", "text", "what the image should avoid", default=""),
            **{key: at("6" if key in ("width", "height") else "7", key, key.replace("_", " "), default=r[key])
               for key in ("width", "height", "steps", "cfg", "sampler_name", "scheduler", "seed")},
        },
        "output_mapping": {"node_id": "9", "output_type": "image", "format": "png"},
        "meta": {"model_file": checkpoint, "clip_models": [], "recommended_resolution": f"{r['width']}x{r['height']}",
                 "written_by": "devserver-lora (train.demo)"},
    }


def write_demo_config(job: Job, lora_name: str, arch: str, schemas: Path, checkpoint: str) -> tuple[str, Path]:
    """The demo chunk and an output config for the LoRA (from its dataset card) in a DevServer-shaped schemas
    folder, validated together before the config is written; an existing config is never replaced."""
    from ..config.chunks import chunk_json
    from ..config.files import parse_output_config, write_output_config
    from ..config.make import make_lora_output_config
    from ..config.validate import tree_problems
    from ..errors import ConfigError
    from ..lora.spec import LoraSpec
    from ..paths import atomic_write_text
    from .install import job_card, provenance

    card = job_card(job)
    chunk_path = atomic_write_text(schemas / "chunks" / f"{DEMO_CHUNK}.json", chunk_json(demo_chunk(checkpoint)))
    name = _free_config_name(schemas, OUTPUT_NAME)
    spec = LoraSpec(name=lora_name, strength_model=1.0, strength_clip=1.0, trigger_words=(TRIGGER,), target=None)
    config = make_lora_output_config(
        name, [spec], title=card.title if card else OUTPUT_NAME, model_label=MODEL_LABEL, base_model=arch,
        output_chunk=DEMO_CHUNK, language=card.language if card else None,
        description=card.description if card else None, tags=card.tags if card else (),
        provenance=provenance(job, card, lora_name, arch),
    )
    data = config.to_json_dict()
    data["parameters"].update({key: RENDER[field] for key, field in _PARAMETERS.items()})
    config = parse_output_config(data, file=name)
    staged = write_output_config(config, Path(job.work_dir) / "demo_schemas" / "configs" / "output" / f"{name}.json",
                                 overwrite=True)
    problems = [p for p in tree_problems([staged, chunk_path]) if p.severity == "error"]
    if problems:
        raise ConfigError(f"the demo's output config {name} does not validate", problems)
    return name, write_output_config(config, schemas / "configs" / "output" / f"{name}.json")


def _demo_samples(job: Job, steps: int) -> None:
    """Samples during the demo's training: two prompts at fixed seeds, four times, at the chunk's render size."""
    from .evaluate.settings import EvalPrompt, load_eval_settings, save_eval_settings

    settings = load_eval_settings(job)
    save_eval_settings(job, settings.model_copy(update={
        "prompts": [EvalPrompt(prompt=p, seed=seed) for p, seed in SAMPLE_PROMPTS],
        "sample_every_n_steps": max(1, steps // 3), "size": RENDER["width"], "steps": RENDER["steps"],
        "cfg": RENDER["cfg"]}))


def _evaluate(job: Job, url: str, loras: Path, chunk: Path) -> tuple[dict[str, str], float | None]:
    """The before/after sheet through ComfyUI and the demo's own chunk (`train evaluate`, one sheet)."""
    from .evaluate.run import EvalOptions, evaluate_job

    result = evaluate_job(job, EvalOptions(comfyui=url, loras_dir=loras, sheets=("before_after",), chunk=chunk))
    sheet = result.sheets[0]
    first = sheet.cells[0]
    names = ("before", "after", "difference")
    renders = {name: str(job.dir / rel) for name, rel in zip(names, first, strict=False) if rel}
    renders["sheet"] = str(job.dir / sheet.file)
    return renders, sheet.columns[1].mean_abs_change


def real_model_commands() -> list[str]:
    """The same path with a real SD3.5 Large model (README, Quick start 2)."""
    from ..invocation import train_command

    return [
        train_command("prepare photos/ --out datasets/mine --trigger WORD --preset fotostudio --card card.json"),
        train_command("plan datasets/mine --family sd35_large --preset fotostudio --vram 24 --create-job"),
        train_command("run JOB"),
        train_command("evaluate JOB --comfyui http://127.0.0.1:8188 --loras-dir ComfyUI/models/loras"),
        train_command("install JOB --loras-dir ComfyUI/models/loras --schemas devserver/schemas"),
    ]


def prepare_renderer(*, render: bool, comfyui_base: str | Path | None, comfyui_url: str | None,
                     comfyui_models: str | Path | None, out: Path) -> _Renderer:
    """Where the demo renders, checked (and the local ComfyUI started) BEFORE anything is trained."""
    from ..comfy.local import BaseDir, answers, default_install, setup_command, start, status

    if render and comfyui_url:
        raise TrainingError("--render starts the local ComfyUI, --comfyui names another one: give one of them")
    if comfyui_url:
        if comfyui_models is None:
            raise TrainingError("--comfyui needs --comfyui-models too",
                                hint="pass that ComfyUI's models folder with --comfyui-models DIR (the demo writes its "
                                     "checkpoint into checkpoints/ and its LoRA into loras/), or use --render")
        models = Path(comfyui_models).expanduser().absolute()
        if not models.is_dir():
            raise TrainingError(f"--comfyui-models {models} is not a folder",
                                hint="give the models folder of the ComfyUI at --comfyui (it holds checkpoints/, loras/)")
        if not answers(comfyui_url):
            raise TrainingError(f"no ComfyUI answers at --comfyui {comfyui_url}",
                                hint=f"start one (`{cli_command('comfyui start')}` prints its URL) and pass that URL "
                                     "to --comfyui, or use --render to let the demo start it")
        return _Renderer(url=comfyui_url, models_dir=str(models))
    if not render:
        return _Renderer(url=None, models_dir=str(out / "comfyui_models"))
    install = default_install()
    base = BaseDir(Path(comfyui_base).expanduser().absolute()) if comfyui_base else install.default_base()
    current = status(base)
    if current.answering and current.record is not None:
        return _Renderer(url=current.record.url, models_dir=str(base.models), base=str(base.root))
    if not install.ready:
        raise TrainingError(f"--render needs the ComfyUI the install sets up, and there is none in {install.root}",
                            hint=f"install it once: {setup_command()}")
    if not install.tiny_checkpoint.is_file():  # the install builds it; a cache cleaner may have taken it
        from ..testing.tiny_sd3 import write_tiny_sd3_checkpoint

        write_tiny_sd3_checkpoint(install.tiny_checkpoint)
    server = start(install, base)
    return _Renderer(url=server.url, models_dir=str(base.models), started=True, base=str(base.root))


def next_commands(result: DemoResult, renderer: _Renderer) -> list[str]:
    """The README's Quick start 1 on the new config, as runnable commands (what the demo prints last)."""
    if not (result.schemas_dir and result.config_name):
        return []
    schemas, name = shown_path(result.schemas_dir), result.config_name
    commands = [
        cli_command(f"validate {schemas}"),
        cli_command(f"show-config {name} --schemas {schemas}"),
        cli_command(f"inspect-lora {shown_path(result.lora_path)} --against {shlex.quote(result.arch)}"),
    ]
    if renderer.url:
        generated = shown_path(Path(result.out_dir) / "generated")
        commands.append(cli_command(f"generate --config {name} --schemas {schemas} --prompt {shlex.quote(PROMPT)} "
                                    f"--server {renderer.url} --loras-dir {shown_path(result.loras_dir)} "
                                    f"--out {generated}"))
    return commands


def _final_loss(job: Job) -> float | None:
    losses = [e.get("loss") for e in job.events() if e.get("type") == "progress"]
    return round(losses[-1], 3) if losses and losses[-1] is not None else None


def run_demo(
    out_dir: str | Path,
    *,
    render: bool = False,
    comfyui_base: str | Path | None = None,
    comfyui_url: str | None = None,
    comfyui_models: str | Path | None = None,
    steps: int = 30,
    show_progress: bool = True,
    on_note: Callable[[str], None] | None = None,
) -> DemoResult:
    from ..comfy.local import BaseDir, stop
    from ..paths import atomic_write_json
    from . import runner
    from .dataset.normalise import prepare_dataset
    from .install import install_job, trained_on
    from .jobs import JobStore
    from .native.models import ModelSource, find_tokenizer_dir
    from .native.tiny import PLANTED_CARD, tiny_sai_checkpoint, write_planted_images
    from .plan import make_plan
    from .settings import load_settings

    out = Path(out_dir).expanduser().absolute()
    out.mkdir(parents=True, exist_ok=True)
    renderer = prepare_renderer(render=render, comfyui_base=comfyui_base, comfyui_url=comfyui_url,
                                comfyui_models=comfyui_models, out=out)
    if renderer.started and on_note:
        on_note(f"started the local ComfyUI at {renderer.url}")
    try:
        models_dir = Path(renderer.models_dir)
        (models_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (models_dir / "loras").mkdir(parents=True, exist_ok=True)
        # 1. images a student might bring (here: a planted concept), with the dataset card, then `prepare`.
        raw = write_planted_images(out / "images", n=4, size=256, trigger=TRIGGER)
        atomic_write_json(raw / "card.json", PLANTED_CARD)
        dataset = prepare_dataset(raw, out / "dataset", name="demo", trigger=TRIGGER, family="sd35_large",
                                  preset="quick_test", card=load_card(raw / "card.json"), overwrite=True).out_dir
        # 2. the tiny model (same seed -> same file, so an existing one is reused).
        checkpoint = tiny_sai_checkpoint(models_dir / "checkpoints")
        # 3. plan + job; the job records where its model is, so `status`/`resume` work on it like on any job.
        plan = make_plan("sd35_large", "quick_test", dataset, gpu=None, backend="native", output_name=OUTPUT_NAME,
                         overrides={"resolution": 256, "max_train_steps": steps, "learning_rate": 2e-3,
                                    "network_dim": 8, "network_alpha": 4, "save_every_n_epochs": 5})
        settings = load_settings(home=str(out / "home"), jobs_dir=str(out / "jobs"), models_dir=str(models_dir))
        job = JobStore(settings.jobs_dir).create(plan, card=load_card(dataset / "card.json"))
        source = ModelSource(checkpoint=checkpoint)
        if find_tokenizer_dir("clip_l", source) is None:
            source = source.model_copy(update={"tiny_tokenizer": True})
        job.write_json("model.json", source.model_dump(mode="json"))
        _demo_samples(job, steps)
        # 4. train in the detached runner (exactly what `run` starts), following its events with a progress bar.
        runner.start(job, settings, backend="native")
        if show_progress:
            from .progress_view import show_follow

            show_follow(job, timeout_s=900, poll_s=0.2)
        else:
            runner.wait(job, timeout_s=900)
        if job.state != "done":
            info = job.info
            raise TrainingError(f"demo training ended in state {job.state}: {info.get('message')}",
                                hint=info.get("hint"))
        # 5. install the LoRA into ComfyUI's loras folder (fit check, provenance), then the demo's chunk and config.
        # The demo's ComfyUI loads the tiny checkpoint the LoRA was trained on: install it for that model.
        installed = install_job(job, loras_dir=models_dir / "loras", schemas_dir=None, against=trained_on(job))
        from ..lora.header import read_header
        from ..lora.report import ARCH_KEY

        arch = read_header(installed.lora_path).metadata[ARCH_KEY]
        schemas = out / "devserver_schemas"
        config_name, config_path = write_demo_config(job, installed.lora_name, arch, schemas, checkpoint.name)
        job.write_json("install.json", installed.model_copy(update={"config_name": config_name,
                                                                    "config_path": str(config_path)}))
        result = DemoResult(
            out_dir=str(out), job_id=job.id, job_state=job.state, lora_path=installed.lora_path,
            lora_name=installed.lora_name, arch=arch, steps=steps, final_loss=_final_loss(job),
            config_name=config_name, config_path=str(config_path), schemas_dir=str(schemas),
            base_model_file=str(checkpoint), comfyui_url=renderer.url, comfyui_started=renderer.started,
            loras_dir=str(models_dir / "loras"),
            warnings=[w for w in installed.warnings if not w.startswith(_NO_SCHEMAS_NOTE)],
        )
        # 6. before/after through a real ComfyUI, with the difference image; the report (rewritten) shows it all.
        if renderer.url:
            result.renders, result.pixel_difference = _evaluate(job, renderer.url, models_dir / "loras",
                                                                schemas / "chunks" / f"{DEMO_CHUNK}.json")
        else:
            from .evaluate.report import write_report

            write_report(job, written_by="demo")
        from .evaluate.lossplot import LOSS_PLOT_FILE
        from .evaluate.report import REPORT_HTML
        from .evaluate.samples import samples_of

        result.samples = [str(r.path) for r in samples_of(job)]
        result.loss_plot = str(job.dir / LOSS_PLOT_FILE)
        result.report = str(job.dir / REPORT_HTML)
        result.real_model_commands = real_model_commands()
    except BaseException:
        if renderer.started and renderer.base:
            stop(BaseDir(Path(renderer.base)))  # started for this run, which failed: leave nothing behind
        raise
    result.next_commands = next_commands(result, renderer)
    atomic_write_json(out / "demo_result.json", result.model_dump(mode="json"))
    return result
