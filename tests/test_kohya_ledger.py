"""The Kohya attempt ledger (work/kohya/attempts.json): a damaged one is refused, and no run folder is ever reused.

Before: a ledger that did not parse was read as "no attempts", so `resume` said there was no saved state and the
next run wrote into run-1/ again, over the first attempt's saved training states.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from kohya_standin import fixtures as standin_fixtures

from devserver_lora.errors import BackendError
from devserver_lora.train.kohya.backend import KohyaBackend

kohya_env = standin_fixtures.kohya_env  # the shared pytest fixture


def _backend(env) -> KohyaBackend:
    return KohyaBackend(env.settings, progress_interval_s=0.0, grace_s=2.0)


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def interrupted_job(kohya_env, monkeypatch):
    """A job whose first attempt was killed after saving the step-2 state into run-1/."""
    monkeypatch.setenv("STANDIN_FAIL", "kill")
    monkeypatch.setenv("STANDIN_FAIL_AT", "3")
    job = kohya_env.job()
    with pytest.raises(BackendError) as exc:
        _backend(kohya_env).run(job)
    assert exc.value.diagnosis == "killed"
    monkeypatch.delenv("STANDIN_FAIL")
    root = job.work_dir / "kohya"
    assert list(root.glob("run-1/*-state")), "the stand-in saved no training state"
    return job


DAMAGE = {
    "cut off": lambda text: text[: len(text) // 2],
    "empty": lambda text: "",
    "not utf-8": lambda text: "\udcff",
    "a list": lambda text: "[]",
    "attempts not a list": lambda text: '{"attempts": {"dir": "run-1"}}',
    "a folder outside": lambda text: '{"attempts": [{"dir": "../../outputs", "offset": 0}]}',
    "a negative offset": lambda text: '{"attempts": [{"dir": "run-1", "offset": -2}]}',
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("resume", [True, False], ids=["resume", "run"])
def test_a_damaged_ledger_is_refused_and_changes_nothing(kohya_env, interrupted_job, damage, resume):
    job = interrupted_job
    root = job.work_dir / "kohya"
    ledger = root / "attempts.json"
    text = DAMAGE[damage](ledger.read_text(encoding="utf-8"))
    ledger.write_bytes(text.encode("utf-8", "surrogateescape"))
    before = _tree_digest(root)
    with pytest.raises(BackendError) as exc:
        _backend(kohya_env).run(job, resume=resume)
    err = exc.value
    assert err.diagnosis == "ledger_damaged"
    assert str(ledger) in err.message and "nothing was started" in err.message
    assert "attempts.json.damaged" in err.hint and "new run folder" in err.hint
    assert _tree_digest(root) == before  # no run-2/, run-1/'s states and the damaged ledger untouched
    assert not (root / "run-2").exists()


def test_a_run_after_the_ledger_is_moved_aside_never_reuses_run_1(kohya_env, interrupted_job):
    job = interrupted_job
    root = job.work_dir / "kohya"
    first = _tree_digest(root / "run-1")
    (root / "attempts.json").rename(root / "attempts.json.damaged")
    final = _backend(kohya_env).run(job)
    assert final.is_file()
    assert _tree_digest(root / "run-1") == first  # the first attempt's saved states survive
    attempts = json.loads((root / "attempts.json").read_text())["attempts"]
    assert [a["dir"] for a in attempts] == ["run-2"]


def test_run_folders_on_disk_are_skipped_even_when_the_ledger_does_not_name_them(kohya_env):
    job = kohya_env.job()
    root = job.work_dir / "kohya"
    (root / "run-1").mkdir(parents=True)
    (root / "run-3").mkdir()
    (root / "run-3" / "keep.txt").write_text("an earlier attempt", encoding="utf-8")
    _backend(kohya_env).run(job)
    attempts = json.loads((root / "attempts.json").read_text())["attempts"]
    assert [a["dir"] for a in attempts] == ["run-4"]
    assert (root / "run-3" / "keep.txt").read_text(encoding="utf-8") == "an earlier attempt"


def test_a_missing_ledger_is_a_first_run(kohya_env):
    job = kohya_env.job()
    _backend(kohya_env).run(job)
    attempts = json.loads((job.work_dir / "kohya" / "attempts.json").read_text())["attempts"]
    assert [(a["dir"], a["offset"]) for a in attempts] == [("run-1", 0)]
