"""An install without ``artifacts`` installs from its checkout: it follows
its build, end to end (real git, real doit).

With no artifacts to compare, what the install copies from is what its build
ran on (the checkout's content, the build's commands and needs), so the
install reruns whenever that changed: after a ref change, after an edit in
the checkout, after other build commands.  ``doit status`` says so, also
when the build ran alone.  A part with artifacts keeps its rule: an install
after a build whose artifacts come out byte-identical is skipped.
"""

from __future__ import annotations

from pathlib import Path

from conftest import Project, commit_all, git_init, write

TOOL = """\
tool:
  git: {repo}
  ref: v1
{extra}  install: cp -R tree/. "$DESTDIR/"
  installs: [/usr/local/bin/tool]
"""


def tool_repo(project: Project) -> Path:
    """v1 and v2 differ only in the file the install copies from the checkout;
    a Makefile whose one target writes an output no install copies."""
    repo = project.up.root / "tool"
    git_init(repo)
    write(repo / "Makefile", "all:\n\techo built > out.txt\n")
    write(repo / ".gitignore", "/out.txt\n")
    write(repo / "tree/usr/local/bin/tool", "tool one\n")
    commit_all(repo, "tool v1", tag="v1")
    write(repo / "tree/usr/local/bin/tool", "tool two\n")
    commit_all(repo, "tool v2", tag="v2")
    return repo


def todo(res) -> dict[str, str]:
    """status's 'a plain doit would run' list: task -> its reason."""
    out, seen = {}, False
    for line in res.out.splitlines():
        if line.startswith("a plain doit would run"):
            seen = True
        elif seen and line.startswith("  "):
            task, _, why = line.strip().partition(" ")
            out[task] = why.strip()
    return out


def installed(project: Project) -> str:
    return project.staged("/usr/local/bin/tool").read_text()


def test_a_ref_change_reinstalls_what_the_checkout_now_holds(project):
    project.write_stack(TOOL.format(repo=tool_repo(project), extra=""))
    project.doit()
    assert installed(project) == "tool one\n"
    project.edit_stack("ref: v1", "ref: v2")
    plan = todo(project.doit("status"))
    assert list(plan) == ["fetch:tool", "patch:tool", "build:tool", "install:tool"]
    assert "build:tool" in plan["install:tool"] and "(ref v1 -> v2)" in plan["install:tool"]
    res = project.doit()
    assert "install:tool" in res.ran
    assert installed(project) == "tool two\n"
    assert "v2" in (project.root / "stack.lock").read_text()
    assert "would run nothing" in project.doit("status").out
    assert project.doit().ran == []


def test_status_names_an_install_its_build_left_behind(project):
    """The build ran alone (doit build:tool): the install's own check sees
    that the checkout it copies from holds other content."""
    project.write_stack(TOOL.format(repo=tool_repo(project), extra=""))
    project.doit()
    project.edit_stack("ref: v1", "ref: v2")
    assert "build:tool" in project.doit("build:tool").ran
    res = project.doit("status")
    assert todo(res) == {"install:tool": "the checkout's content changed"}
    assert "stale: the checkout's content changed" in res.out
    assert project.doit().ran == ["install:tool"]
    assert installed(project) == "tool two\n"


def test_an_edit_in_the_checkout_is_rebuilt_and_reinstalled(project):
    project.write_stack(TOOL.format(repo=tool_repo(project), extra="  build: make\n"))
    project.doit()
    write(project.src("tool") / "tree/usr/local/bin/tool", "tool, edited\n")
    plan = todo(project.doit("status"))
    assert list(plan) == ["build:tool", "install:tool"]
    assert "build:tool" in plan["install:tool"]
    assert "(local edits: tree/usr/local/bin/tool)" in plan["install:tool"]
    res = project.doit()
    assert res.ran == ["build:tool", "install:tool"]
    assert installed(project) == "tool, edited\n"
    assert project.doit().ran == []


def test_other_build_commands_reinstall_what_the_build_writes(project):
    """The checkout's content is the same; what the build wrote into it is not."""
    repo = project.up.root / "gen"
    git_init(repo)
    write(repo / "README", "gen\n")
    commit_all(repo, "gen", tag="v1")
    project.write_stack(f"""\
        gen:
          git: {repo}
          ref: v1
          build: echo one > gen.txt
          install: install -D -m 0644 gen.txt "$DESTDIR$PREFIX/share/gen/gen.txt"
          installs: [$PREFIX/share/gen/gen.txt]
        """)
    project.doit()
    out = project.staged("/usr/local/share/gen/gen.txt")
    assert out.read_text() == "one\n"
    project.edit_stack("echo one", "echo two")
    project.doit("build:gen")
    assert todo(project.doit("status")) == {
        "install:gen": "the build's commands changed"}
    assert project.doit().ran == ["install:gen"]
    assert out.read_text() == "two\n"


def test_with_artifacts_an_install_after_identical_artifacts_is_skipped(project):
    """The rule above is for parts without artifacts only: here the artifact
    stands for what is installed, and an edit that leaves it byte-identical
    rebuilds but does not reinstall."""
    repo = tool_repo(project)
    project.write_stack(TOOL.format(repo=repo, extra="  build: make\n  artifacts: [out.txt]\n"))
    project.doit()
    write(project.src("tool") / "Makefile", "# a comment\nall:\n\techo built > out.txt\n")
    assert project.doit().ran == ["build:tool"]
    assert project.doit().ran == []
