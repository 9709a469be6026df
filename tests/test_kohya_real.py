"""The REAL kohya-ss sd-scripts (pinned 48d368fa, ../shared/third_party/sd-scripts) driven through the CLI on this CPU.

prepare -> plan -> check -> run -> status -> cancel -> resume (cancelled again) -> resume -> install, in bf16, on the
tiny model files of tests/kohya_real.py, with the trainer set up by `trainer/setup.sh --source` (cached). Then the
LoRA renders in the real ComfyUI test server. Issue 12: resume continuity (item 2) and the diagnosis of the text-
encoder caching assertion (item 1) on the real trainer; the --source install (item 6).

Marker `kohya_real` (measured: 11 minutes, a peak of about 17 GB of RAM while sd-scripts loads the T5: run alone,
e.g. under `flock /tmp/devserver-lora-heavy.lock`).
Without the sd-scripts tree beside the clone the tests skip with NEEDS_SD_SCRIPTS.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from kohya_real import SD_SCRIPTS, ensure_install, ensure_models, require_sd_scripts
from kohya_standin.build import CARD, schemas_tree
from PIL import Image

from devserver_lora.lora.header import is_complete, read_header
from devserver_lora.train.cli import main as train_main
from devserver_lora.train.jobs import JobStore
from devserver_lora.train.kohya import progress as kprog
from devserver_lora.train.kohya.venv import PINNED_COMMIT, SOURCE_RECORD

# One flow is three trainer starts (each loads the 4.8 GB T5) and two cancels: longer than the suite's 600 s per test.
pytestmark = [pytest.mark.kohya_real, pytest.mark.slow, pytest.mark.timeout(2400)]

NAME = "real_lora"
TRIGGER = "tinyobj"
IMAGES = 2  # batch 1, repeats 1: 2 steps per epoch
STEPS = 12  # 6 epochs: whole epochs, so every resumed attempt ends exactly here
PER_EPOCH = 2
PX = 64
WAIT_S = 900.0  # one attempt: loading the 4.8 GB fp8 T5 dominates (40-180 s here)


def _json(capsys: pytest.CaptureFixture[str]) -> dict:
    text = capsys.readouterr().out
    return json.loads(text[text.index("{"):])


class PeakRss:
    """Peak resident memory of the trainer's process group (sd-scripts and its data-loader workers), sampled."""

    def __init__(self) -> None:
        self.peak_kb = 0
        self._pgids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def watch(self, pgid: int | None) -> None:
        if isinstance(pgid, int) and pgid > 1:
            self._pgids.add(pgid)

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            total = 0
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    fields = stat.read_text().rsplit(")", 1)[1].split()
                    if int(fields[2]) in self._pgids:  # pgrp
                        total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE") // 1024  # rss pages
                except (OSError, IndexError, ValueError):
                    continue
            self.peak_kb = max(self.peak_kb, total)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass
class Flow:
    root: Path
    job_id: str
    store: JobStore
    where: list[str]
    kohya: list[str]
    outputs: dict[str, object] = field(default_factory=dict)
    peak: PeakRss = field(default_factory=PeakRss)

    @property
    def job(self):  # noqa: ANN201 - devserver_lora.train.jobs.Job
        return self.store.get(self.job_id)


@pytest.fixture(scope="module")
def kohya_dir() -> Path:
    started = time.monotonic()
    path = ensure_install()
    print(f"kohya install ready in {time.monotonic() - started:.0f} s: {path}")
    return path


@pytest.fixture(scope="module")
def models_dir() -> Path:
    require_sd_scripts()
    return ensure_models()


def _write_photos(folder: Path) -> None:
    """64 px images: bucket_no_upscale keeps them at 64 px (8 x 8 latents), where the full-size VAE encodes them in
    seconds on this CPU (at 256 px in bf16 it took minutes)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    for i in range(IMAGES):
        base = np.zeros((PX, PX, 3), np.uint8)
        base[..., i % 3] = 200
        noise = rng.integers(0, 55, (PX, PX, 3), dtype=np.uint8)
        Image.fromarray(base + noise).save(folder / f"p{i}.png")
        (folder / f"p{i}.txt").write_text(f"{TRIGGER} a striped thing number {i}", encoding="utf-8")


def _plan(flow: Flow, capsys: pytest.CaptureFixture[str], name: str, *extra: str) -> str:
    assert train_main(["plan", str(flow.root / "ds"), "--preset", "quick_test", "--no-detect", "--backend", "kohya",
                       "--set", f"max_train_steps={STEPS}", "--set", "resolution=256", "--set", "mixed_precision=bf16",
                       "--set", "learning_rate=1e-2", *extra, "--name", name, "--create-job", "--json",
                       *flow.where]) == 0
    return str(_json(capsys)["job_id"])


def _state_complete(state_dir: Path) -> bool:
    # accelerate's save_state writes the RNG states last; train_state.json comes first (sd-scripts' pre-hook).
    return (state_dir / "train_state.json").is_file() and any(state_dir.glob("random_states_*.pkl"))


def _wait_for(job, what, timeout_s: float = WAIT_S) -> dict:  # noqa: ANN001
    """The first event `what(event)` accepts (events carry their position as `_index`), while the job runs; fails
    with the log tail if the job ends first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for index, event in enumerate(job.events()):
            if what({**event, "_index": index}):
                return event
        if job.state in ("done", "failed", "cancelled"):
            break
        time.sleep(0.05)
    log = (Path(job.logs_dir) / "kohya.log").read_bytes().decode("utf-8", "replace")[-4000:]
    pytest.fail(f"job {job.id} ({job.state}) never produced the awaited event; log tail:\n{log}")


def _complete_epoch_states(job) -> list[int]:  # noqa: ANN001
    """Epochs with a complete saved state over all attempts (what `resume` may start after)."""
    states = (Path(job.work_dir) / "kohya").glob(f"run-*/{NAME}-*-state")
    return sorted(int(m[1]) for p in states if (m := re.fullmatch(rf"{NAME}-(\d{{6}})-state", p.name))
                  and _state_complete(p))


def _cancel_after_epoch(flow: Flow, capsys: pytest.CaptureFixture[str], *, since: int) -> int:
    """Let the trainer finish an epoch (LoRA and saved state) after event `since`, freeze it (SIGSTOP), `cancel`,
    thaw it: the pending SIGINT stops it before the plan's end however fast the steps are. Returns the epoch the
    next resume starts after (the last complete epoch-end state)."""
    job = flow.job
    event = _wait_for(job, lambda e: e["type"] == "checkpoint" and e["_index"] >= since
                      and re.search(r"-\d{6}\.safetensors$", e["path"]) is not None)
    epoch = int(event["epoch"])
    pgid = job.info["child_pgid"]
    flow.peak.watch(pgid)
    os.killpg(pgid, signal.SIGSTOP)
    attempt = sorted((Path(job.work_dir) / "kohya").glob("run-*"), key=lambda p: int(p.name[4:]))[-1]

    def newest_epoch() -> int:  # the newest complete epoch LoRA of this attempt (it may be past `epoch` by now)
        done = [int(m[1]) for f in attempt.glob(f"{NAME}-*.safetensors")
                if (m := re.fullmatch(rf"{NAME}-(\d{{6}})\.safetensors", f.name)) and is_complete(f)]
        return max(done, default=epoch)

    for _ in range(400):  # let it finish writing that epoch's state, a few ms at a time
        if _state_complete(attempt / f"{NAME}-{newest_epoch():06d}-state"):
            break
        os.killpg(pgid, signal.SIGCONT)
        time.sleep(0.02)
        os.killpg(pgid, signal.SIGSTOP)
    assert _state_complete(attempt / f"{NAME}-{newest_epoch():06d}-state"), "the epoch's state was not written"
    results: list[int] = []
    canceller = threading.Thread(target=lambda: results.append(
        train_main(["cancel", flow.job_id, "--grace", "120", "--json", *flow.where])))
    canceller.start()
    time.sleep(1.0)  # the worker got SIGTERM and sent the trainer SIGINT, which waits for SIGCONT
    os.killpg(pgid, signal.SIGCONT)
    canceller.join(timeout=180)
    assert results == [0]
    cancelled = _json(capsys)
    assert cancelled["state"] == "cancelled", cancelled
    last = _complete_epoch_states(job)[-1]
    assert epoch <= last < 6
    return last


@pytest.fixture(scope="module")
def flow(kohya_dir: Path, models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The whole CLI path on the real trainer (module doc); each test below checks one part of what it left."""
    capsys = _ModuleCapture()
    root = tmp_path_factory.mktemp("kohya_real")
    where = ["--jobs-dir", str(root / "jobs")]
    kohya = ["--kohya-dir", str(kohya_dir), "--models-dir", str(models_dir)]
    store = JobStore(root / "jobs")
    started = time.monotonic()
    _write_photos(root / "photos")
    (root / "card.json").write_text(json.dumps(CARD))
    with capsys:
        assert train_main(["prepare", str(root / "photos"), "--out", str(root / "ds"), "--trigger", TRIGGER,
                           "--repeats", "1", "--card", str(root / "card.json"), "--workers", "1", "--json"]) == 0
        capsys.readouterr()
        flow = Flow(root, "", store, where, kohya)
        flow.job_id = _plan(flow, capsys, NAME)
        assert train_main(["check", "--job", flow.job_id, "--json", *where, *kohya]) == 0
        flow.outputs["check"] = _json(capsys)

        assert train_main(["run", flow.job_id, "--backend", "kohya", "--detach", "--json", *where, *kohya]) == 0
        capsys.readouterr()
        flow.outputs["first_cancel_epoch"] = _cancel_after_epoch(flow, capsys, since=0)
        assert train_main(["status", flow.job_id, "--json", *where]) == 0
        flow.outputs["status_cancelled"] = _json(capsys)

        since = len(flow.job.events())
        assert train_main(["resume", flow.job_id, "--backend", "kohya", "--detach", "--json", *where, *kohya]) == 0
        capsys.readouterr()
        flow.outputs["second_cancel_epoch"] = _cancel_after_epoch(flow, capsys, since=since)

        assert train_main(["resume", flow.job_id, "--backend", "kohya", "--detach", "--json", *where, *kohya]) == 0
        capsys.readouterr()
        job = flow.job
        _wait_for(job, lambda e: e["type"] == "progress")
        flow.peak.watch(job.info.get("child_pgid"))
        assert train_main(["status", flow.job_id, "--follow", "--json", "--timeout", str(WAIT_S), *where]) == 0
        flow.outputs["status_done"] = _json(capsys)
    flow.outputs["seconds"] = time.monotonic() - started
    flow.peak.close()
    print(f"kohya_real flow: {flow.outputs['seconds']:.0f} s, trainer peak RSS {flow.peak.peak_kb / 1e6:.1f} GB")
    return flow


class _ModuleCapture:
    """capsys for a module-scoped fixture: the CLI prints JSON to stdout; read it back the same way."""

    def __enter__(self) -> _ModuleCapture:
        import contextlib

        self._buffer = io.StringIO()
        self._redirect = contextlib.redirect_stdout(self._buffer)
        self._redirect.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._redirect.__exit__(*exc)

    def readouterr(self):  # noqa: ANN201 - the shape of capsys.readouterr()
        text = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        return type("Captured", (), {"out": text, "err": ""})()


# --- item 6: the install -----------------------------------------------------------------------------------------
def test_setup_source_installs_the_pins_own_requirements(kohya_dir: Path) -> None:
    record = json.loads((kohya_dir / SOURCE_RECORD).read_text())
    # The cache is keyed by commit and requirements, so it may have been built from another copy of the same tree
    # (another checkout path): what counts is that every file was checked against the pin's list, not where it lay.
    assert record["kind"] == "source" and Path(record["origin"]).is_absolute()
    assert record["commit"] == PINNED_COMMIT and record["checked"].startswith("every file")
    assert not (kohya_dir / "sd-scripts" / ".git").exists()
    versions = {}
    for dist in (kohya_dir / "venv" / "lib").glob("python3*/site-packages/*.dist-info"):
        name, _, version = dist.name[: -len(".dist-info")].partition("-")
        versions[name.lower().replace("_", "-")] = version
    # The checkout's requirements.txt pins (not the stale copy trainer/requirements.txt had: 0.33 / 4.44 / 0.25).
    pins = dict(line.split("==") for line in (SD_SCRIPTS / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    for name in ("accelerate", "transformers", "voluptuous", "huggingface-hub"):
        assert versions.get(name) == pins[name], (name, versions.get(name))
    assert versions.get("diffusers") == pins["diffusers[torch]"]
    assert versions.get("library") is not None or any("sd_scripts" in k or "library" in k for k in versions)


# --- the flow ----------------------------------------------------------------------------------------------------
def test_check_passes_on_the_real_install(flow: Flow) -> None:
    found = flow.outputs["check"]
    assert found["ok"], found
    commit = [f for f in found["findings"] if f["code"] == "kohya_commit"]
    assert commit and commit[0]["severity"] == "info" and "--source" in commit[0]["message"]


def test_cancel_and_two_resumes_end_exactly_at_the_planned_step(flow: Flow) -> None:
    """Issue 12 item 2 on the real trainer: before, the second `--resume` started from the wrong epoch (its state's
    step count restarts per attempt) and overran the plan."""
    job = flow.job
    assert flow.outputs["status_cancelled"]["state"] == "cancelled"
    done = flow.outputs["status_done"]
    assert done["state"] == "done", done
    attempts = json.loads((Path(job.work_dir) / "kohya" / "attempts.json").read_text())["attempts"]
    first, second = int(flow.outputs["first_cancel_epoch"]), int(flow.outputs["second_cancel_epoch"])
    assert [a["offset"] for a in attempts] == [0, first * PER_EPOCH, second * PER_EPOCH]
    assert [a["initial_epoch"] for a in attempts] == [None, first + 1, second + 1]
    finals = [e for e in job.events() if e["type"] == "done"]
    assert [e["steps"] for e in finals] == [STEPS]
    progress = [e for e in job.events() if e["type"] == "progress"]
    assert progress[-1]["step"] == STEPS and progress[-1]["total_steps"] == STEPS and progress[-1]["epoch"] == 6
    # Each attempt's first step is the one after its state; steps only grow within an attempt.
    log = (Path(job.logs_dir) / "kohya.log").read_bytes().decode("utf-8", "replace")
    attempts_log = re.split(r"resume training from local state", log)  # printed once by each resumed attempt
    epochs = [[int(m[1]) for m in re.finditer(r"\nepoch (\d+)/6\n", part)] for part in attempts_log]
    assert [e[0] for e in epochs] == [1, first + 1, second + 1]  # sd-scripts honoured --initial_epoch
    assert all(e == list(range(e[0], e[0] + len(e))) for e in epochs)
    assert epochs[-1] == list(range(second + 1, 7))
    # The published checkpoints: one per epoch, absolute labels in names and metadata.
    outputs = sorted(p.name for p in Path(job.outputs_dir).glob("*.safetensors"))
    assert outputs == [f"{NAME}-{e:06d}.safetensors" for e in range(1, 6)] + [f"{NAME}.safetensors"]
    for e in range(1, 6):
        meta = read_header(Path(job.outputs_dir) / f"{NAME}-{e:06d}.safetensors").metadata
        assert (meta["ss_epoch"], meta["ss_steps"], meta["ss_max_train_steps"]) == (str(e), str(e * PER_EPOCH),
                                                                                   str(STEPS))
    final = read_header(Path(job.outputs_dir) / f"{NAME}.safetensors").metadata
    assert (final["ss_epoch"], final["ss_steps"]) == ("6", str(STEPS))


def test_events_come_from_the_real_output(flow: Flow) -> None:
    job = flow.job
    events = job.events()
    # Every progress event is a bar sd-scripts drew (at most one per 0.5 s: how many depends on the CPU's speed),
    # its step made absolute by the attempt's offset; the run's last bar is always sent.
    log_text = (Path(job.logs_dir) / "kohya.log").read_bytes().decode("utf-8", "replace")
    offsets = [a["offset"] for a in json.loads((Path(job.work_dir) / "kohya" / "attempts.json").read_text())["attempts"]]
    parts = re.split(r"resume training from local state", log_text)
    assert len(parts) == len(offsets) == 3
    drawn = [(offset + bar.step, bar.loss) for offset, part in zip(offsets, parts, strict=True)
             for bar in map(kprog.parse_line, re.split(r"[\r\n]", part)) if isinstance(bar, kprog.StepLine)]
    progress = [e for e in events if e["type"] == "progress"]
    assert progress and all((e["step"], e["loss"]) in drawn for e in progress)
    assert (progress[-1]["step"], progress[-1]["loss"]) == drawn[-1] and drawn[-1][0] == STEPS
    with_loss = [e for e in progress if e["loss"] is not None]
    assert with_loss and all(isinstance(e["loss"], float) for e in with_loss)
    assert all(e["total_epochs"] == 6 and 1 <= e["epoch"] <= 6 for e in with_loss)
    checkpoints = [e for e in events if e["type"] == "checkpoint"]
    assert {Path(e["path"]).name for e in checkpoints} == {p.name for p in Path(job.outputs_dir).glob("*.safetensors")}
    assert all(Path(e["path"]).is_file() for e in checkpoints)
    log = (Path(job.logs_dir) / "kohya.log").read_bytes()
    assert log.count(b"\r") > 10 and b"model saved." in log and log.count(b"resume training from local state") == 2


def test_install_and_render_in_real_comfyui(flow: Flow, comfyui_server, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    import asyncio

    from test_native_comfyui import MIN_PIXEL_DIFFERENCE, _graph, _render

    from devserver_lora.lora.fit import predict_not_loaded
    from devserver_lora.lora.keys import ArchSpec

    schemas = flow.root / "schemas"
    schemas_tree(schemas)
    # The tiny checkpoint is not the family's model: install judges the LoRA against what it was trained on.
    assert train_main(["install", flow.job_id, "--loras-dir", str(comfyui_server.loras_dir), "--schemas",
                       str(schemas), "--against", "sd3:2:te=clip_l", "--json", *flow.where]) == 0
    installed = _json(capsys)
    lora = Path(installed["lora_path"])
    assert lora.parent.resolve() == Path(comfyui_server.loras_dir).resolve()
    assert installed["trigger_words"] == [TRIGGER]
    assert predict_not_loaded(lora, ArchSpec.sd3(2, text_encoders=("clip_l",))) == []
    prompt = f"{TRIGGER} a striped thing"
    mark = comfyui_server.log_mark()
    ckpt = comfyui_server.checkpoint_name
    with_lora = asyncio.run(_render(comfyui_server, _graph(ckpt, lora=lora.name, seed=5, prompt=prompt)))
    console = comfyui_server.console_log(since=mark)
    assert "lora key not loaded" not in console and "NOT LOADED" not in console, console[-3000:]
    without = asyncio.run(_render(comfyui_server, _graph(ckpt, lora=None, seed=5, prompt=prompt)))
    diff = float(np.abs(with_lora - without).mean())
    print(f"kohya LoRA: mean abs pixel difference with/without {diff:.2f}")
    assert diff > MIN_PIXEL_DIFFERENCE, diff


# --- item 1's assertion, diagnosed from the real trainer ---------------------------------------------------------
def test_caption_dropout_with_cached_text_encoders_is_diagnosed(flow: Flow, kohya_dir: Path, models_dir: Path) -> None:
    """The plan (and `check --job`, and `run`) refuse caption dropout with cached text-encoder outputs. A
    dataset.toml written by hand still reaches sd-scripts: here the generated files of a valid plan, edited, run by
    the real trainer as the backend runs it; its own AssertionError is diagnosed by name, with the fix."""
    import subprocess

    from devserver_lora.train.kohya import args as kargs
    from devserver_lora.train.kohya import models as kmodels
    from devserver_lora.train.kohya import venv as kvenv
    from devserver_lora.train.kohya.diagnose import Watcher, diagnose
    from devserver_lora.train.kohya.progress import LineSplitter

    capture = _ModuleCapture()
    with capture:
        job = flow.store.get(_plan(flow, capture, "dropout_lora"))
    plan = job.plan
    assert plan.memory.cache_text_encoder_outputs
    install = kvenv.find_kohya(kohya_dir)
    work = flow.root / "dropout"
    work.mkdir()
    cmd = kargs.build_command(plan, python=install.python, scripts_dir=install.scripts_dir,
                              models=kmodels.find_model_files(plan.family, models_dir), work_dir=work,
                              output_dir=work / "out", logging_dir=work / "tb",
                              tokenizer_cache_dir=install.tokenizer_cache_dir)
    toml = cmd.dataset_toml.read_text()
    assert "caption_dropout_rate = 0.0\n" in toml
    cmd.dataset_toml.write_text(toml.replace("caption_dropout_rate = 0.0\n", "caption_dropout_rate = 0.05\n"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(cmd.argv, cwd=cmd.cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                            timeout=WAIT_S, check=False)
    output = (result.stdout + result.stderr).decode("utf-8", "replace")
    assert result.returncode != 0
    assert "AssertionError: when caching Text Encoder output" in output  # the real trainer's own words
    watcher, splitter = Watcher(), LineSplitter()
    for line in [*splitter.feed(output), *splitter.flush()]:
        watcher.feed(line)
    diag = diagnose(returncode=result.returncode, watcher=watcher, output_exists=False, plan=plan, cancelled=False)
    assert diag is not None
    assert diag.code == "caption_vs_text_encoder_cache", diag
    assert "caption_dropout_rate=0" in diag.hint and "cache_text_encoder_outputs=false" in diag.hint, diag
