"""Broken and hostile inputs: each gets a clear error, touches nothing outside
the workdir and destdir, and the next correct run succeeds."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import commit_all, git, git_init, write

ALPHA = """\
alpha:
  git: {alpha}
  ref: {ref}
  build: {build}
  artifacts: [bin/alpha]
  install: make install
  installs: [$PREFIX/bin/alpha]
"""


def alpha_stack(project, ref="v1", build="make", git_url=None):
    project.write_stack(ALPHA.format(alpha=git_url or project.up.alpha(), ref=ref, build=build))


def listing(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def test_patch_reaching_outside_the_tree_is_refused(project):
    outside = project.root / "outside"
    outside.mkdir()
    write(project.root / "patches/evil.patch", """\
        --- a/../../outside/pwned
        +++ b/../../outside/pwned
        @@ -0,0 +1 @@
        +owned
        """)
    alpha_stack(project)
    project.edit_stack("    build: make", "    patches: [patches/evil.patch]\n    build: make")
    res = project.doit(expect=None)
    assert res.code != 0
    assert "patches/evil.patch" in res.text and "does not apply" in res.text
    assert listing(outside) == set()
    assert git(project.src("alpha"), "status", "--porcelain") == ""
    project.edit_stack("    patches: [patches/evil.patch]\n", "")
    project.doit()


def test_symlink_in_a_checkout_is_not_followed(project):
    outside = project.root / "outside"
    outside.mkdir()
    (outside / "secret").write_text("do not touch\n")
    repo = project.root / "upstream" / "linky"
    git_init(repo)
    write(repo / "Makefile", "all:\n\techo built > out.txt\n")
    os.symlink("../../../outside", repo / "escape")
    commit_all(repo, "a symlink out of the tree", tag="v1")
    write(project.root / "patches/through-link.patch", """\
        --- a/escape/secret
        +++ b/escape/secret
        @@ -1 +1 @@
        -do not touch
        +touched
        """)
    project.write_stack(f"""\
        linky:
          git: {repo}
          ref: v1
          patches: [patches/through-link.patch]
          build: make
          artifacts: [out.txt]
        """)
    res = project.doit(expect=None)
    assert res.code != 0
    assert "through-link.patch" in res.text
    assert (outside / "secret").read_text() == "do not touch\n"
    assert listing(outside) == {"secret"}
    # Without the patch it builds; the link is fingerprinted, not followed.
    project.edit_stack("    patches: [patches/through-link.patch]\n", "")
    project.doit()
    (outside / "secret").write_text("changed outside\n")
    assert project.doit().ran == []


def test_unreachable_git_url(project):
    alpha_stack(project, git_url=str(project.root / "no-such-repo"))
    res = project.doit(expect=None)
    assert res.code != 0
    assert "fetch:alpha" in res.text and "cannot reach origin" in res.text
    assert "Hint:" in res.text
    assert "Traceback" not in res.text
    alpha_stack(project)
    project.doit()


def test_ref_that_does_not_exist(project):
    alpha_stack(project)
    project.doit()
    lock = (project.root / "stack.lock").read_bytes()
    alpha_stack(project, ref="v9-nope")
    res = project.doit(expect=None)
    assert res.code != 0
    assert "ref 'v9-nope' not found" in res.text
    assert "Traceback" not in res.text
    assert (project.root / "stack.lock").read_bytes() == lock  # the good entry untouched
    alpha_stack(project)
    assert project.doit().ran == ["fetch:alpha"]  # only the failed task reruns


def test_abbreviated_commit_ref(project):
    full = git(project.up.alpha(), "rev-parse", "v2^{commit}")
    alpha_stack(project, ref=full[:10])
    project.doit()
    assert full in (project.root / "stack.lock").read_text()
    assert project.staged("/usr/local/bin/alpha").read_text().endswith("echo alpha two\n")


def test_non_utf8_output_of_a_failing_build(project):
    alpha_stack(project, build="\"printf 'bad \\\\377\\\\376 bytes\\\\n'; exit 3\"")
    res = project.doit(expect=None)
    assert res.code != 0
    assert "exit code 3" in res.text and "bad" in res.text and "bytes" in res.text
    assert "Traceback" not in res.text
    log = (project.workdir / "logs" / "build-alpha.log").read_bytes()
    assert b"bad \xff\xfe bytes" in log
    alpha_stack(project)
    project.doit()


def _max_rss_kb(project, *args) -> tuple[int, subprocess.CompletedProcess]:
    """Run doit in a child and return the largest resident size among its
    processes (ru_maxrss of the waited-for descendants), in KiB."""
    probe = ("import resource, subprocess, sys;"
             "r = subprocess.run(sys.argv[1:], capture_output=True, text=True, errors='replace');"
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss);"
             "print(r.returncode); sys.stderr.write(r.stdout + r.stderr)")
    cmd = [sys.executable, "-c", probe, *project.argv(*args)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=project.root)
    rss, code = result.stdout.split()
    return int(rss), subprocess.CompletedProcess(cmd, int(code), "", result.stderr)


def test_a_build_writing_a_gigabyte_keeps_the_log_and_memory_flat(project):
    alpha_stack(project, build="['head -c 1048576 /dev/zero | tr \"\\\\0\" x', make]")
    small, res = _max_rss_kb(project)
    assert res.returncode == 0, res.stderr
    alpha_stack(project, build="['head -c 1073741824 /dev/zero | tr \"\\\\0\" x', make]")
    big, res = _max_rss_kb(project)
    assert res.returncode == 0, res.stderr
    log = project.workdir / "logs" / "build-alpha.log"
    assert log.stat().st_size > 1 << 30
    assert big < small + 30 * 1024, f"max RSS grew from {small} KiB to {big} KiB"
    log.unlink()


def test_workdir_that_cannot_be_created(project):
    blocker = project.root / "not-a-dir"
    blocker.write_text("a file where the workdir should go\n")
    alpha_stack(project)
    project.edit_stack("settings:\n", f"settings:\n  workdir: {blocker}/build\n")
    res = project.doit(expect=None)
    assert res.code != 0
    assert str(blocker) in res.text and "Traceback" not in res.text
    blocker.unlink()
    project.doit()


def test_destdir_that_cannot_be_written(project):
    blocker = project.root / "stage-is-a-file"
    blocker.write_text("x\n")
    alpha_stack(project)
    project.edit_stack("destdir: stage", f"destdir: {blocker}")
    res = project.doit(expect=None)
    assert res.code != 0
    assert "install:alpha" in res.text and "is a file, not a folder" in res.text
    assert "Traceback" not in res.text
    assert blocker.read_text() == "x\n"
    blocker.unlink()
    res = project.doit()
    assert res.ran == ["install:alpha"]
