"""What ``doit status`` predicts against what the run then does (tasks/plan.py).

The property: for every kind of change, each task the run runs was in
status's list (as "will run" or "may run"), and each task status said
will run did run.  The changes are applied one after the other to one
fixture stack (the state each run leaves is the next change's starting
point, as in bench/matrix.py), which has a component needing another, a
patch carried in another component's checkout, a series beside stack.yaml,
parts, a submodule, an image and a config built from an installed default.

And a checkout holding commits of the user's: status names them and says
what the run will do about them, in the words the run then uses.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from conftest import (
    ALPHA_BETA,
    KATA_COMPONENTS,
    KATA_IMAGE,
    Project,
    commit_all,
    git,
    git_init,
    image_tools,
    isolated_git_env,
    kata_upstreams,
    kernel_modules,
    write,
)

OTHERS = """\
delta:
  git: {delta}
  ref: v1
  patches: [patches/0001-a.patch, patches/0002-b.patch]
  build: cat a.txt b.txt c.txt > delta.out
  artifacts: [delta.out]
  install: install -D -m 0644 delta.out "$DESTDIR$PREFIX/share/delta/delta.txt"
  installs: [$PREFIX/share/delta/delta.txt]
gamma:
  git: {gamma}
  ref: v1
  parts:
    one: {{build: make one, artifacts: [one.out]}}
    two: {{build: make two, artifacts: [two.out]}}
super:
  git: {sup}
  ref: v1
  submodules: true
  build: make
  artifacts: [super.out]
"""

CONFIG = """\
configs:
  kata:
    path: /etc/kata-containers/configuration.toml
    format: toml
    base: /usr/share/defaults/kata-containers/configuration-qemu.toml
    needs: [kata/runtime, image]
    set:
      hypervisor:
        qemu:
          kernel: ${image.kernel}
          initrd: ${image.initrd}
"""


def _lines(letter: str) -> str:
    return "".join(f"{letter} line {i}\n" for i in range(1, 9))


def _diff(name: str, old: str, new: str) -> str:
    body = "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                        f"a/{name}", f"b/{name}"))
    return f"diff --git a/{name} b/{name}\n" + body


def _patched(letter: str, line: int, text: str = "patched") -> str:
    """A patch of ``<letter>.txt`` changing one line."""
    old = _lines(letter)
    return _diff(f"{letter}.txt", old, old.replace(f"{letter} line {line}\n",
                                                   f"{letter} line {line} {text}\n"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The fixture stack, built and up to date; ``.tool_env`` for doit."""
    root = tmp_path_factory.mktemp("predict")
    with isolated_git_env(root):
        p = Project(root)
        delta = p.up.root / "delta"
        git_init(delta)
        for letter in "abc":
            write(delta / f"{letter}.txt", _lines(letter))
        commit_all(delta, "delta", tag="v1")
        write(root / "patches/0001-a.patch", _patched("a", 2))
        write(root / "patches/0002-b.patch", _patched("b", 2))
        p.write_stack(ALPHA_BETA.format(alpha=p.up.alpha(), beta=p.up.beta())
                      + OTHERS.format(delta=delta, gamma=p.up.gamma(),
                                      sup=p.up.with_submodule())
                      + KATA_COMPONENTS.format(**kata_upstreams(p.up)))
        modules = kernel_modules(root / "modroot", "5.10.0-test", "5.15.0-test")
        with open(p.stack_file, "a") as f:
            f.write(KATA_IMAGE.format(modules=modules) + CONFIG)
        p.tool_env = image_tools(root / "tools")
        p.doit(env=p.tool_env)
        assert p.doit(env=p.tool_env).ran == []
    return p


def prediction(out: str) -> tuple[set[str], set[str]]:
    """(will run, may run) as status lists them; the summary line must
    count each apart."""
    will, may, header = [], [], None
    for line in out.splitlines():
        if line.startswith("a plain doit would run"):
            header = line
        elif header and line.startswith("  "):
            tid, why = line.split(None, 1)
            (may if why.startswith("may run: if ") else will).append(tid)
    if header is None:
        raise AssertionError(f"no 'a plain doit would run' line in:\n{out}")
    if will or may:
        more = f", and {len(may)} more may run" if may else ""
        assert header == f"a plain doit would run {len(will)} task(s){more}, in this order:"
    else:
        assert header == "a plain doit would run nothing: everything is up to date"
    return set(will), set(may)


@dataclass
class Change:
    name: str
    apply: Callable[[], None]
    must: frozenset[str] = frozenset()  # what the run must run (the change did something)
    skipped: frozenset[str] = frozenset()  # predicted "may run", and the run skips them


def changes(p: Project) -> list[Change]:
    src, staged = p.src, p.staged

    def stack_edit(old: str, new: str):
        return lambda: p.edit_stack(old, new)

    def append(path, text: str):
        def apply():
            with open(path, "a") as f:
                f.write(text)
        return apply

    def touch_all():
        for top, dirs, files in os.walk(p.workdir / "src"):
            dirs[:] = [d for d in dirs if d != ".git"]
            for name in files:
                os.utime(os.path.join(top, name))

    def write_patch(name: str, text: str):
        return lambda: write(p.root / "patches" / name, text)

    alpha_in = src("alpha") / "src/alpha.in"
    carried = src("alpha") / "contrib/beta/0001-beta-greets.patch"
    v2 = git(p.up.alpha(), "rev-parse", "v2^{commit}")
    default = "/usr/share/defaults/kata-containers/configuration-qemu.toml"
    beta_chain = {"build:alpha", "install:alpha", "build:beta", "install:beta"}
    s = frozenset
    return [
        Change("nothing changed", lambda: None),
        Change("every file in every checkout touched", touch_all),
        Change("ref bump (alpha v1 -> v2)", stack_edit("ref: v1", "ref: v2"),
               s({"fetch:alpha", "patch:alpha"} | beta_chain)),
        Change("re-pinned to the same commit by hash (alpha)", stack_edit("ref: v2", f"ref: {v2}"),
               s({"fetch:alpha"}), s({"patch:alpha", "build:alpha"})),
        Change("git URL of the same repository (gamma, file://)",
               stack_edit(f"git: {p.up.gamma()}", f"git: file://{p.up.gamma()}"),
               s({"fetch:gamma"})),
        Change("patch edited (delta 0001)", write_patch("0001-a.patch", _patched("a", 3)),
               s({"patch:delta", "build:delta", "install:delta"})),
        Change("series reordered, same tree (delta)",
               stack_edit("[patches/0001-a.patch, patches/0002-b.patch]",
                          "[patches/0002-b.patch, patches/0001-a.patch]"),
               s({"patch:delta"}), s({"build:delta"})),
        Change("patch reworded, same diff (delta 0002)",
               write_patch("0002-b.patch", "A few words before the diff.\n\n"
                           + _patched("b", 2)),
               s({"patch:delta"}), s({"build:delta"})),
        Change("patch added (delta 0003)",
               lambda: (write(p.root / "patches/0003-c.patch", _patched("c", 5)),
                        p.edit_stack("patches/0001-a.patch]",
                                     "patches/0001-a.patch, patches/0003-c.patch]")),
               s({"patch:delta", "build:delta", "install:delta"})),
        Change("patch removed (delta 0003)",
               stack_edit(", patches/0003-c.patch]", "]"),
               s({"patch:delta", "build:delta", "install:delta"})),
        Change("local edit (alpha src/alpha.in)", append(alpha_in, "mine\n"), s(beta_chain)),
        Change("that edit committed in the checkout", lambda: git(src("alpha"), "commit", "-q",
                                                                   "-am", "mine")),
        Change("untracked file added (beta NOTES)",
               lambda: write(src("beta") / "NOTES", "notes\n"), s({"build:beta"}),
               s({"install:beta"})),
        Change("untracked file removed (beta NOTES)", lambda: (src("beta") / "NOTES").unlink(),
               s({"build:beta"})),
        Change("ignored file added (alpha bin/scratch)",
               lambda: write(src("alpha") / "bin/scratch", "x\n")),
        Change("env change in one part (gamma/one)",
               stack_edit("one: {build: make one,", "one: {env: {KPS_X: '1'}, build: make one,"),
               s({"build:gamma/one"})),
        Change("build command change (delta)",
               stack_edit("c.txt > delta.out", "c.txt >delta.out"), s({"build:delta"}),
               s({"install:delta"})),
        Change("install command change, same content (alpha)",
               stack_edit("install: make install\n", "install: make install V=1\n"),
               s({"install:alpha"}), s({"build:beta"})),
        Change("artifact deleted, rebuilt byte-identical (alpha bin/alpha)",
               lambda: (src("alpha") / "bin/alpha").unlink(), s({"build:alpha"}),
               s({"install:alpha"})),
        Change("one part's artifact deleted (gamma two.out)",
               lambda: (src("gamma") / "two.out").unlink(), s({"build:gamma/two"})),
        Change("installed file deleted (beta)",
               lambda: staged("/usr/local/share/beta/beta.txt").unlink(), s({"install:beta"})),
        Change("needed component reinstalled, same content (alpha's installed file deleted)",
               lambda: staged("/usr/local/bin/alpha").unlink(), s({"install:alpha"})),
        Change("needed component reinstalled, different content (alpha edit)",
               append(alpha_in, "more\n"), s(beta_chain)),
        Change("patch carried in another checkout edited (beta's, in alpha)",
               lambda: carried.write_text(carried.read_text().replace(
                   "+hello from the patch", "+hello, edited")),
               s({"patch:beta", "build:alpha", "build:beta", "install:beta"}),
               s({"install:alpha"})),
        Change("local edits undone (alpha)", lambda: git(src("alpha"), "checkout", "--", "."),
               s({"patch:beta"} | beta_chain)),
        Change("edit inside a submodule (super lib/lib.txt)",
               append(src("super") / "lib/lib.txt", "mine\n"), s({"build:super"})),
        Change("submodule edit undone",
               lambda: git(src("super") / "lib", "checkout", "--", "."), s({"build:super"})),
        Change("a local commit (super)",
               lambda: (write(src("super") / "Makefile", "all:\n\tcat lib/lib.txt lib/lib.txt"
                              " > super.out\n"),
                        git(src("super"), "commit", "-q", "-am", "twice")), s({"build:super"})),
        Change("that commit dropped (super)",
               lambda: git(src("super"), "checkout", "-q", "--detach", "HEAD~1"),
               s({"build:super"})),
        Change("jobs 2 -> 3", stack_edit("jobs: 2", "jobs: 3")),
        Change("stack.yaml comment only", stack_edit("components:\n", "components:\n  # c\n")),
        Change("prefix /usr/local -> /opt/kps",
               stack_edit("jobs: 3", "jobs: 3\n  prefix: /opt/kps"),
               s({"install:alpha", "build:beta", "install:qemu"})),
        Change("destdir stage -> stage2", stack_edit("destdir: stage", "destdir: stage2"),
               s({"install:alpha", "install:delta", "image", "config:kata"})),
        Change("config base edited (the installed default)",
               append(p.root / "stage2" / default.lstrip("/"), "# a line the new default has\n"),
               s({"config:kata"})),
        Change("config template changed (a value set)",
               stack_edit("initrd: ${image.initrd}\n",
                          "initrd: ${image.initrd}\n          kernel_params: quiet\n"),
               s({"config:kata"})),
        Change("image input changed (kernel 5.10 -> 5.15)",
               stack_edit("kernel: 5.10.0-test", "kernel: 5.15.0-test"),
               s({"image", "config:kata"})),
        Change("ref bump changing one part's input (kata v1 -> v2: the agent)",
               stack_edit(f"git: {p.up.root / 'kata'}\n    ref: v1",
                          f"git: {p.up.root / 'kata'}\n    ref: v2"),
               s({"fetch:kata", "build:kata/agent", "install:kata/agent", "image"}),
               s({"install:kata/runtime"})),
        Change("checkout removed (gamma)",
               lambda: shutil.rmtree(src("gamma")),
               s({"fetch:gamma", "patch:gamma", "build:gamma/one", "build:gamma/two"})),
    ]


def test_every_task_that_runs_was_predicted_and_every_sure_one_runs(stack):
    """At least 20 kinds of change; all failures are reported together."""
    env = stack.tool_env
    found, kinds = [], 0
    for change in changes(stack):
        try:
            change.apply()
        except (OSError, AssertionError) as err:
            found.append(f"{change.name}: cannot be made: {err}")
            continue
        will, may = prediction(stack.doit("status", env=env).out)
        res = stack.doit(env=env, expect=None)
        ran = set(res.ran)
        kinds += bool(change.must)
        problems = []
        if res.code != 0:
            problems.append(f"the run failed:\n{res.text[-2000:]}")
        if ran - will - may:
            problems.append(f"ran but not predicted: {sorted(ran - will - may)}")
        if will - ran:
            problems.append(f"predicted to run for sure, not run: {sorted(will - ran)}")
        if change.must - ran:
            problems.append(f"the change did not take: {sorted(change.must - ran)} did not run")
        if change.skipped - (may - ran):
            problems.append(f"expected 'may run' and skipped: {sorted(change.skipped)}; "
                            f"may run: {sorted(may)}, ran: {sorted(ran)}")
        if problems:
            found.append(f"{change.name}:\n  " + "\n  ".join(problems))
    assert kinds >= 20
    assert not found, "\n".join(found)


# --------------------------------------------------------------------------
# Local commits in a checkout


def _commit(ab: Project, text: str, message: str) -> None:
    write(ab.src("alpha") / "src/alpha.in", text)
    git(ab.src("alpha"), "commit", "-q", "-am", message)


def _since(ab: Project) -> str:
    """Where doit last put alpha's HEAD (what 'drop them' goes back to)."""
    return git(ab.up.alpha(), "rev-parse", "v1^{commit}")[:12]


def test_status_names_local_commits_and_the_run_refuses_in_its_words(ab):
    ab.doit()
    _commit(ab, "mine\n", "my change")
    _commit(ab, "mine, again\n", "my second change")
    head = git(ab.src("alpha"), "rev-parse", "HEAD")
    out = ab.doit("status").out
    # Until the checkout has to move they are the checkout's content: built.
    assert re.search(r"^alpha .* 0 local edit\(s\), 2 local commit\(s\) .* stale: the "
                     r"checkout holds another tree$", out, re.M), out
    assert "refuse" not in out
    ab.doit()
    ab.edit_stack("ref: v1", "ref: v2")
    out = ab.doit("status").out
    path = ab.src("alpha")
    said = "its checkout holds 2 local commit(s) on no branch, not on v2"
    hint = (f"keep them on a branch (git -C {path} branch my-work) or drop them "
            f"(git -C {path} checkout --detach {_since(ab)}), then run doit again")
    assert f"alpha: {said}: if patch:alpha runs, it will refuse to move it, and the run " \
           "stops there" in out, out
    assert f"  Hint: {hint}" in out
    res = ab.doit(expect=1)
    assert f"alpha: its pin or patch series changed, but {said}:" in res.text
    assert re.search(r"^  [0-9a-f]+ my second change\n  [0-9a-f]+ my change$", res.text, re.M)
    assert f"Hint: {hint}" in res.text
    assert "Traceback" not in res.text
    assert git(path, "rev-parse", "HEAD") == head  # nothing of the user's was moved
    # Following the hint's first half: kept on a branch, the run moves on.
    git(path, "branch", "my-work")
    out = ab.doit("status").out
    assert "alpha: its checkout holds 2 local commit(s) kept on a branch or tag: patch:alpha " \
           "will move the checkout to v2; they stay there, not built" in out, out
    assert "patch:alpha" in ab.doit().ran
    assert git(path, "rev-parse", "my-work") == head
    assert "local commit" not in ab.doit("status").out


def test_dropping_local_commits_as_the_hint_says_lets_the_run_go_on(ab):
    ab.doit()
    _commit(ab, "mine\n", "my change")
    ab.edit_stack("ref: v1", "ref: v2")
    res = ab.doit(expect=1)
    drop = re.search(r"drop them \((git -C \S+ checkout --detach [0-9a-f]+)\)", res.text)
    assert drop, res.text
    subprocess.run(shlex.split(drop.group(1)), check=True, capture_output=True)
    assert "local commit" not in ab.doit("status").out
    assert "patch:alpha" in ab.doit().ran
    assert ab.staged("/usr/local/bin/alpha").read_text().endswith("echo alpha two\n")


def test_local_commits_on_the_users_branch_are_left_there(ab):
    ab.doit()
    git(ab.src("alpha"), "checkout", "-q", "-b", "mine")
    _commit(ab, "mine\n", "my change")
    ab.edit_stack("ref: v1", "ref: v2")
    out = ab.doit("status").out
    assert "alpha: its checkout holds 1 local commit(s) on your branch 'mine': if patch:alpha " \
           "runs, it will move the checkout to v2; they stay there, not built" in out, out
    res = ab.doit()
    assert "the checkout was on your branch 'mine' (kept, not built)" in res.err
    assert git(ab.src("alpha"), "log", "-1", "--format=%s", "mine") == "my change"
