"""The CI skip policy of tests/conftest.py: under CI a skip fails unless its reason is a licence/size one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import NEEDS_DEVSERVER, NEEDS_SD_SCRIPTS, _fail_a_ci_skip


def _skipped(reason: str) -> SimpleNamespace:
    return SimpleNamespace(skipped=True, outcome="skipped", longrepr=("file.py", 1, f"Skipped: {reason}"))


def test_a_skip_fails_under_ci_unless_it_is_an_allowed_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    plain = _skipped("shellcheck not installed")
    _fail_a_ci_skip(plain)
    assert plain.outcome == "failed" and "shellcheck not installed" in plain.longrepr
    for allowed in (f"{NEEDS_DEVSERVER}: sd35_large.json", f"{NEEDS_SD_SCRIPTS} at ../shared/third_party"):
        report = _skipped(allowed)
        _fail_a_ci_skip(report)
        assert report.outcome == "skipped"


def test_outside_ci_a_skip_stays_a_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    report = _skipped("shellcheck not installed")
    _fail_a_ci_skip(report)
    assert report.outcome == "skipped"
