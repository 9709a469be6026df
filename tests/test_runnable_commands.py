"""Every command the README and the CLIs' hints print runs as printed: no bare `python` (often not the interpreter that
has the package), subcommands that exist, and one torch version for the project venv and ComfyUI's venv."""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from comfyui_setup import CPU_INDEX_URL, PROJECT_TORCH, torch_pins
from conftest import ROOT

from devserver_lora import invocation
from devserver_lora.cli import build_parser as core_parser
from devserver_lora.train.cli import build_parser as train_parser

PACKAGE = ROOT / "devserver_lora"
README = (ROOT / "README.md").read_text(encoding="utf-8")
TEXTS = {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8")
         for p in [ROOT / "README.md", ROOT / "trainer" / "README.md", ROOT / "trainer" / "setup.sh", ROOT / ".ci" / "run"]}
# `python -m ...`, `python3 -m ...` or `python script.py` not preceded by a path (`.venv/bin/python` is fine).
BARE_PYTHON = re.compile(r"(?<![\w/.\-])python3?(?= +(-m +(?!venv\b)|\S+\.py\b))")


def _subcommands(parser) -> set[str]:
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return set(action.choices)


CORE_COMMANDS = _subcommands(core_parser())
TRAIN_COMMANDS = _subcommands(train_parser())
BARE_CLI = re.compile(r"(?<![\w/.\-])devserver-lora +(" + "|".join(sorted(CORE_COMMANDS)) + r")\b")


def _strings_shown_to_people(source: str) -> list[tuple[int, str]]:
    """String constants of a module (f-string parts included), minus docstrings (code documentation, not hints)."""
    tree = ast.parse(source)
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_the_scanners_catch_a_bare_python_and_a_bare_cli() -> None:
    for bad in ("run `python -m devserver_lora.train check`", "then: python3 -m devserver_lora.train run X",
                "(python tests/comfyui_setup.py)"):
        assert BARE_PYTHON.search(bad), bad
    for ok in (".venv/bin/python -m devserver_lora.train check", "python3 -m venv .venv", "/usr/bin/python -m x",
               "a python module"):
        assert not BARE_PYTHON.search(ok), ok
    assert BARE_CLI.search("free models (devserver-lora generate --help)")
    assert not BARE_CLI.search(".venv/bin/devserver-lora generate") and not BARE_CLI.search("devserver-lora native")
    lines = _strings_shown_to_people('"""doc: python -m x"""\ndef f():\n    """python -m y"""\n    return f"run python -m {z}"\n')
    assert [text for _, text in lines] == ["run python -m "]


def test_no_hint_in_the_package_names_a_bare_python_or_cli() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, text in _strings_shown_to_people(path.read_text(encoding="utf-8")):
            if BARE_PYTHON.search(text) or BARE_CLI.search(text):
                found.append(f"{path.relative_to(ROOT)}:{line}: {text!r}")
    assert not found, "hints with a command that does not run as printed (use devserver_lora.invocation):\n" + "\n".join(found)


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_docs_name_no_bare_python_or_cli(name: str) -> None:
    text = TEXTS[name]
    bad = [ln for ln in text.splitlines() if BARE_PYTHON.search(ln) or BARE_CLI.search(ln)]
    assert not bad, f"{name}: commands that do not run as printed:\n" + "\n".join(bad)


def _readme_commands() -> list[str]:
    """The shell lines of the README's unlabelled code blocks (backslash continuations joined, comments cut)."""
    blocks: list[list[str]] = []
    inside: str | None = None
    for line in README.splitlines():
        if line.startswith("```"):
            inside = None if inside is not None else line[3:].strip()
            if inside == "":
                blocks.append([])
            continue
        if inside == "":
            blocks[-1].append(line)
    commands = []
    for block in blocks:
        for line in "\n".join(block).replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            if line:
                commands.append(line)
    return commands


def test_every_readme_command_runs_from_the_clone_as_printed() -> None:
    commands = _readme_commands()
    assert len(commands) > 15
    for command in commands:
        for part in re.split(r" && ", command):
            argv = shlex.split(part)
            while re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", argv[0]):  # a variable set for this command only
                argv = argv[1:]
            program = argv[0]
            if program == "git":
                assert argv[1] in ("clone", "-C"), part  # fetching DevServer for its contract tier
            elif program == "python3":
                assert argv[1:3] == ["-m", "venv"], part  # the only command before the venv exists
            elif program == ".venv/bin/pip":
                continue
            elif program == ".venv/bin/devserver-lora":
                assert argv[1] in CORE_COMMANDS, part
            elif program == ".venv/bin/python" and argv[1:3] == ["-m", "devserver_lora.train"]:
                assert argv[3] in TRAIN_COMMANDS, part
            elif program == ".venv/bin/python" and argv[1:3] == ["-m", "pytest"]:
                continue
            elif program == ".venv/bin/python":
                assert (ROOT / argv[1]).is_file() or argv[1].endswith("NAME.py"), part
            else:
                pytest.fail(f"README command does not start with the venv's programs: {part}")


def test_one_torch_version_and_the_cpu_build_on_plain_pypi() -> None:
    versions = {name: set(re.findall(r"torch==([\d.]+)", text)) for name, text in TEXTS.items()}
    assert versions["README.md"] == {PROJECT_TORCH} and versions[".ci/run"] == {PROJECT_TORCH}
    assert f"pip install torch=={PROJECT_TORCH} --index-url {CPU_INDEX_URL}" in README
    assert f".venv/bin/pip install torch=={PROJECT_TORCH} &&" in README  # the line that takes this machine's wheel
    assert f"tests/comfyui_setup.py --torch-index-url {CPU_INDEX_URL}" in README
    pins = torch_pins(CPU_INDEX_URL)
    assert f"torch=={PROJECT_TORCH}" in pins and pins[-2:] == ["--index-url", CPU_INDEX_URL]
    assert any(p.startswith("torchvision==") for p in pins)


def test_invocation_spells_the_interpreter_that_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "clone" / ".venv" / "bin"
    bindir.mkdir(parents=True)
    monkeypatch.setattr(sys, "executable", str(bindir / "python"))
    monkeypatch.chdir(tmp_path / "clone")
    assert invocation.train_command("status J --follow") == ".venv/bin/python -m devserver_lora.train status J --follow"
    assert invocation.cli_command("comfyui stop") == ".venv/bin/python -m devserver_lora comfyui stop"
    (bindir / "devserver-lora").write_text("#!/bin/sh\n")
    assert invocation.cli_command("comfyui stop") == ".venv/bin/devserver-lora comfyui stop"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert invocation.python() == str(bindir / "python")  # outside the clone: the absolute path
    monkeypatch.chdir(bindir)
    assert invocation.python() == "./python"  # never a bare name that PATH would look up
    monkeypatch.chdir(tmp_path)
    assert invocation.shown_path(tmp_path / "my demo" / "x.json") == "'my demo/x.json'"  # relative, quoted
    assert invocation.shown_path("/etc/hosts") == "/etc/hosts"


def test_a_hint_the_cli_prints_runs_as_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from devserver_lora.train.cli import main

    assert main(["plan", str(tmp_path / "no_dataset"), "--family", "sd35_large"]) == 1
    hint = capsys.readouterr().err
    printed = re.search(r"`([^`]*-m devserver_lora\.train prepare[^`]*)`", hint)
    assert printed, hint
    argv = shlex.split(printed.group(1))
    assert argv[0] == invocation.python() and BARE_PYTHON.search(printed.group(1)) is None
    # The printed program and module run: ask the named subcommand for its help.
    done = subprocess.run([argv[0], *argv[1:4], "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "usage:" in done.stdout
