"""The job store: folders, atomic state, events that survive a cut last line, clear errors."""

from __future__ import annotations

import json
import threading

import pytest
from datasets import CARD, make_image_folder

from devserver_lora.errors import JobError, UnsafePathError
from devserver_lora.train.card import DatasetCard
from devserver_lora.train.dataset.manifest import load_manifest
from devserver_lora.train.dataset.normalise import prepare_dataset
from devserver_lora.train.events import LogEvent, ProgressEvent, StateEvent
from devserver_lora.train.gpu import gpu_from_vram
from devserver_lora.train.jobs import JobStore
from devserver_lora.train.plan import TrainingPlan, make_plan


@pytest.fixture(scope="module")
def plan_and_dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jobs")
    src = make_image_folder(tmp / "src", 12, 64)
    ds = tmp / "ds"
    prepare_dataset(src, ds, trigger="adire", card=DatasetCard(**CARD), workers=1)
    return make_plan("sd35_medium", "quick_test", ds, gpu=gpu_from_vram(24)), ds


def test_create_get_list(tmp_path, plan_and_dataset):
    plan, ds = plan_and_dataset
    store = JobStore(tmp_path / "jobs")
    job = store.create(plan, manifest=load_manifest(ds), card=DatasetCard(**CARD))
    assert job.id.startswith("adire-") and job.dir.is_dir()
    assert job.state == "created"
    assert job.plan == plan
    assert job.card.title == CARD["title"]
    assert job.manifest.num_images == plan.num_images
    for sub in (job.logs_dir, job.outputs_dir, job.work_dir):
        assert sub.is_dir() and sub.parent == job.dir
    second = store.create(plan, manifest=load_manifest(ds), card=CARD)
    assert second.id != job.id
    assert {s.id for s in store.list()} == {job.id, second.id}
    assert store.get(job.id).plan == plan
    assert store.list()[0].family == "sd35_medium"


def test_set_state_and_info(tmp_path, plan_and_dataset):
    plan, ds = plan_and_dataset
    job = JobStore(tmp_path).create(plan, card=DatasetCard(**CARD))
    job.set_state("running", pid=1234)
    job.set_state("done", lora_path="/x/a.safetensors")
    info = job.info
    assert info["state"] == "done" and info["pid"] == 1234 and info["lora_path"] == "/x/a.safetensors"
    assert not list(job.dir.glob(".*.tmp"))  # no temp files left behind
    with pytest.raises(JobError, match="unknown job state"):
        job.set_state("exploded")


def test_events_append_and_survive_a_cut_line(tmp_path, plan_and_dataset):
    plan, _ = plan_and_dataset
    job = JobStore(tmp_path).create(plan, card=DatasetCard(**CARD))
    job.append_event(StateEvent(state="running"))
    job.append_event(ProgressEvent(step=1, total_steps=4, loss=float("nan")))
    job.append_event({"type": "log", "level": "info", "message": "plain dict"})
    with open(job.dir / "events.jsonl", "ab") as fh:
        fh.write(b'{"type": "progress", "step": 2, "tot')  # a crash mid-write
    events = job.events()
    assert [e["type"] for e in events] == ["state", "state", "progress", "log"]
    assert events[2]["loss_is_nan"] is True
    typed = job.events(typed=True)
    assert isinstance(typed[-1], LogEvent)
    # The next append after a cut line still produces a readable line.
    job.append_event(LogEvent(message="after crash"))
    assert job.events()[-1]["message"] == "after crash"


def test_concurrent_appends_do_not_interleave(tmp_path, plan_and_dataset):
    plan, _ = plan_and_dataset
    job = JobStore(tmp_path).create(plan, card=DatasetCard(**CARD))

    def writer(k):
        for i in range(25):
            job.append_event(LogEvent(message=f"{k}-{i}"))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len([e for e in job.events() if e["type"] == "log"]) == 100


def test_unknown_job_lists_recent_ids_and_prefix_works(tmp_path, plan_and_dataset):
    plan, _ = plan_and_dataset
    store = JobStore(tmp_path)
    with pytest.raises(JobError, match="no jobs yet"):
        store.get("nope")
    job = store.create(plan, card=DatasetCard(**CARD))
    with pytest.raises(JobError) as exc:
        store.get("nope")
    assert job.id in str(exc.value)
    assert store.get(job.id[:12]).id == job.id
    with pytest.raises(JobError):
        store.get("../etc")


def test_job_files_are_checked_names(tmp_path, plan_and_dataset):
    plan, _ = plan_and_dataset
    job = JobStore(tmp_path).create(plan, card=DatasetCard(**CARD))
    job.write_json("work/state.json", {"step": 3})
    assert job.read_json("work/state.json") == {"step": 3}
    for bad in ("../escape.json", "/abs.json", "a\\b.json"):
        with pytest.raises(UnsafePathError):
            job.write_json(bad, {})
    assert not (tmp_path / "escape.json").exists()
    with pytest.raises(JobError, match="no missing.json"):
        job.read_json("missing.json")


def test_damaged_plan_is_a_job_error(tmp_path, plan_and_dataset):
    plan, _ = plan_and_dataset
    job = JobStore(tmp_path).create(plan, card=DatasetCard(**CARD))
    (job.dir / "plan.json").write_text(json.dumps({"family": "sd35_large"}))
    with pytest.raises(JobError, match="not a valid plan"):
        _ = job.plan
    assert TrainingPlan.model_validate_json(plan.model_dump_json()) == plan


def test_create_requires_a_card(tmp_path, plan_and_dataset):
    plan, _ = plan_and_dataset
    with pytest.raises(JobError, match="dataset card"):
        JobStore(tmp_path).create(plan, card=None)


def test_state_updates_from_two_processes_are_not_lost(tmp_path, plan_and_dataset):
    """The runner and its detached worker both update job.json: every key written must survive."""
    import multiprocessing

    plan, _ = plan_and_dataset
    job = JobStore(tmp_path).create(plan, card=DatasetCard(**CARD))
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_update_many, args=(str(tmp_path), job.id, k)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    info = job.info
    assert all(f"k{k}_{i}" in info for k in range(2) for i in range(20))


def _update_many(root: str, job_id: str, k: int) -> None:
    job = JobStore(root).get(job_id)
    for i in range(20):
        job.set_state("running", **{f"k{k}_{i}": i})
