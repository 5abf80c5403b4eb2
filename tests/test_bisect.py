"""bisect:NAME through the real dodo.py, on a fixture history of 17 commits.

``widget`` is a small upstream whose commit i makes ``widget`` print
``widget ok i`` until the commit that breaks it (``widget broken i`` from
then on); some commits do not build, hang when run, or change the file a
carried patch touches.  ``alpha`` is the other component, held at its
locked commit.  Every test checks that the user's checkouts, stack.lock,
stamps and installs are exactly as before (a snapshot).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import git, git_init, write

N = 16  # commits after the good one: c0 (good) .. c16 (the pin, bad)
WIDGET_MAKEFILE = """\
PREFIX ?= /usr/local
all: bin/widget
bin/widget: src/widget.in
\t@if grep -q nobuild src/widget.in; then echo "widget: does not build" >&2; exit 1; fi
\tmkdir -p bin
\t(echo '#!/bin/sh'; cat src/widget.in) > bin/widget
\tchmod 755 bin/widget
\techo built >> "$(COUNT)"
install:
\tinstall -D -m 0755 bin/widget $(DESTDIR)$(PREFIX)/bin/widget
"""
NOTES_PATCH = """\
--- a/notes.txt
+++ b/notes.txt
@@ -1 +1,2 @@
 notes v1
+carried by the stack
"""
TEST = "widget | grep -q 'widget ok'"


def widget_upstream(root: Path, bad: int, nobuild=(), hang=(), notes_v2=()) -> list[str]:
    """The widget repository; its commits c0..c16, oldest first."""
    repo = root / "widget"
    git_init(repo)
    write(repo / "Makefile", WIDGET_MAKEFILE)
    write(repo / ".gitignore", "/bin/\n")
    commits = []
    for i in range(N + 1):
        body = f"echo widget {'broken' if i >= bad else 'ok'} {i}\n"
        if i in nobuild:
            body = "# nobuild\n" + body
        if i in hang:
            body = "sleep 600\n" + body
        write(repo / "src/widget.in", body)
        write(repo / "notes.txt", "notes v2\n" if i in notes_v2 else "notes v1\n")
        git(repo, "add", "-A")
        subject = f"widget {i}" + (": break it" if i == bad else "")
        git(repo, "commit", "-q", "-m", subject)
        commits.append(git(repo, "rev-parse", "HEAD"))
    return commits


def setup(project, bad: int = 11, smoke: str = "", **kinds) -> list[str]:
    commits = widget_upstream(project.up.root, bad, **kinds)
    write(project.root / "patches/notes.patch", NOTES_PATCH)
    count = project.root / "builds.txt"
    project.write_stack(textwrap.dedent(f"""\
        alpha:
          git: {project.up.alpha()}
          ref: v1
          build: make
          artifacts: [bin/alpha]
          install: make install
          installs: [$PREFIX/bin/alpha]
        widget:
          git: {project.up.root / 'widget'}
          ref: main
          patches: [patches/notes.patch]
          build: make COUNT={count}
          artifacts: [bin/widget]
          install: make install
          installs: [$PREFIX/bin/widget]
        """))
    if smoke:
        with open(project.stack_file, "a") as f:
            f.write(textwrap.dedent(smoke))
    project.doit()  # the user's stack: fetched, patched, built, installed
    count.write_text("")
    return commits


def files(root: Path, skip=()) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            st = os.lstat(path)
            if os.path.islink(path):
                what = ("link", os.readlink(path))
            elif os.path.isdir(path):
                what = ("dir", oct(st.st_mode))
            else:
                what = ("file", oct(st.st_mode), path.read_bytes())
            out[str(path.relative_to(root))] = what
    return out


def snapshot(project) -> dict:
    """The user's checkouts (HEAD, refs, status, files), stack.lock, the
    stamps, the install records and the destdir."""
    out = {"lock": (project.root / "stack.lock").read_bytes()}
    for name in ("alpha", "widget"):
        co = project.src(name)
        out[name] = (git(co, "rev-parse", "HEAD"), git(co, "for-each-ref"),
                     git(co, "status", "--porcelain", "--ignored"),
                     git(co, "stash", "list"), files(co, skip={".git"}))
    for sub in ("stamps", "installs"):
        out[sub] = files(project.workdir / "state" / sub)
    out["destdir"] = files(project.stage)
    return out


def builds(project) -> int:
    return len((project.root / "builds.txt").read_text().split())


def record(project) -> dict:
    return json.loads((project.workdir / "bisect/widget/bisect.json").read_text())


def bisect(project, *args, expect=0, **kw):
    return project.doit("bisect:widget", *args, expect=expect, **kw)


def verdicts(project) -> dict[str, str]:
    return {s["commit"]: s["verdict"] for s in record(project)["steps"]}


# --------------------------------------------------------------------------


def test_the_first_bad_commit_is_found_in_log2_steps(project):
    c = setup(project, bad=11)
    before = snapshot(project)
    res = bisect(project, f"good={c[0]}", f"bad={c[N]}", f"test={TEST}")
    assert f"the first bad commit is {c[11]}\n    widget 11: break it\n" \
           "    author: Fixture Author <fixture@example.org>" in res.err
    steps = record(project)["steps"]
    assert len(steps) <= math.ceil(math.log2(N))
    for s in steps:  # each step printed: commit, subject, verdict, time, log
        assert f"step {s['n']}: {s['commit'][:12]} {s['subject']}: {s['verdict']} (" in res.err
        assert Path(s["log"]).is_file()
        assert f"log: {Path(s['log']).relative_to(project.root)})" in res.err
        assert s["verdict"] == ("bad" if c.index(s["commit"]) >= 11 else "good")
    assert builds(project) == len(steps)  # widget rebuilt once a step
    assert "build:alpha" in res.ran and res.ran.count("build:alpha") == 1  # alpha held, built once
    assert snapshot(project) == before
    # the bisect's install, never the user's destdir
    assert (project.workdir / "bisect/widget/root/usr/local/bin/widget").is_file()


def test_the_default_test_is_the_smoke_section(project):
    c = setup(project, bad=5, smoke="""\
        smoke:
          commands: [{run: widget, expect: [widget ok]}]
        """)
    before = snapshot(project)
    res = bisect(project, f"good={c[0]}", f"bad={c[N]}")
    assert f"the first bad commit is {c[5]}" in res.err
    assert "command: widget: its output lacks 'widget ok'" in res.err  # why a bad one is bad
    assert snapshot(project) == before


def test_a_middle_commit_that_does_not_build_is_skipped(project):
    c = setup(project, bad=11, nobuild={8})
    before = snapshot(project)
    res = bisect(project, f"good={c[0]}", f"bad={c[N]}", f"test={TEST}")
    assert verdicts(project)[c[8]] == "skip"
    assert f"{c[8][:12]} widget 8: skip (build:widget failed;" in res.err
    assert f"the first bad commit is {c[11]}" in res.err
    assert snapshot(project) == before


def test_a_patch_that_stops_applying_skips_those_commits(project):
    c = setup(project, bad=12, notes_v2={7, 8, 9})
    before = snapshot(project)
    res = bisect(project, f"good={c[0]}", f"bad={c[N]}", f"test={TEST}")
    assert verdicts(project)[c[8]] == "skip"
    assert "skip (the patch series does not apply (patch:widget)" in res.err
    assert f"the first bad commit is {c[12]}" in res.err
    assert snapshot(project) == before


def test_skips_that_hide_the_first_bad_commit_give_the_range(project):
    c = setup(project, bad=8, notes_v2={7, 8, 9})
    before = snapshot(project)
    res = bisect(project, f"good={c[0]}", f"bad={c[N]}", f"test={TEST}")
    assert "the first bad commit cannot be told: skipped commits hide it" in res.err
    assert set(record(project)["result"]["range"]) == {c[7], c[8], c[9], c[10]}
    assert f"{c[10][:12]} widget 10 (Fixture Author <fixture@example.org>): bad" in res.err
    assert snapshot(project) == before


def test_a_test_that_hangs_is_stopped_at_the_timeout_and_skipped(project):
    c = setup(project, bad=11, hang={8})
    started = time.monotonic()
    res = bisect(project, f"good={c[0]}", f"bad={c[N]}", f"test={TEST}", "timeout=2")
    assert time.monotonic() - started < 100
    assert verdicts(project)[c[8]] == "skip"
    assert "skip (the test was still running after 2 s: stopped;" in res.err
    assert f"the first bad commit is {c[11]}" in res.err


def test_a_tree_tested_before_is_not_built_again(project):
    """The same history rewritten (new commit ids, the same trees): every
    step takes the verdict of its tree without a build."""
    c = setup(project, bad=11)
    bisect(project, f"good={c[0]}", f"bad={c[N]}", f"test={TEST}")
    first = record(project)["steps"]
    built = builds(project)
    repo = project.up.root / "widget"
    parent = None
    for i, commit in enumerate(c):
        tree = git(repo, "rev-parse", f"{commit}^{{tree}}")
        args = ["commit-tree", tree, "-m", f"rewritten {i}"] + (["-p", parent] if parent else [])
        parent = git(repo, *args)
        if i == 0:
            good = parent
    git(repo, "update-ref", "refs/heads/rewritten", parent)
    res = bisect(project, f"good={good}", "bad=rewritten", f"test={TEST}")
    second = record(project)["steps"]
    assert builds(project) == built  # not one build
    assert [s["verdict"] for s in second] == [s["verdict"] for s in first]
    assert all("tested before" in s["why"] for s in second)
    assert "the first bad commit is" in res.err and "rewritten 11" in res.err


def test_a_finished_bisect_run_again_says_its_result_without_building(project):
    c = setup(project, bad=11)
    bisect(project, f"good={c[0]}", f"bad={c[N]}", f"test={TEST}")
    built = builds(project)
    res = bisect(project)
    assert f"the first bad commit is {c[11]}" in res.err and builds(project) == built


# --------------------------------------------------------------------------
# Interrupted: kill -9 in the middle, then resume, or abort


def start_and_kill(project, c, after_steps: int = 1):
    """A bisect in a process of its own, killed with SIGKILL once
    ``after_steps`` steps are recorded (its test is slow on purpose)."""
    proc = project.start("bisect:widget", f"good={c[0]}", f"bad={c[N]}",
                         f"test=sleep 1; {TEST}", stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    path = project.workdir / "bisect/widget/bisect.json"
    deadline = time.monotonic() + 120
    try:
        while True:
            assert proc.poll() is None, "the bisect ended before it could be killed"
            assert time.monotonic() < deadline
            try:
                if len(json.loads(path.read_text())["steps"]) >= after_steps:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        time.sleep(0.5)  # into the next step's build or test
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow  # a kill -9 trial: ./test.sh --all (CI) runs it
def test_kill_9_mid_bisect_then_resume(project):
    c = setup(project, bad=11)
    before = snapshot(project)
    start_and_kill(project, c)
    assert snapshot(project) == before  # nothing of the user's was touched
    done = len(record(project)["steps"])
    status = project.doit("status")
    assert "bisect:widget: under way" in status.out
    assert "doit bisect:widget resumes it, doit bisect:widget abort=1 drops it" in status.out
    # the same command again says so, and resumes
    res = bisect(project, f"good={c[0]}", f"bad={c[N]}", f"test=sleep 1; {TEST}")
    assert "resuming the bisect started" in res.err
    assert f"{done} step(s) done (doit bisect:widget abort=1 drops it)" in res.err
    assert f"the first bad commit is {c[11]}" in res.err
    assert len(record(project)["steps"]) <= math.ceil(math.log2(N))
    assert snapshot(project) == before
    assert "bisect:widget" not in project.doit("status").out


@pytest.mark.slow  # a kill -9 trial: ./test.sh --all (CI) runs it
def test_kill_9_mid_bisect_then_abort(project):
    c = setup(project, bad=11)
    before = snapshot(project)
    start_and_kill(project, c)
    res = bisect(project, f"good={c[1]}", f"bad={c[N]}", f"test={TEST}", expect=1)
    assert "a bisect of widget is under way" in res.text
    assert "Hint: doit bisect:widget resumes it; doit bisect:widget abort=1 drops it" in res.text
    res = bisect(project, "abort=1")
    assert "dropped" in res.err
    assert not (project.workdir / "bisect/widget").exists()
    assert snapshot(project) == before
    assert "bisect:widget" not in project.doit("status").out
    res = bisect(project, f"good={c[0]}", f"bad={c[N]}", f"test={TEST}")  # a new one
    assert f"the first bad commit is {c[11]}" in res.err


# --------------------------------------------------------------------------
# What is refused, and what stays out of other runs


def test_a_bisect_needs_both_ends(project):
    setup(project)
    res = bisect(project, "bad=main", f"test={TEST}", expect=1)
    assert "bisect:widget needs the two ends: good=REF" in res.text and "Hint:" in res.text


def test_good_must_be_an_ancestor_of_bad(project):
    c = setup(project)
    res = bisect(project, f"good={c[9]}", f"bad={c[3]}", f"test={TEST}", expect=1)
    assert f"good={c[9]} ({c[9][:12]}) is not an ancestor of bad={c[3]}" in res.text


def test_the_smoke_test_needs_a_smoke_section(project):
    c = setup(project)
    res = bisect(project, f"good={c[0]}", f"bad={c[N]}", expect=1)
    assert "test=smoke: stack.yaml has no 'smoke' section" in res.text


def test_a_bisect_names_its_component(project):
    c = setup(project)
    res = project.doit("bisect", f"good={c[0]}", f"bad={c[N]}", f"test={TEST}", expect=1)
    assert "a bisect runs for one component at a time" in res.text


def test_plain_doit_does_not_load_the_bisect_module(project):
    setup(project)
    code = ("import sys; from tasks.loader import main; "
            f"main(['stack={project.stack_file}']); "
            "print('LOADED' if 'tasks.steps.bisect' in sys.modules else 'NOT LOADED')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], check=True).stdout
    assert "NOT LOADED" in out


def test_the_variables_are_known():
    from tasks.loader import VARIABLES

    assert {"good", "bad", "test", "abort", "timeout"} <= set(VARIABLES)


@pytest.mark.parametrize("name", ["alpha", "widget"])
def test_list_shows_a_bisect_task_per_component(project, name):
    setup(project)
    assert f"bisect:{name}" in project.doit("list", "--all").out


def test_ctrl_c_mid_bisect_says_how_to_resume_or_abort(project):
    c = setup(project, bad=11)
    before = snapshot(project)
    proc = project.start("bisect:widget", f"good={c[0]}", f"bad={c[N]}",
                         f"test=sleep 30; {TEST}")
    path = project.workdir / "bisect/widget/work/logs/smoke.log"
    deadline = time.monotonic() + 120
    while not (path.exists() and "sleep 30" in path.read_text()):  # in the first test
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "bisect:widget: interrupted; the steps done are kept: doit bisect:widget resumes, " \
           "doit bisect:widget abort=1 drops the bisect" in err
    assert snapshot(project) == before
    res = bisect(project, "abort=1")
    assert "dropped" in res.err and snapshot(project) == before


def test_a_bisect_starts_over_when_the_stack_changed(project):
    c = setup(project, bad=11)
    bisect(project, f"good={c[0]}", f"bad={c[N]}", f"test={TEST}")
    built = builds(project)
    project.edit_stack("ref: v1", "ref: v2")  # alpha, held at its locked commit
    res = bisect(project, f"good={c[0]}", f"bad={c[N]}", f"test={TEST}", expect=1)
    assert "alpha has none yet" in res.text and "Hint: run doit fetch first" in res.text
    project.doit()
    res = bisect(project, f"good={c[0]}", f"bad={c[N]}", f"test={TEST}")
    assert "the stack changed since this bisect started" in res.err and "starting over" in res.err
    assert builds(project) > built  # built again, with the new alpha
    assert f"the first bad commit is {c[11]}" in res.err


def test_a_step_after_skips_moves_back_to_older_commits(project):
    """After commits whose series did not apply, the checkout stands at one
    of them, unpatched; the next, older, candidate must still be tested."""
    c = setup(project, bad=3, notes_v2=set(range(8, N)))
    res = bisect(project, f"good={c[0]}", f"bad={c[N]}", f"test={TEST}")
    assert f"the first bad commit is {c[3]}" in res.err
    assert {v for k, v in verdicts(project).items() if c.index(k) < 8} <= {"good", "bad"}


def test_the_image_boot_test_needs_an_image_section(project):
    c = setup(project)
    res = bisect(project, f"good={c[0]}", f"bad={c[N]}", "test=image_boot", expect=1)
    assert "test=image_boot: stack.yaml has no 'image' section to boot" in res.text
