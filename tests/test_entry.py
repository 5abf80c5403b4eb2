"""The way in (tasks/loader.py) and what a run leaves in the process.

Every way of running the tool takes the same loader, commands and backends:
plain doit in the project folder (pyproject.toml), ``doit -f PATH/dodo.py``
from elsewhere (dodo.py hands over), ``./stack.sh`` and ``python -m tasks``
from anywhere.  Importing any module of ours changes nothing (no file, no
umask, no thread, no signal handler, no doit class patched), no module keeps
a run's state, and a run leaves nothing behind in the process: the tests run
doit in-process, one run after another.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import ROOT, write

from tasks import session

TASKS = ROOT / "tasks"
ALL_AB = ["check", "fetch:alpha", "fetch:beta", "patch:alpha", "patch:beta", "build:alpha",
          "install:alpha", "build:beta", "install:beta"]

# --------------------------------------------------------------------------
# Importing the code does nothing

PROBE = r'''
import importlib, importlib.util, inspect, json, os, signal, sys, threading
from pathlib import Path

root = Path(sys.argv[1])
sys.path.insert(0, str(root))  # this tree's tasks/, whatever is installed

def umask():
    for line in open("/proc/self/status"):
        if line.startswith("Umask:"):
            return line.split()[1]

def doit_state():
    """id() of every attribute of doit's classes and modules."""
    import doit, pkgutil
    out = {}
    for info in pkgutil.iter_modules(doit.__path__, "doit."):
        if info.name == "doit.__main__":
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            out[f"{info.name}.{name}"] = id(value)
            if inspect.isclass(value) and value.__module__ == info.name:
                for attr, v in vars(value).items():
                    out[f"{info.name}.{name}.{attr}"] = id(v)
    return out

def process():
    return {"umask": umask(), "cwd": os.getcwd(), "env": dict(os.environ),
            "threads": sorted(t.name for t in threading.enumerate()),
            "signals": {s: repr(signal.getsignal(getattr(signal, s)))
                        for s in ("SIGTERM", "SIGINT", "SIGALRM", "SIGHUP")},
            "excepthook": repr(sys.excepthook), "stdout": id(sys.stdout),
            "stderr": id(sys.stderr)}

before_doit = doit_state()
before = process()
names = []
for path in sorted((root / "tasks").rglob("*.py")):
    rel = path.relative_to(root).with_suffix("")
    name = ".".join(rel.parts).removesuffix(".__init__")
    if name == "tasks.__main__":  # the entry point: it runs the tool
        continue
    importlib.import_module(name)
    names.append(name)
spec = importlib.util.spec_from_file_location("dodo", root / "dodo.py")
dodo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dodo)  # imported by anything but doit's loader: nothing happens
after = process()
changed = sorted(k for k in before if before[k] != after[k])
patched = sorted(k for k, v in before_doit.items() if doit_state().get(k) != v)
print(json.dumps({"modules": names, "changed": changed, "patched": patched,
                  "before": {k: before[k] for k in changed},
                  "after": {k: after[k] for k in changed}}))
'''


def test_importing_every_module_changes_nothing(tmp_path):
    """In a fresh interpreter, run from an empty folder: import every module
    of tasks/ and dodo.py; nothing on disk, nothing in the process."""
    work = tmp_path / "work"
    (work / "tmp").mkdir(parents=True)
    (work / "home").mkdir()
    env = {**os.environ, "HOME": str(work / "home"), "TMPDIR": str(work / "tmp"),
           "PYTHONDONTWRITEBYTECODE": "1"}
    top = sorted(os.listdir(ROOT))
    res = subprocess.run([sys.executable, "-c", PROBE, str(ROOT)], cwd=work, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    found = json.loads(res.stdout)
    assert "tasks.loader" in found["modules"] and "tasks.spec" in found["modules"]
    assert found["changed"] == [], found
    assert found["patched"] == []
    assert sorted(p.relative_to(work).as_posix() for p in work.rglob("*")) == ["home", "tmp"]
    assert sorted(os.listdir(ROOT)) == top


def _module_files() -> dict[str, Path]:
    out = {}
    for path in sorted(TASKS.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        out[name] = path
    return out


def test_no_module_rebinds_a_global():
    """Run state set through ``global`` outlives the run: it belongs to the
    Run (tasks/session.py)."""
    found = []
    for name, path in _module_files().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Global):
                found.append(f"{name}:{node.lineno}: global {', '.join(node.names)}")
    assert found == []


_RUN_STATE = (dict, list, set, bytearray, threading.local, threading.Thread, threading.Event,
              threading.Condition, threading.Semaphore)


def test_no_module_holds_mutable_run_state():
    """At module level: constants (UPPER_CASE, never changed by a run: see
    below), locks guarding what the whole process shares (stderr, the
    target root) and context variables, nothing else mutable."""
    import importlib

    found = []
    for name in _module_files():
        if name == "tasks.__main__":
            continue
        module = importlib.import_module(name)
        for var, value in vars(module).items():
            if isinstance(value, _RUN_STATE) and not var.isupper() and not var.startswith("__"):
                found.append(f"{name}.{var}: {type(value).__name__}")
    assert found == []


# --------------------------------------------------------------------------
# A run leaves nothing behind in the process


def _module_state() -> dict[str, str]:
    """The repr of every module-level value of ours that is not code."""
    import inspect

    out = {}
    for name, module in list(sys.modules.items()):
        if not (name == "tasks" or name.startswith("tasks.")):
            continue
        for var, value in vars(module).items():
            if var.startswith("__") or inspect.ismodule(value) or inspect.isroutine(value) \
                    or inspect.isclass(value):
                continue
            out[f"{name}.{var}"] = repr(value)
    return out


def _process() -> dict:
    from doit import doit_cmd

    return {"umask": _umask(), "cwd": os.getcwd(), "env": dict(os.environ),
            "doit variables": doit_cmd._CMDLINE_VARS,
            "threads": sorted(t.name for t in threading.enumerate()),
            "signals": {s: signal.getsignal(getattr(signal, s)) for s in ("SIGTERM", "SIGINT")},
            "excepthook": sys.excepthook, "stdout": sys.stdout, "stderr": sys.stderr,
            "run": session.current()}


def _umask() -> str:
    with open("/proc/self/status") as f:
        return next(line.split()[1] for line in f if line.startswith("Umask:"))


def test_a_run_leaves_nothing_in_the_process(ab):
    """``main()`` itself (not the tests' harness, which puts things back)
    leaves the process as it found it, run after run."""
    import contextlib
    import importlib
    import io

    from tasks.loader import main

    for name in _module_files():  # every module a run may load, loaded first
        if name != "tasks.__main__":
            importlib.import_module(name)
    stack = f"stack={ab.stack_file}"

    def quiet(*args) -> int:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            return main([stack, *args])

    process = _process()  # before any run
    quiet("list")
    modules = _module_state()  # (after one: what a first run loads is loaded)
    runs = [(), ("list", "--status"), ("status",), ("info", "build:beta"), ("graph",),
            ("-n", "3", "-P", "thread"), ("forget", "build:alpha"), ("--reporter", "json"),
            ("stak=x",), ("dumpdb",)]
    codes = [quiet(*args) for args in runs]
    assert codes == [0, 0, 0, 0, 0, 0, 0, 0, 3, 3]
    assert _module_state() == modules
    assert _process() == process
    assert ab.doit().ran == []  # the runs are independent: this one sees only its own


# --------------------------------------------------------------------------
# Every way in takes the same path


@pytest.fixture
def ways(ab, tmp_path):
    """The tool's command line on ``ab``'s stack, the four ways: plain doit
    in the project folder, doit -f dodo.py from elsewhere, ./stack.sh and
    python -m tasks from elsewhere (``ab.root``); each (argv, cwd)."""
    venv = tmp_path / "venv"  # ./stack.sh's venv: this Python, nothing installed
    write(venv / "bin/python", f"#!/bin/sh\nexec {sys.executable} \"$@\"\n", mode=0o755)
    write(venv / "bin/doit", "#!/bin/sh\nexit 99\n", mode=0o755)
    (venv / ".kps-installed").touch()
    os.utime(venv / ".kps-installed", (2**31, 2**31))  # newer than pyproject.toml
    stack = f"stack={ab.stack_file}"
    return {
        "doit": ([sys.executable, "-m", "doit", stack], ROOT),
        "doit -f": ([sys.executable, "-m", "doit", "-f", str(ROOT / "dodo.py"), stack],
                    ab.root),
        "stack.sh": (["env", f"KPS_VENV={venv}", "bash", str(ROOT / "stack.sh"), stack],
                     ab.root),
        "python -m tasks": ([sys.executable, "-m", "tasks", stack], ab.root),
    }


def _run(way, *args):
    argv, cwd = way
    res = subprocess.run([*argv, *args], cwd=cwd, capture_output=True, text=True,
                         timeout=120)
    return res.returncode, res.stdout, res.stderr


def test_every_way_in_takes_the_same_path(ab, ways):
    top = sorted(os.listdir(ROOT))
    code, out, err = _run(ways["doit"])  # builds everything, from the project folder
    assert code == 0, err
    assert all(f".  {t}" in out for t in ALL_AB), out
    for name, way in ways.items():
        code, out, err = _run(way)  # the no-op, the same way
        assert code == 0, (name, err)
        assert sorted(line[3:] for line in out.splitlines() if line.startswith("-- ")) \
            == sorted(ALL_AB), (name, out)
        # doit's commands that make no sense here say so (tasks/plugins.py);
        # (doit -f from a folder without our pyproject.toml runs doit's own
        # dumpdb, which never loads dodo.py, so nothing of ours is asked)
        if name != "doit -f":
            code, out, err = _run(way, "dumpdb")
            assert code == 3 and err.startswith("ERROR: doit dumpdb is not supported"), \
                (name, err)
        if name in ("stack.sh", "python -m tasks"):  # (the others run as python -m doit)
            code, out, err = _run(way, "tabcompletion")
            assert code == 0 and "complete -o filenames -F _doit doit" in out, (name, out)
        # info on a name that does not exist: a line, not a traceback
        code, out, err = _run(way, "info", "build:alpah")
        assert code == 3 and "did you mean 'build:alpha'?" in err, (name, err)
    # the backends of tasks/plugins.py: a read-only command on another one
    # writes nothing (plain doit, through pyproject.toml)
    before = sorted(p.name for p in ab.workdir.iterdir())
    code, out, err = _run(ways["doit"], "list", "--backend", "json")
    assert code == 0 and "build:alpha" not in out and "build " in out, err
    assert sorted(p.name for p in ab.workdir.iterdir()) == before
    # the loader's refusals (dodo.py handed over to it)
    code, out, err = _run(ways["doit -f"], "stak=x.yaml")
    assert code == 3 and "did you mean 'stack'?" in err, err
    assert sorted(os.listdir(ROOT)) == top  # nothing written where doit ran


def test_stack_sh_runs_ours_from_a_folder_with_a_tasks_package_of_its_own(ab, ways):
    """./stack.sh from a folder holding a ``tasks`` package (a playbook's,
    say) runs this tool, not that package."""
    write(ab.root / "tasks/__init__.py", "")
    write(ab.root / "tasks/__main__.py", "print('not kata-passt-stack')\n")
    code, out, err = _run(ways["stack.sh"], "list")
    assert code == 0 and "not kata-passt-stack" not in out and "build " in out, out + err
