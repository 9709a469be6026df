"""The package type-checks clean under mypy (issue 10 item 13).

The configuration is pyproject's [tool.mypy] (the whole `devserver_lora` package, `check_untyped_defs`,
`warn_unused_ignores`), so this test checks exactly what `.venv/bin/python -m mypy` does at the repository root.
mypy is in the dev extra: the test skips only where it is not installed, and under CI=true that skip fails
(tests/conftest.py). A cold run takes minutes of CPU; mypy keeps its cache in `.mypy_cache/` (ignored by git),
so a run after a small change takes seconds.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest
from conftest import ROOT

PACKAGE_MODULES = sum(1 for _ in (ROOT / "devserver_lora").rglob("*.py"))


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a cold cache on a loaded machine
def test_mypy_reports_no_error_over_the_package() -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (it is in the dev extra: pip install -e '.[dev]')")
    done = subprocess.run(  # noqa: S603 - our interpreter, fixed arguments
        [sys.executable, "-m", "mypy", "--no-color-output", "--show-error-codes"],
        cwd=ROOT, capture_output=True, text=True, timeout=1750, check=False,
    )
    report = done.stdout + done.stderr
    errors = [line for line in report.splitlines() if ": error:" in line]
    assert done.returncode == 0 and not errors, f"mypy found {len(errors)} error(s):\n" + "\n".join(errors or [report])
    # It checked the package, not nothing: every module of devserver_lora was a source file (mypy also counts
    # the data folders without __init__.py as namespace packages, hence at least).
    checked = re.search(r"no issues found in (\d+) source files", report)
    assert checked and int(checked.group(1)) >= PACKAGE_MODULES, report
