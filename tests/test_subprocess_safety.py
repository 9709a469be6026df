"""Every child process the package starts: an argument list (never a shell), bounded or deliberately long-lived.

Scans the package source with `ast`, so a new `shell=True`, `os.system`, a command written as one string, or a
`subprocess.run` without a timeout fails here rather than in review.
"""

from __future__ import annotations

import ast

from conftest import ROOT

PACKAGE = ROOT / "devserver_lora"

SHELL_CALLS = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput",
               "asyncio.create_subprocess_shell", "os.spawnlp", "os.spawnvp"}
BOUNDED_CALLS = {"subprocess.run", "subprocess.call", "subprocess.check_call", "subprocess.check_output"}
CHILD_CALLS = BOUNDED_CALLS | {"subprocess.Popen", "asyncio.create_subprocess_exec"}
# Children that run for hours on purpose (training), each with the way it is stopped. Started in their own
# session (start_new_session=True) so that stop path reaches the whole process group.
LONG_RUNNING = {
    "train/runner.py": "the training worker; `cancel JOB` signals its process group (runner.cancel)",
    "train/kohya/backend.py": "sd-scripts; KohyaBackend._stop_when sends SIGINT, SIGTERM, then SIGKILL to its group",
    "train/native/launch.py": "accelerate launch for several processes; run_launched writes the stop file, then TERM/KILL to its group",
    "comfy/local.py": "the local ComfyUI; `comfyui stop` (local.stop) sends SIGTERM, then SIGKILL, to its group, each wait bounded",
}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _is_text(node: ast.AST) -> bool:
    """A command written as one string: a literal, an f-string, or string concatenation / % / .format()."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str | bytes)
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp):
        return _is_text(node.left) or _is_text(node.right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("format", "join"):
        return _is_text(node.func.value)
    return False


def problems_in(source: str, where: str) -> list[str]:
    tree = ast.parse(source)
    # `from subprocess import run` / `import subprocess as sp` must not hide a call from the checks below.
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("subprocess", "os", "asyncio"):
            aliases.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
        elif isinstance(node, ast.Import):
            aliases.update({a.asname: a.name for a in node.names if a.asname})
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, rest = name.partition(".")
        name = aliases.get(name) or (f"{aliases[head]}.{rest}" if head in aliases and rest else name)
        at = f"{where}:{node.lineno}"
        kwargs = {k.arg: k.value for k in node.keywords if k.arg}
        shell = kwargs.get("shell")
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            out.append(f"{at}: shell= is set on {name or 'a call'}; pass an argument list without a shell")
        if name in SHELL_CALLS:
            out.append(f"{at}: {name} runs a shell; use subprocess with an argument list")
        if name not in CHILD_CALLS:
            continue
        command = node.args[0] if node.args else kwargs.get("args")
        if command is not None and _is_text(command):
            out.append(f"{at}: {name} gets its command as one string; pass a list")
        if name in BOUNDED_CALLS and "timeout" not in kwargs:
            out.append(f"{at}: {name} has no timeout=; a hung child would hang us")
        if name == "subprocess.Popen":
            if where not in LONG_RUNNING:
                out.append(f"{at}: Popen outside LONG_RUNNING; use subprocess.run(timeout=) or document its stop path")
            start_new = kwargs.get("start_new_session")
            if not (isinstance(start_new, ast.Constant) and start_new.value is True):
                out.append(f"{at}: a long-running child needs start_new_session=True so its stop reaches its group")
        if name == "asyncio.create_subprocess_exec":
            out.append(f"{at}: asyncio children need a bounded wait; none is used yet, review before adding one")
    return out


def test_package_starts_children_only_with_argument_lists_and_bounds() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found += problems_in(path.read_text(encoding="utf-8"), path.relative_to(PACKAGE).as_posix())
    assert not found, "\n".join(found)


def test_long_running_children_still_exist_where_documented() -> None:
    # The allow-list must not outlive the code it excuses.
    for rel in LONG_RUNNING:
        assert "subprocess.Popen(" in (PACKAGE / rel).read_text(encoding="utf-8"), rel


def test_the_scanner_flags_each_unsafe_form() -> None:
    bad = {
        "import subprocess\nsubprocess.run('ls -l', timeout=1)\n": "one string",
        "import subprocess\nsubprocess.run(['ls'], shell=True, timeout=1)\n": "shell=",
        "import subprocess\nsubprocess.run(f'ls {x}', timeout=1)\n": "one string",
        "import subprocess\nsubprocess.run('ls ' + x, timeout=1)\n": "one string",
        "import subprocess\nsubprocess.run(['ls'])\n": "no timeout",
        "import os\nos.system('ls')\n": "runs a shell",
        "import os\nos.popen('ls')\n": "runs a shell",
        "from subprocess import check_output as co\nco('ls', timeout=1)\n": "one string",
        "import subprocess as sp\nsp.call(['ls'])\n": "no timeout",
        "import asyncio\nasyncio.create_subprocess_shell('ls')\n": "runs a shell",
        "import subprocess\nsubprocess.Popen(['sleep', '1'])\n": "LONG_RUNNING",
    }
    for source, expected in bad.items():
        found = problems_in(source, "x.py")
        assert any(expected in p for p in found), (source, found)
    ok = "import subprocess\nsubprocess.run(['ls', path], capture_output=True, timeout=5, check=False)\n"
    assert problems_in(ok, "x.py") == []
    popen = "import subprocess\nsubprocess.Popen(argv, start_new_session=True)\n"
    assert problems_in(popen, "train/runner.py") == []
