"""doit's own commands and options on this tool: each either works or says
in one line why not, never with a traceback.  Through the real doit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT

ALL_AB = ["check", "fetch:alpha", "fetch:beta", "patch:alpha", "patch:beta", "build:alpha",
          "install:alpha", "build:beta", "install:beta"]


def snapshot(root) -> dict:
    """Every path under ``root`` with its content (or link target) and mtime."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        body = os.readlink(p) if p.is_symlink() else (p.read_bytes() if p.is_file() else b"")
        out[str(p.relative_to(root))] = (st.st_mtime_ns, st.st_mode, body)
    return out


def databases_in(folder) -> list[str]:
    """doit's database files in ``folder`` (doit runs in dodo.py's folder:
    a relative name such as ':memory:' lands there)."""
    return sorted(n for n in os.listdir(folder) if n.startswith((".doit", ":memory:")))


def one_error(res) -> str:
    """The error line doit printed (and its Hint), checked for tracebacks."""
    assert "Traceback" not in res.text, res.text
    lines = [line for line in res.err.splitlines() if line.strip()]
    assert lines and lines[0].startswith("ERROR: "), res.text
    return "\n".join(lines)


# --------------------------------------------------------------------------
# doit help TASK: what runs, and when it reruns


def test_help_says_what_runs_and_when_it_reruns(ab):
    expected = {
        "fetch:alpha": ["fetch alpha v1 from", "reruns when", "stack.lock moves the commit"],
        "patch:beta": ["apply 1 patch(es)", "reruns when the base commit"],
        "build:beta": ['runs make ALPHA="$DESTDIR$PREFIX/bin/alpha"', "reruns when",
                       "alpha is reinstalled with other content", "an artifact is missing"],
        "build:alpha": ["runs make;", "reruns when"],
        "install:alpha": ["runs make install", "reruns when", "an installed file"],
    }
    for task, fragments in expected.items():
        out = ab.doit("help", task).out
        for fragment in fragments:
            assert fragment in out, f"help {task}: no {fragment!r} in:\n{out}"
    # plain doit list keeps one short line per group (dodo.py's docstrings)
    listing = {line.split()[0]: line for line in ab.doit("list").out.splitlines()}
    for group in ("fetch", "patch", "build"):
        assert len(listing[group]) < 120 and "reruns" in listing[group], listing[group]


def test_help_on_image_and_config_says_when_they_rerun(kata):
    with open(kata.stack_file, "a") as f:
        f.write("configs:\n  crictl:\n    path: /etc/crictl.yaml\n    format: yaml\n"
                "    set: {timeout: 10}\n")
    image = kata.doit("help", "image", env=kata.tool_env).out
    assert "with mbuto -p kata" in image and "reruns when" in image
    assert "the image is missing" in image
    config = kata.doit("help", "config:crictl", env=kata.tool_env).out
    assert "write /etc/crictl.yaml" in config and "reruns when" in config
    assert "the file is missing" in config


# --------------------------------------------------------------------------
# KPS_PROGRESS_INTERVAL


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan", "inf"])
def test_a_bad_progress_interval_is_refused_at_start(ab, value):
    res = ab.doit(env={"KPS_PROGRESS_INTERVAL": value}, expect=3)
    text = one_error(res)
    assert text.splitlines()[0] == (f"ERROR: KPS_PROGRESS_INTERVAL={value!r}: expected a number "
                                    "of seconds above 0 (default 60)")
    assert text.splitlines()[1].startswith("Hint: ")
    assert res.ran == [] and not ab.workdir.exists()  # refused before anything ran


@pytest.mark.parametrize("value", ["0.5", "120", ""])  # empty: as if unset
def test_a_good_progress_interval_is_taken(ab, value):
    res = ab.doit("build:alpha", env={"KPS_PROGRESS_INTERVAL": value})
    assert "build:alpha" in res.ran


# --------------------------------------------------------------------------
# doit info


def test_info_on_an_unknown_task_says_so_in_a_line(ab):
    res = ab.doit("info", "nosuch:task", expect=3)
    text = one_error(res)
    assert "no task 'nosuch:task'" in text
    assert "Hint: doit list --all" in text
    assert len(text.splitlines()) == 2  # the line and its hint


def test_info_on_a_mistyped_task_names_the_closest(ab):
    res = ab.doit("info", "build:alpah", expect=3)
    assert "did you mean 'build:alpha'?" in one_error(res)


# --------------------------------------------------------------------------
# doit --backend


@pytest.mark.parametrize("backend", ["json", "dbm"])
def test_another_backend_works_beside_the_default(ab, backend):
    ab.doit()  # doit's database in the default backend (sqlite3)
    res = ab.doit("--backend", backend)
    assert "Traceback" not in res.text
    assert res.ran == [] and sorted(res.uptodate) == sorted(ALL_AB)
    (ab.src("beta") / "beta.in").write_text("edited\n")
    res = ab.doit("--backend", backend)
    assert "build:beta" in res.ran
    res = ab.doit()  # and back: neither reads the other's file
    assert "Traceback" not in res.text and res.ran == []


def test_json_backend_from_a_fresh_workdir_then_the_default(ab):
    ab.doit("--backend", "json")
    res = ab.doit()
    assert "Traceback" not in res.text and res.ran == []


@pytest.mark.parametrize("command", [("list", "--backend", "json"),
                                     ("info", "--backend", "json", "build:beta"),
                                     ("--backend", "json", "status")])
def test_read_only_commands_on_json_write_nothing(ab, tmp_path, command):
    ab.doit()
    before = snapshot(tmp_path)
    project_files = databases_in(ROOT)
    res = ab.doit(*command, expect=None)
    assert res.code == 0 and "Traceback" not in res.text, res.text
    assert snapshot(tmp_path) == before
    assert databases_in(ROOT) == project_files


# --------------------------------------------------------------------------
# doit dumpdb, run where dodo.py is (it never loads dodo.py)


def test_dumpdb_through_plain_doit_says_what_to_use(tmp_path):
    before = databases_in(ROOT)
    res = subprocess.run([sys.executable, "-m", "doit", "dumpdb"], cwd=ROOT, text=True,
                         capture_output=True, timeout=60)
    assert res.returncode == 3, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        "ERROR: doit dumpdb is not supported by kata-passt-stack: what each task last ran for "
        "is in <workdir>/state/stamps/*.json (doit info TASK says in words why it would run)"]
    assert databases_in(ROOT) == before
