"""Hostile input that used to get through: a lying ComfyUI server, deeply nested JSON, FIFOs posing as files.

Each test of a hole fails without its fix (the hardening review lists file, hole, fix and test); the job-id
and real-filename tests guard behaviour that was already right, so a later change cannot lose it.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from comfy_double import ComfyDouble
from kohya_standin import fixtures as standin_fixtures

from devserver_lora import safe_json
from devserver_lora.cli import main
from devserver_lora.comfy.protocol import parse_history, parse_json_frame, parse_submit_response
from devserver_lora.errors import ComfyProtocolError, ConfigError, DatasetError, LoraFileError, TrainingError
from devserver_lora.lora.report import inspect_lora

kohya_env = standin_fixtures.kohya_env  # the shared pytest fixture

DEEP = "[" * 50_000 + "]" * 50_000  # json.loads raises RecursionError on this, not JSONDecodeError
SMALL = ["--set", "WIDTH=64", "--set", "HEIGHT=64", "--set", "STEPS=2"]


def _history(images: list[dict]) -> dict:
    return {"p1": {"outputs": {"9": {"images": images}}, "status": {"status_str": "success", "completed": True}}}


# --- a hostile ComfyUI server ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image",
    [
        {"filename": "../../../etc/x.png", "subfolder": "", "type": "output"},
        {"filename": "/etc/passwd", "subfolder": "", "type": "output"},
        {"filename": "a/../../b.png", "subfolder": "", "type": "output"},
        {"filename": "x.png", "subfolder": "../..", "type": "output"},
        {"filename": "x.png", "subfolder": "/abs", "type": "output"},
        {"filename": "x\\..\\y.png", "subfolder": "", "type": "output"},
        {"filename": "x.png", "subfolder": "", "type": "../secrets"},
    ],
)
def test_history_image_names_that_climb_out_are_refused(image: dict) -> None:
    entry = parse_history("p1", _history([image]))
    with pytest.raises(ComfyProtocolError, match="image"):
        entry.images()


def test_history_image_names_comfyui_really_uses_are_kept() -> None:
    images = [
        {"filename": "Mein Bild_00001_.png", "subfolder": "", "type": "output"},
        {"filename": "x_00002_.png", "subfolder": "klasse 7a/portraits", "type": "temp"},
    ]
    refs = parse_history("p1", _history(images)).images()
    assert [(r.filename, r.subfolder, r.type) for r in refs] == [
        ("Mein Bild_00001_.png", "", "output"),
        ("x_00002_.png", "klasse 7a/portraits", "temp"),
    ]


@pytest.mark.parametrize("pid", ["../../../../tmp/x", "/../../a/b", "a/b", "", "-rf", "a\nb"])
def test_submit_answer_with_a_prompt_id_that_is_not_a_token_is_refused(pid: str) -> None:
    with pytest.raises(ComfyProtocolError, match="prompt_id"):
        parse_submit_response(200, json.dumps({"prompt_id": pid, "number": 0}))


class HostileDouble(ComfyDouble):
    """The double, but its SaveImage reports a filename that climbs out of any folder, or its /prompt answers
    a prompt_id that is a path."""

    def __init__(self, *, bad_filename: str | None = None, bad_pid: str | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.bad_filename, self.bad_pid = bad_filename, bad_pid

    def _save_image(self, prompt: dict, nid: str, pid: str) -> dict:
        out = super()._save_image(prompt, nid, pid)
        if self.bad_filename:
            self.files[("output", "", self.bad_filename)] = b"\x89PNG stolen"
            out["images"][0]["filename"] = self.bad_filename
        return out

    async def _post_prompt(self, request: web.Request) -> web.Response:
        resp = await super()._post_prompt(request)
        if self.bad_pid and resp.status == 200:
            body = json.loads(resp.text)
            return web.json_response({**body, "prompt_id": self.bad_pid})
        return resp


MODELS = {
    "checkpoints": ["OfficialStableDiffusion/sd3.5_large.safetensors"],
    "text_encoders": ["clip_g.safetensors", "t5xxl_enconly.safetensors"],
    "loras": ["yorubaheritage_sd35.safetensors"],
}


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("kind", ["filename", "prompt_id"])
def test_generate_against_a_hostile_server_writes_nothing_outside_out(kind: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "a" / "b" / "out"
    out.mkdir(parents=True)
    before = _tree(tmp_path)
    hostile = {"bad_filename": "../../../escape.png"} if kind == "filename" else {"bad_pid": "/../../a/../x"}
    with HostileDouble(models=MODELS, **hostile) as double:
        code = main(["generate", "--config", "sd35_large_yoruba", "--prompt", "p", "--server", double.url,
                     "--out", str(out), "--timeout", "30", *SMALL])
        views = [path for method, path in double.requests if path.endswith("/view")]
    err = capsys.readouterr().err
    assert code == 1 and ("image" in err if kind == "filename" else "prompt_id" in err), err
    assert _tree(tmp_path) == before  # not a file, not a folder, anywhere
    assert views == []  # the hostile name was never even passed to /view


# --- JSON that is nested too deep or too large -------------------------------------------------------------------


def test_safe_json_bounds_depth_and_size() -> None:
    assert safe_json.loads('{"a": [1, {"b": 2}]}') == {"a": [1, {"b": 2}]}
    assert safe_json.loads(b'[[["ok"]]]', max_depth=3) == [[["ok"]]]
    for text, kw in ((DEEP, {}), ("[[[[1]]]]", {"max_depth": 3}), ("[1, 2]", {"max_bytes": 4})):
        with pytest.raises(json.JSONDecodeError):
            safe_json.loads(text, **kw)


def test_validate_reports_a_deeply_nested_config_instead_of_crashing(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "sd35_large_deep.json"
    bad.write_text('{"name": "x", "parameters": ' + DEEP + "}")
    assert main(["validate", str(bad)]) == 1
    captured = capsys.readouterr()
    assert "nests deeper" in captured.out + captured.err
    from devserver_lora.config.files import read_json_file

    with pytest.raises(ConfigError, match="nests deeper"):
        read_json_file(bad)


def _run_bounded(fn, *args: Any) -> BaseException | None:
    """Run `fn` in a thread; fail (instead of hanging the suite) when it blocks, as reading a FIFO does."""
    result: list[BaseException | None] = []

    def target() -> None:
        try:
            fn(*args)
            result.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            result.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():
        # Unblock the reader so the thread ends, then fail.
        for a in args:
            if isinstance(a, Path) and a.exists() and not a.is_file():
                fd = os.open(a, os.O_WRONLY | os.O_NONBLOCK)
                os.close(fd)
        pytest.fail(f"{fn.__name__} blocked on {args}")
    return result[0]


def test_a_fifo_named_like_a_config_is_refused_not_read(tmp_path: Path) -> None:
    from devserver_lora.config.files import read_json_file

    fifo = tmp_path / "sd35_large_x.json"
    os.mkfifo(fifo)
    exc = _run_bounded(read_json_file, fifo)
    assert isinstance(exc, ConfigError) and "not a regular file" in exc.message


def _safetensors(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


def test_a_lora_whose_header_nests_too_deep_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.safetensors"
    path.write_bytes(_safetensors(DEEP.encode()))
    with pytest.raises(LoraFileError, match="not valid JSON"):
        inspect_lora(path)


def test_a_lora_whose_trigger_metadata_nests_too_deep_still_inspects(tmp_path: Path) -> None:
    header = {"__metadata__": {"ss_tag_frequency": DEEP, "modelspec.trigger_phrase": "adire"},
              "lora_unet_x.lora_down.weight": {"dtype": "F16", "shape": [1, 1], "data_offsets": [0, 2]}}
    path = tmp_path / "meta.safetensors"
    path.write_bytes(_safetensors(json.dumps(header).encode(), b"\x00\x00"))
    assert "adire" in inspect_lora(path).trigger_words


def test_safetensors_meta_refuses_a_fifo_and_dev_zero(tmp_path: Path) -> None:
    from devserver_lora.lora.header import read_header

    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    exc = _run_bounded(read_header, fifo)
    assert isinstance(exc, LoraFileError) and "not a regular file" in exc.message
    link = tmp_path / "zero.safetensors"
    link.symlink_to("/dev/zero")
    with pytest.raises(LoraFileError, match="not a regular file"):
        read_header(link)
    with pytest.raises(LoraFileError, match="not a regular file"):
        inspect_lora(link)


def test_websocket_frame_nested_too_deep_is_a_protocol_error() -> None:
    with pytest.raises(ComfyProtocolError):
        parse_json_frame('{"type": "executed", "data": ' + DEEP + "}")


def test_training_inputs_nested_too_deep_are_clear_errors(tmp_path: Path) -> None:
    from devserver_lora.train.card import load_card
    from devserver_lora.train.dataset.importers import read_directory
    from devserver_lora.train.settings import _read_settings_file

    deep = tmp_path / "card.json"
    deep.write_text(DEEP)
    with pytest.raises(DatasetError, match="nests deeper"):
        load_card(deep)
    with pytest.raises(TrainingError, match="nests deeper"):
        _read_settings_file(deep)
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "metadata.jsonl").write_text('{"file_name": "a.png", "text": ' + DEEP + "}\n")
    source = read_directory(ds)
    assert any("nests deeper" in p.message for p in source.problems)


# --- arguments that could be read as options ---------------------------------------------------------------------

def test_kohya_argv_paths_are_absolute_so_a_dash_folder_is_no_option(kohya_env, tmp_path: Path, monkeypatch) -> None:
    from devserver_lora.train.kohya import args as kargs
    from devserver_lora.train.kohya.models import find_model_files

    job = kohya_env.job()
    monkeypatch.chdir(tmp_path)
    cmd = kargs.build_command(
        job.plan, python=Path("/venv/bin/python"), scripts_dir=Path("-sd"), models=find_model_files(
            "sd35_large", kohya_env.models_dir), work_dir=job.work_dir, output_dir=job.work_dir / "out",
        logging_dir=Path("-logs"), tokenizer_cache_dir=None, resume_state=Path("-state"), write=False,
    )
    values = [cmd.argv[1]] + [cmd.argv[cmd.argv.index(flag) + 1] for flag in ("--config_file", "--logging_dir",
                                                                              "--resume")]
    assert all(Path(v).is_absolute() for v in values), values
    assert values[0] == str(tmp_path / "-sd" / "sd3_train_network.py")


# --- process ids read back from job.json --------------------------------------------------------------------------


def test_cancel_never_signals_a_process_that_reused_a_stale_pid(kohya_env) -> None:
    import subprocess
    import sys

    from devserver_lora.train import runner

    job = kohya_env.job()
    # An unrelated long-lived process in its own group, as after a reboot when the pids of job.json are reused.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        job.set_state("running", pid=other.pid, pgid=other.pid, child_pid=other.pid, child_pgid=other.pid)
        assert runner.cancel(job, grace_s=0.2, poll_s=0.05) == "cancelled"
        assert other.poll() is None, "cancel killed a process that was not the job's"
        for pgid in (0, 1, -1, True, "7"):  # our own group, init, every process, junk: never signalled
            assert runner._signal_group(pgid, 0) is False
    finally:
        other.kill()
        other.wait(10)


def test_run_with_a_broken_plan_json_is_an_error_not_a_traceback(tmp_path: Path, monkeypatch, capsys) -> None:
    from devserver_lora.train.cli import main as train_main

    monkeypatch.setenv("HOME", str(tmp_path))
    bad = tmp_path / "plan.json"
    bad.write_text('{"family": 1}')
    assert train_main(["run", str(bad), "--jobs-dir", str(tmp_path / "jobs")]) == 1
    err = capsys.readouterr().err
    assert "not a valid plan.json" in err and "family" in err


class EndlessViewDouble(ComfyDouble):
    """/view streams a body with no Content-Length that never ends (until we stop reading)."""

    async def _view(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            for _ in range(10_000):  # bounded: 640 MB at most, we must stop long before
                await resp.write(b"\0" * 65536)
        except (ConnectionError, RuntimeError):
            pass
        return resp


async def test_client_stops_reading_an_endless_or_oversized_answer() -> None:
    from devserver_lora.comfy.client import ComfyClient
    from devserver_lora.comfy.protocol import ImageRef

    with EndlessViewDouble() as double:
        async with ComfyClient(double.url) as client:
            client.max_response_bytes = 1024 * 1024
            with pytest.raises(ComfyProtocolError, match="byte limit"):
                await client.view(ImageRef("9", "x.png", "", "output"))
            client.max_response_bytes = 100  # /system_stats answers with a Content-Length over this
            with pytest.raises(ComfyProtocolError, match="byte limit"):
                await client.system_stats()


@pytest.mark.parametrize("command", [["jobs", "show"], ["status"], ["cancel"], ["resume"], ["install"]])
@pytest.mark.parametrize("job_id", ["../x", "/etc", "..", "a/b", "-rf"])
def test_job_ids_on_the_command_line_never_name_a_path(command: list[str], job_id: str, tmp_path: Path,
                                                      monkeypatch, capsys) -> None:
    from devserver_lora.train.cli import main as train_main

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "job.json").write_text('{"id": "x", "state": "done"}')  # a job-like folder next door
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    argv = [*command, "--jobs-dir", str(jobs), "--", job_id] if job_id.startswith("-") else [
        *command, job_id, "--jobs-dir", str(jobs)]
    assert train_main(argv) == 1
    assert "is not a job id" in capsys.readouterr().err


# --- never-overwrite publishing -----------------------------------------------------------------------------------


def test_copy_no_overwrite_treats_a_dangling_symlink_as_taken(tmp_path: Path) -> None:
    from devserver_lora.paths import copy_no_overwrite, free_name

    src = tmp_path / "trained.safetensors"
    src.write_bytes(b"weights")
    loras = tmp_path / "loras"
    loras.mkdir()
    (loras / "style.safetensors").symlink_to(tmp_path / "gone.safetensors")  # dangling
    assert free_name(loras / "style.safetensors") == loras / "style-2.safetensors"
    written: list[Path] = []
    # Before the fix this looped forever: exists() said the name was free, os.link said it was taken.
    assert _run_bounded(lambda: written.append(copy_no_overwrite(src, loras / "style.safetensors"))) is None
    assert written == [loras / "style-2.safetensors"] and written[0].read_bytes() == b"weights"
    assert (loras / "style.safetensors").is_symlink() and not (tmp_path / "gone.safetensors").exists()


def test_settings_paths_are_absolute_before_they_reach_the_detached_worker(tmp_path: Path, monkeypatch) -> None:
    from devserver_lora.train.settings import load_settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KOHYA_DIR", "kohya")
    s = load_settings(home="home", jobs_dir="-jobs")
    assert s.home == tmp_path / "home" and s.jobs_dir == tmp_path / "-jobs" and s.kohya_dir == tmp_path / "kohya"
