"""Staged installs and uninstall, end to end: real git, real make, real doit.

One test per rule: uninstall; reinstall without a rebuild; an upgrade that
drops files; a hand-changed file that uninstall keeps; a component that
left stack.yaml, named and uninstalled from its record (and a renamed one);
a conflict refused with nothing written; a file no component installed,
backed up and put back; a declared file the install did not stage; kill -9
during a merge; and, not as root, sudo for the merge and uninstall only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import ALPHA, Project, commit_all, git_init, write


def tree_component(name: str, repo: Path, installs: list[str], artifact: str | None = None,
                   install: str = 'cp -R tree/. "$DESTDIR/"') -> str:
    """A component whose checkout holds the tree it installs (tree/ ->
    $DESTDIR); its first installed file is its artifact."""
    artifact = artifact or "tree" + installs[0]
    return (f"{name}:\n  git: {repo}\n  ref: v1\n  artifacts: [{artifact}]\n"
            f"  install: {install}\n  installs: [{', '.join(installs)}]\n")


def tree_repo(project: Project, name: str, versions: dict[str, dict[str, str]]) -> Path:
    """A repository with one tag per version; each holds exactly ``files``
    (target path -> text) under tree/."""
    repo = project.up.root / name
    git_init(repo)
    for tag, files in versions.items():
        shutil.rmtree(repo / "tree", ignore_errors=True)
        for path, text in files.items():
            write(repo / "tree" / path.lstrip("/"), text)
        commit_all(repo, tag, tag=tag)
    return repo


def listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def manifest(project: Project, part: str) -> dict:
    path = project.workdir / "state/installs/manifests" / f"{part.replace('/', '@')}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def notices(res) -> list[str]:
    return [line for line in res.err.splitlines() if line.startswith("notice:")]


# --------------------------------------------------------------------------
# Uninstall


def test_uninstall_removes_what_the_install_wrote_and_nothing_else(ab):
    ab.doit()
    record = manifest(ab, "beta")
    beta = ab.staged("/usr/local/share/beta/beta.txt")
    entry = record["entries"][str(beta)]
    assert entry["type"] == "file" and entry["mode"] == "0644" and len(entry["sha256"]) == 64
    assert record["entries"][str(ab.staged("/usr/local/share/beta"))]["type"] == "dir"
    mine = write(ab.staged("/usr/local/bin/mine"), "a file of my own\n")

    res = ab.doit("uninstall:beta")
    assert res.ran == ["uninstall:beta"]
    assert "removed 1 file(s) and 2 folder(s)" in res.err
    assert not beta.exists() and not ab.staged("/usr/local/share").exists()
    assert ab.staged("/usr/local/bin/alpha").exists()
    assert not (ab.workdir / "state/stamps/install@beta.json").exists()
    assert (ab.src("beta") / "Makefile").exists()  # checkouts are never removed

    ab.doit("uninstall")  # every component
    # alpha's folders stay: a file of mine is in one of them.
    assert listing(ab.stage) == {"usr", "usr/local", "usr/local/bin", "usr/local/bin/mine"}
    assert mine.read_text() == "a file of my own\n"
    mine.unlink()
    ab.doit()
    ab.doit("uninstall")
    assert listing(ab.stage) == set()  # now the folders went too


def test_after_uninstall_plain_doit_reinstalls_without_rebuilding(ab):
    ab.doit()
    ab.doit("uninstall:alpha")
    assert not ab.staged("/usr/local/bin/alpha").exists()
    res = ab.doit()
    assert res.ran == ["install:alpha"]  # no build, and beta is not rebuilt
    assert ab.staged("/usr/local/bin/alpha").read_text().endswith("echo alpha one\n")
    assert ab.doit().ran == []


def test_uninstall_keeps_a_file_changed_since_it_was_installed(ab):
    ab.doit()
    alpha = ab.staged("/usr/local/bin/alpha")
    alpha.write_text("#!/bin/sh\necho patched by hand\n")
    res = ab.doit("uninstall:alpha")
    assert f"kept {alpha}: changed since it was installed" in res.err
    assert alpha.read_text() == "#!/bin/sh\necho patched by hand\n"
    assert manifest(ab, "alpha") == {}


# --------------------------------------------------------------------------
# Upgrades


def test_an_upgrade_removes_what_the_new_version_no_longer_installs(project):
    repo = tree_repo(project, "tool", {
        "v1": {"/usr/local/bin/tool": "tool one\n", "/usr/local/share/tool/old.txt": "old\n",
               "/usr/local/share/tool/notes.txt": "notes\n"},
        "v2": {"/usr/local/bin/tool": "tool two\n", "/usr/local/share/tool/new.txt": "new\n"},
    })
    project.write_stack(tree_component("tool", repo, ["/usr/local/bin/tool"]))
    project.doit()
    notes = project.staged("/usr/local/share/tool/notes.txt")
    notes.write_text("my notes\n")
    project.edit_stack("ref: v1", "ref: v2")
    res = project.doit()
    assert "install:tool" in res.ran
    assert project.staged("/usr/local/bin/tool").read_text() == "tool two\n"
    assert project.staged("/usr/local/share/tool/new.txt").read_text() == "new\n"
    assert not project.staged("/usr/local/share/tool/old.txt").exists()
    assert notes.read_text() == "my notes\n"  # changed since installed: kept, and named
    assert f"kept {notes}: changed since it was installed" in res.err
    assert "1 removed (no longer installed)" in res.err
    assert str(notes) not in manifest(project, "tool")["entries"]
    assert project.doit().ran == []


# --------------------------------------------------------------------------
# Components that left stack.yaml


def test_a_component_that_left_the_stack_is_named_and_uninstalled_from_its_record(ab):
    ab.doit()
    write(ab.src("beta") / "beta.in", "my edit\n")
    text = ab.stack_file.read_text()
    ab.stack_file.write_text(text[:text.index("beta:\n")])
    res = ab.doit()
    assert res.ran == []
    [notice] = notices(res)
    assert "component beta is no longer in stack.yaml" in notice
    assert f"1 installed file(s) (under {ab.stage})" in notice
    assert f"its checkout {ab.src('beta')} (with local edits)" in notice
    assert "doit uninstall:beta" in notice and f"rm -rf {ab.src('beta')}" in notice
    beta = ab.staged("/usr/local/share/beta/beta.txt")
    assert beta.exists() and ab.src("beta").is_dir()  # nothing is removed by itself

    res = ab.doit("uninstall:beta")
    assert res.ran == ["uninstall:beta"]
    assert not beta.exists() and (ab.src("beta") / "beta.in").read_text() == "my edit\n"
    [notice] = notices(ab.doit())
    assert "installed file" not in notice and f"rm -rf {ab.src('beta')}" in notice


def test_a_renamed_component_does_not_silently_take_over_the_old_ones_files(project):
    project.write_stack(ALPHA.format(alpha=project.up.alpha()))
    project.doit()
    project.edit_stack("  alpha:\n", "  alpha2:\n")
    res = project.doit(expect=None)
    assert res.code != 0
    alpha = project.staged("/usr/local/bin/alpha")
    assert f"{alpha} is installed by alpha, and alpha2 installs it too" in res.text
    assert "doit uninstall:alpha" in res.text and "no longer in stack.yaml" in res.text
    project.doit("uninstall:alpha")
    res = project.doit()
    assert res.ran == ["install:alpha2"] and alpha.exists()
    [notice] = notices(res)
    assert f"its checkout {project.src('alpha')} (without local edits)" in notice


# --------------------------------------------------------------------------
# Conflicts and files that were there before


def test_two_components_writing_one_file_are_refused_before_anything_is_written(project):
    other = tree_repo(project, "other", {"v1": {
        "/usr/local/bin/alpha": "other's alpha\n", "/usr/local/share/other.txt": "other\n"}})
    project.write_stack(ALPHA.format(alpha=project.up.alpha())
                        + tree_component("other", other, ["/usr/local/share/other.txt"])
                        + "  needs: [alpha]\n")
    res = project.doit(expect=None)
    assert res.code != 0
    alpha = project.staged("/usr/local/bin/alpha")
    assert f"{alpha} is installed by alpha, and other installs it too" in res.text
    assert "refused, nothing written" in res.text
    assert alpha.read_text().endswith("echo alpha one\n")
    assert not project.staged("/usr/local/share/other.txt").exists()
    assert manifest(project, "other") == {}


def test_a_file_no_component_installed_is_backed_up_and_put_back_by_uninstall(project):
    project.write_stack(ALPHA.format(alpha=project.up.alpha()))
    original = "#!/bin/sh\necho the distribution's alpha\n"
    alpha = write(project.staged("/usr/local/bin/alpha"), original, mode=0o751)
    res = project.doit()
    assert alpha.read_text().endswith("echo alpha one\n")
    backups = project.workdir / "state/installs/backups"
    [saved] = [p for p in backups.rglob("alpha") if p.is_file()]
    assert saved.read_text() == original
    assert f"{alpha} was there before and no component installed it: saved as {saved}" in res.err
    assert project.doit().ran == []

    res = project.doit("uninstall:alpha")
    assert alpha.read_text() == original and stat.S_IMODE(alpha.stat().st_mode) == 0o751
    assert f"put back the original {alpha}" in res.err
    assert not saved.exists()


def test_a_declared_file_the_install_did_not_stage_is_an_error_naming_it(project):
    # Left by an earlier install: it is on the target, but this install does not make it.
    write(project.staged("/usr/local/bin/ghost"), "from an earlier repository\n")
    project.write_stack(ALPHA.format(alpha=project.up.alpha()).replace(
        "installs: [$PREFIX/bin/alpha]", "installs: [$PREFIX/bin/alpha, $PREFIX/bin/ghost]"))
    res = project.doit(expect=None)
    assert res.code != 0
    assert "did not create: /usr/local/bin/ghost" in res.text
    assert "nothing was merged" in res.text
    assert not project.staged("/usr/local/bin/alpha").exists()


# --------------------------------------------------------------------------
# kill -9 during a merge

MANY = 1000


def test_kill_9_during_a_merge_then_the_next_run_finishes_it(project):
    repo = tree_repo(project, "many", {"v1": {"/README": "many small files\n"}})
    folder = "$DESTDIR/usr/local/share/many"
    loop = (f"'mkdir -p \"{folder}\" && i=0; while [ $i -lt {MANY} ]; do i=$((i+1)); "
            f"echo \"file $i\" > \"{folder}/f$i\"; done'")
    project.write_stack(tree_component("many", repo, ["/usr/local/share/many/f1"],
                                       artifact="tree/README", install=loop))
    journal = project.workdir / "state/installs/journals/many.json"
    proc = project.start(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not journal.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert journal.exists(), "the merge finished before it could be killed"
    target = project.staged("/usr/local/share/many")
    assert len(list(target.glob("f*"))) < MANY

    res = project.doit()
    assert "finishing what an interrupted run left half-done" in res.err
    assert not journal.exists()
    files = sorted(target.iterdir())
    assert len(files) == MANY
    assert all(f.read_text() == f"file {f.name[1:]}\n" for f in files)
    assert not [p for p in project.stage.rglob("*kps-new*")]
    entries = manifest(project, "many")["entries"]
    assert sum(e["type"] == "file" for e in entries.values()) == MANY
    assert project.doit().ran == []


# --------------------------------------------------------------------------
# Not root: only the merge and uninstall go through sudo

SUDO_STANDIN = """\
#!/bin/sh
# Logs how it was called, then runs the command as the same user.
echo "$*" >> {log}
while [ "${{1#-}}" != "$1" ]; do
    if [ "$1" = "--" ]; then shift; break; fi
    shift
done
exec "$@"
"""


NOBODY = 65534


@pytest.fixture
def unprivileged():
    """A folder that user nobody owns and can reach.  pytest's folders are
    root's alone (0700 from /tmp/pytest-of-root down), so this temporary
    folder is made directly in /tmp, and removed afterwards."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("runs doit as user nobody with setpriv (needs root)")
    folder = Path(tempfile.mkdtemp(prefix="kps-test-install-"))
    try:
        os.chown(folder, NOBODY, NOBODY)
        yield folder
    finally:
        shutil.rmtree(folder)


def test_not_root_only_the_merge_and_uninstall_go_through_sudo(unprivileged):
    """doit runs as nobody with a sudo stand-in first on PATH (it logs, then
    runs the command as nobody); the live system's root is KPS_LIVE_ROOT,
    a folder of the test."""
    project = Project(unprivileged)
    project.write_stack(ALPHA.format(alpha=project.up.alpha()))
    project.edit_stack("destdir: stage", 'destdir: ""')
    log = project.root / "sudo.log"
    write(project.root / "bin/sudo", SUDO_STANDIN.format(log=log), mode=0o755)
    live, home = project.root / "live", project.root / "home"
    # Reading any file (dac_read_search, never writing) is kept only because
    # this machine's Python may live under /root.
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                 "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--"]
    subprocess.run(as_nobody + ["mkdir", str(live), str(home)], check=True)
    subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(project.up.root)], check=True)
    project.argv = lambda *args: as_nobody + Project.argv(project, *args)
    env = {"PATH": f"{project.root / 'bin'}:{os.environ['PATH']}", "KPS_LIVE_ROOT": str(live),
           "HOME": str(home)}
    real = Path("/usr/local/bin/alpha")
    was_there = real.exists()

    res = project.doit(env=env)
    assert "install:alpha" in res.ran
    assert "install:alpha: $ make install" in res.err  # not through sudo
    installed = live / "usr/local/bin/alpha"
    assert installed.read_text().endswith("echo alpha one\n")
    assert (project.src("alpha") / "bin/alpha").stat().st_uid == NOBODY  # built as nobody
    [merge] = log.read_text().splitlines()
    assert "-m tasks.journal apply" in merge

    assert project.doit(env=env).ran == []  # a no-op asks sudo for nothing
    assert len(log.read_text().splitlines()) == 1

    project.doit("uninstall:alpha", env=env)
    calls = log.read_text().splitlines()
    assert len(calls) == 2 and all("-m tasks.journal apply" in c for c in calls)
    assert not installed.exists()
    assert real.exists() == was_there


def test_deleted_installed_file_reinstalls_only_that(ab):
    ab.doit()
    ab.staged("/usr/local/share/beta/beta.txt").unlink()
    res = ab.doit()
    assert res.ran == ["install:beta"]


def test_reinstall_with_same_content_does_not_rebuild_dependents(ab):
    ab.doit()
    ab.staged("/usr/local/bin/alpha").unlink()
    res = ab.doit()
    assert res.ran == ["install:alpha"]
