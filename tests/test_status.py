"""status, graph, show:NAME, try:NAME, check named, the run summary; and
list --status / info agreeing with what a run does (tasks/plan.py)."""

from __future__ import annotations

import json
import re

import pytest
from conftest import commit_all, git, write
from test_commands import snapshot as _snapshot


def _status(ab, may: set | None = None):
    """status's output, its component lines by name, and the tasks it lists
    (those that may run also go into ``may``)."""
    res = ab.doit("status")
    lines = res.out.splitlines()
    comp = {line.split()[0]: line for line in lines if line and not line.startswith(" ")
            and not line.startswith("a plain")}
    todo, seen = [], False
    for line in lines:
        if line.startswith("a plain doit would run"):
            seen = True
        elif seen and line.startswith("  "):
            todo.append(line.split()[0])
            if may is not None and line.split()[1:3] == ["may", "run:"]:
                may.add(todo[-1])
    return res, comp, todo


def test_status_after_a_ref_change_names_downstream_tasks_and_matches_the_run(ab):
    ab.doit()
    ab.edit_stack("ref: v1", "ref: v2")
    may = set()
    res, comp, todo = _status(ab, may)
    old = git(ab.src("alpha"), "rev-parse", "v1^{commit}")[:12]
    assert "stale: ref v1 -> v2" in comp["alpha"]
    # Before fetching, v2's commit is not known; nor what alpha's v2 holds
    # for beta: all of that may run, and each line says on what it depends.
    assert "may run: if patch:alpha changes the patch it reads from alpha's checkout " \
           "(ref v1 -> v2)" in comp["beta"]
    assert "1 patch(es) applied" in comp["beta"] and "0 local edit(s)" in comp["beta"]
    assert "built, installed" in comp["alpha"]
    assert "a plain doit would run 1 task(s), and 6 more may run, in this order:" in res.out
    assert f"patch:alpha    may run: if v2 names another commit than {old} (ref v1 -> v2)" \
        in res.out
    assert "install:alpha  may run: if build:alpha's artifacts come out different" in res.out
    assert "build:beta     may run: if patch:beta gives a different tree" in res.out
    assert set(todo) - may == {"fetch:alpha"}
    ran = ab.doit().ran
    assert ran == ["fetch:alpha", "patch:alpha", "build:alpha", "install:alpha", "build:beta",
                   "install:beta"]
    assert set(ran) <= set(todo) and todo == ran[:2] + ["patch:beta"] + ran[2:]
    _, comp, todo = _status(ab)
    assert todo == [] and comp["beta"].endswith("up to date")


def test_list_status_and_info_agree_with_the_run(ab):
    ab.doit()
    ab.edit_stack("ref: v1", "ref: v2")
    listed = ab.doit("list", "--status", "--all").out
    status = dict(line.split()[:2][::-1] for line in listed.splitlines() if line[:2] in
                  ("R ", "U "))
    # what may run counts as run there: they say up to date only when sure
    assert status["build:beta"] == "R" and status["install:beta"] == "R"
    assert status["patch:beta"] == "R" and status["check"] == "U" and status["fetch:beta"] == "U"
    info = ab.doit("info", "patch:alpha", expect=None)
    assert "may run: if v2 names another commit than" in info.out
    assert "not resolved yet" not in info.out
    assert "may run: if patch:beta gives a different tree (ref v1 -> v2)" in \
        ab.doit("info", "build:beta", expect=None).out


def test_status_reasons_patch_edit_and_missing_install(ab):
    ab.doit()
    other = ab.src("alpha") / "contrib/beta/0001-beta-greets.patch"
    other.write_text(other.read_text().replace("+hello from the patch", "+hello, edited"))
    may = set()
    _, comp, todo = _status(ab, may)
    assert re.search(r"stale: patch contrib/beta/0001-beta-greets.patch \(in alpha's "
                     r"checkout\) changed", comp["beta"])
    assert "stale: local edits: contrib/beta/0001-beta-greets.patch" in comp["alpha"]
    assert "1 local edit(s)" in comp["alpha"]
    # What only building can tell: alpha's artifact comes out the same, so
    # install:alpha (which may run, and says so) is not run.
    assert todo == ["patch:beta", "build:alpha", "install:alpha", "build:beta", "install:beta"]
    assert may == {"install:alpha", "build:beta", "install:beta"}
    assert sorted(ab.doit().ran) == sorted(set(todo) - {"install:alpha"})
    write(ab.src("beta") / "beta.in", "one\n")
    write(ab.src("beta") / "new.txt", "two\n")
    write(ab.src("beta") / "zzz.txt", "three\n")
    _, comp, _ = _status(ab)
    assert "stale: local edits: beta.in (+2 more)" in comp["beta"]
    git(ab.src("beta"), "checkout", "beta.in")
    for f in ("new.txt", "zzz.txt"):
        (ab.src("beta") / f).unlink()
    ab.staged("/usr/local/bin/alpha").unlink()
    _, comp, todo = _status(ab)
    assert f"installed file missing: {ab.staged('/usr/local/bin/alpha')}" in comp["alpha"]
    assert todo == ["install:alpha"]  # the same content: beta does not follow
    assert ab.doit().ran == todo


def test_status_writes_nothing(ab, tmp_path):
    ab.doit()
    ab.edit_stack("ref: v1", "ref: v2")
    (ab.src("beta") / "beta.in").write_text("changed\n")
    before = _snapshot(tmp_path)
    ab.doit("status")
    ab.doit("show:beta")
    assert _snapshot(tmp_path) == before


def test_status_works_while_another_run_holds_the_lock(ab):
    import fcntl
    import os
    ab.doit()
    fd = os.open(ab.workdir / ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        assert "would run nothing" in ab.doit("status").out
    finally:
        os.close(fd)


def test_graph_writes_dot_and_mermaid_with_needs_and_stale_marks(ab):
    ab.doit()
    ab.edit_stack("ref: v1", "ref: v2")
    res = ab.doit("graph")
    dot = (ab.workdir / "graph.dot").read_text()
    mmd = (ab.workdir / "graph.mmd").read_text()
    assert "graph.dot" in res.out and "graph.mmd" in res.out
    assert '"install:alpha" -> "build:beta";' in dot
    assert '"fetch:alpha" -> "patch:alpha";' in dot
    assert re.search(r'"fetch:alpha" \[fillcolor="#f8c471", tooltip="ref v1 -> v2"', dot)
    assert re.search(r'"build:beta" \[fillcolor="#fdebd0", style="rounded,filled,dashed", '
                     r'tooltip="may run: if patch:beta gives a different tree', dot)
    assert re.search(r'"fetch:beta" \[fillcolor="#d5f5e3", tooltip="up to date', dot)
    assert "1 would run" in res.out and "6 more may run" in res.out
    assert 'label="alpha"' in dot and 'label="beta"' in dot
    ids = dict(re.findall(r'(t\d+)\["([^"]+)"\]', mmd))
    names = {v: k for k, v in ids.items()}
    assert f"{names['install:alpha']} --> {names['build:beta']}" in mmd
    assert f"class {names['fetch:alpha']} stale" in mmd
    assert f"class {names['build:beta']} maybe" in mmd
    assert f"class {names['fetch:beta']} fresh" in mmd


def test_show_prints_the_resolved_component(ab):
    ab.doit()
    out = ab.doit("show:beta").out
    commit = git(ab.src("beta"), "rev-parse", "v1^{commit}")
    assert f"commit:     {commit}" in out
    assert f"git:        {ab.up.beta()}" in out
    assert "contrib/beta/0001-beta-greets.patch (in alpha's checkout): applied" in out
    assert '$ make ALPHA="$DESTDIR$PREFIX/bin/alpha"' in out
    assert f'= make ALPHA="{ab.stage}/usr/local/bin/alpha"' in out
    assert "needs:      alpha" in out and "artifacts:  out/beta" in out
    assert "installs:   /usr/local/share/beta/beta.txt" in out
    assert "build-beta.log" in out
    assert "needed by:  beta" in ab.doit("show:alpha").out


def test_show_names_the_stack_file_it_read(ab):
    mine = ab.stack_file.with_name("mine.yaml")
    mine.write_text(ab.stack_file.read_text())
    ab.stack_file = mine
    out = ab.doit("show:alpha").out
    assert re.search(r"^alpha  \(mine\.yaml line \d+\)$", out, re.M), out


def test_check_named_prints_its_report_even_when_up_to_date(ab):
    ab.doit()
    res = ab.doit("check")
    assert "check" in res.uptodate  # nothing it looks at changed: not rerun
    assert re.search(r"^  ok +git +/\S+/git ", res.err, re.M)  # but its report is shown
    assert "(up to date: nothing it looks at changed" in res.err
    assert "ok      git" not in ab.doit("fetch:alpha").err  # only when named


def test_the_summary_lists_what_ran_and_json_stays_json(ab):
    res = ab.doit()
    summary = res.err[res.err.index("summary:"):]
    assert "9 task(s) ran" in summary
    for tid in ("fetch:alpha", "build:beta", "install:beta"):
        assert re.search(rf"^  {re.escape(tid)} +\d+\.\ds  ok$", summary, re.M)
    assert "summary:" not in ab.doit().err  # nothing ran
    (ab.src("beta") / "beta.in").write_text("changed\n")
    data = ab.doit("--reporter", "json")
    json.loads(data.out)
    assert "summary: 2 task(s) ran" in data.err
    ab.edit_stack('build: make ALPHA', 'build: false && make ALPHA')
    bad = ab.doit(expect=None)
    assert re.search(r"build:beta +\d+\.\ds  FAILED  \(log: build/logs/build-beta.log\)",
                     bad.err)


TRY_BASE = "line 1\nline 2\nline 3\nline 4\nline 5\nline 6\nline 7\nline 8\n"


def _diff(old: str, new: str, name: str) -> str:
    import difflib
    body = "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                        f"a/{name}", f"b/{name}"))
    return f"diff --git a/{name} b/{name}\n" + body


@pytest.fixture
def series(project):
    """gamma-like upstream with v1 and v2; three patches against v1: one
    still applies on v2, one is in v2 already, one conflicts with v2."""
    from conftest import git_init
    up = project.root / "upstream" / "delta"
    git_init(up)
    write(up / "a.txt", TRY_BASE)
    write(up / "b.txt", "b one\n")
    write(up / "c.txt", "c one\n")
    commit_all(up, "v1", tag="v1")
    a1 = TRY_BASE.replace("line 5\n", "line 5 patched\n")
    b1 = "b one\nb fixed\n"
    c1 = "c one patched\n"
    patches = project.root / "patches" / "delta"
    write(patches / "0001-a.patch", _diff(TRY_BASE, a1, "a.txt"))
    write(patches / "0002-b.patch", _diff("b one\n", b1, "b.txt"))
    write(patches / "0003-c.patch", _diff("c one\n", c1, "c.txt"))
    write(up / "a.txt", "line 0\n" + TRY_BASE)  # moves the hunk: offset
    write(up / "b.txt", b1)  # upstream took 0002
    write(up / "c.txt", "c two\n")  # 0003 conflicts
    commit_all(up, "v2", tag="v2")
    project.write_stack(f"""\
        delta:
          git: {up}
          ref: v1
          patches: [patches/delta/0001-a.patch, patches/delta/0002-b.patch,
                    patches/delta/0003-c.patch]
          build: "true"
        """)
    return project


def test_try_reports_each_patch_and_changes_nothing(series, tmp_path, monkeypatch):
    series.doit()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    before = _snapshot(series.workdir), (series.root / "stack.lock").read_text()
    res = series.doit("try:delta", "ref=v2", env={"TMPDIR": str(scratch)})
    out = res.out
    assert re.search(r"0001-a.patch: applies with offset: hunk 1 at line \d+ \(offset 1\)", out)
    assert "0002-b.patch: already upstream" in out
    assert re.search(r"0003-c.patch: CONFLICTS: c.txt \(hunk at line 1\)", out)
    assert (_snapshot(series.workdir), (series.root / "stack.lock").read_text()) == before
    assert list(scratch.iterdir()) == []
    assert series.doit().ran == []
    clean = series.doit("try:delta", "ref=v1", env={"TMPDIR": str(scratch)}).out
    assert clean.count("applies cleanly") == 3


def test_try_without_ref_says_how(series):
    series.doit()
    res = series.doit("try:delta", expect=None)
    assert res.code != 0 and "ref=REF" in res.text


def test_stack_sh_help_lists_the_commands_and_variables():
    import subprocess

    from conftest import ROOT
    for flag in ("--help", "-h"):
        out = subprocess.run([str(ROOT / "stack.sh"), flag], capture_output=True, text=True,
                             check=True).stdout
        for word in ("status", "show:NAME", "graph", "try:NAME", "run_pod", "stop_pod",
                     "update", "reset", "uninstall", "stack=", "force=", "ref=", "help"):
            assert word in out, word


def test_doit_help_says_when_a_task_reruns(ab):
    assert "reruns every time" in ab.doit("help", "status").out
    assert "reruns on edits" in ab.doit("help", "build").out


def test_status_has_a_line_per_part(project):
    project.write_stack(f"""\
        gamma:
          git: {project.up.gamma()}
          ref: v1
          parts:
            one: {{build: make one, artifacts: [one.out]}}
            two: {{build: make two, artifacts: [two.out]}}
        """)
    project.doit()
    (project.src("gamma") / "two.out").unlink()
    out = project.doit("status").out
    assert re.search(r"^gamma +v1 @ [0-9a-f]{12} +no patches +0 local edit\(s\) +up to date$",
                     out, re.M), out
    assert re.search(r"^  gamma/one +built, installed +up to date$", out, re.M), out
    assert re.search(r"^  gamma/two +built, installed +stale: artifact missing: two.out$",
                     out, re.M), out
    assert "  build:gamma/two" in out and "build:gamma/one " not in out
