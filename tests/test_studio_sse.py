"""The Studio's event stream agrees with job.json when it ends (the runner appends the final event just before
job.json takes the final state, so a page that reads the job when its stream ended could see "running")."""

from __future__ import annotations

import threading

import pytest
from datasets import CARD, make_image_folder

from devserver_lora.studio import sse
from devserver_lora.train.card import DatasetCard
from devserver_lora.train.dataset.normalise import prepare_dataset
from devserver_lora.train.events import DoneEvent, StateEvent
from devserver_lora.train.gpu import gpu_from_vram
from devserver_lora.train.jobs import JobStore
from devserver_lora.train.plan import make_plan


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sse")
    ds = tmp / "ds"
    prepare_dataset(make_image_folder(tmp / "src", 4, 64), ds, trigger="adire", card=DatasetCard(**CARD), workers=1)
    return make_plan("sd35_medium", "quick_test", ds, gpu=gpu_from_vram(24), backend="native")


def _running(tmp_path, plan):
    job = JobStore(tmp_path / "jobs").create(plan, card=DatasetCard(**CARD))
    job.set_state("running")
    job.append_event(StateEvent(state="running", message="training started"))
    return job


def _names_and_state_when_ended(job) -> tuple[list[str], str]:
    names = [chunk.split("\n")[1].removeprefix("event: ") for chunk in
             sse.stream(job, 0, base="", poll_s=0.01, max_s=10) if chunk.startswith("id:")]
    return names, job.info["state"]


def test_the_stream_announces_finished_only_once_job_json_says_done(tmp_path, plan) -> None:
    job = _running(tmp_path, plan)
    job.append_event(DoneEvent(lora_path=str(job.outputs_dir / "x.safetensors"), steps=4))
    job.append_event(StateEvent(state="done", message="trained x.safetensors"))
    later = threading.Timer(0.3, lambda: job.set_state("done", lora_path=str(job.outputs_dir / "x.safetensors")))
    later.start()
    try:
        names, state = _names_and_state_when_ended(job)
    finally:
        later.join()
    assert names[-2:] == ["state", "finished"] and state == "done"


def test_an_earlier_attempts_end_followed_by_more_lines_is_not_waited_for(tmp_path, plan, monkeypatch) -> None:
    job = _running(tmp_path, plan)
    job.append_event(StateEvent(state="cancelled", message="finished checkpoints are kept"))
    job.append_event(StateEvent(state="running", message="resuming"))
    waited: list[str] = []
    monkeypatch.setattr(sse, "_final_info", lambda j, wait_s=2.0: waited.append(j.id) or j.info)
    chunks = sse.stream(job, 0, base="", poll_s=0.01, max_s=10)
    first = [next(chunks) for _ in range(4)]  # retry line, created, running, cancelled
    assert "event: state" in first[3] and '"cancelled"' in first[3] and waited == []
