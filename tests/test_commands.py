"""doit's own commands and options on this tool: each either works or says
in one line why not, never with a traceback.  Through the real doit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ALPHA_BETA, ROOT, git

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


# --------------------------------------------------------------------------
# Plain doit, list, info, help, the reporters, -n and stack=

def test_first_run_builds_all_and_second_run_does_nothing(ab):
    first = ab.doit()
    assert sorted(first.ran) == sorted(ALL_AB)
    beta = ab.staged("/usr/local/share/beta/beta.txt").read_text()
    assert beta == "alpha one\nbeta\nhello from the patch\n"
    assert os.access(ab.staged("/usr/local/bin/alpha"), os.X_OK)
    lock = (ab.root / "stack.lock").read_text()
    assert git(ab.up.alpha(), "rev-parse", "v1^{commit}") in lock

    second = ab.doit()
    assert second.ran == []
    assert sorted(second.uptodate) == sorted(ALL_AB)
    assert "$ " not in second.err  # no command ran


def test_state_lives_under_the_workdir(ab):
    ab.doit()
    assert (ab.workdir / ".doit.db").exists()
    assert not (ab.root / ".doit.db").exists()
    from conftest import ROOT
    assert not (ROOT / ".doit.db").exists()
    assert (ab.workdir / "logs" / "build-alpha.log").exists()


def test_parallel_run_then_noop(ab):
    res = ab.doit("-n", "4", "-P", "thread")
    assert sorted(res.ran) == sorted(ALL_AB)
    assert ab.doit("-n", "4", "-P", "thread").ran == []


def test_list_and_info(ab):
    res = ab.doit("list", "--all")
    for name in ALL_AB + ["update:alpha", "reset:beta"]:
        assert name in res.out
    ab.doit()
    (ab.src("beta") / "beta.in").write_text("changed\n")
    res = ab.doit("info", "build:beta", expect=None)
    assert "beta.in" in res.out


@pytest.mark.parametrize("command", [("list", "--all"), ("list", "--status"),
                                     ("info", "build:beta"), ("help",), ("help", "build")])
def test_read_only_commands_write_nothing(ab, tmp_path, command):
    ok = (0, 1) if command[0] == "info" else (0,)  # info exits 1 for a stale task
    fresh = ab.doit(*command, expect=None)
    assert fresh.code in ok, fresh.text
    assert not (ab.root / "build").exists()  # no workdir, no database, no cache
    ab.doit()
    (ab.src("beta") / "beta.in").write_text("changed\n")  # info has something to say
    before = snapshot(tmp_path)
    res = ab.doit(*command, expect=None)
    assert res.code in ok, res.text
    assert snapshot(tmp_path) == before


def test_json_reporter(ab):
    import json
    res = ab.doit("--reporter", "json")
    data = json.loads(res.out)
    assert {t["name"] for t in data["tasks"]} >= set(ALL_AB)


def test_stack_variable_selects_the_spec(project, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    alpha = project.up.alpha()
    (other / "s.yaml").write_text(ALPHA_BETA.split("beta:")[0].join(["", ""]) and
                                  "version: 1\nsettings: {destdir: st}\ncomponents:\n"
                                  + "\n".join("  " + line for line in
                                              ALPHA_BETA.format(alpha=alpha, beta="")
                                              .split("beta:")[0].splitlines()) + "\n")
    project.stack_file = other / "s.yaml"
    project.doit()
    assert (other / "build" / "src" / "alpha" / "bin" / "alpha").exists()
    assert (other / "st" / "usr/local/bin/alpha").exists()
    assert (other / "s.lock").exists()
