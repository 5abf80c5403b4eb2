"""Nothing is written or removed outside the target root, and a file may
become a folder (and back) between versions: real git, real doit.

Every path the merge and uninstall touch is reached inside the target root
as a chroot at that root would reach it.  One test per way out: a staged
link to a folder outside, an unowned one already there, an absolute link
read inside the root (lib64 -> $PREFIX/lib), ``..`` climbing above the
root, a loop, a folder swapped for a link after planning (and in the middle
of applying), and uninstall through a link.  "Outside" is a folder of the
test (tmp_path/outside); each test checks that nothing appears or
disappears there.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import Project, commit_all, git_init, write

from tasks import inroot, journal
from tasks.errors import StackError


class Link(str):
    """A symbolic link in a fixture tree, to this target."""


def tree_repo(project: Project, name: str, versions: dict[str, dict[str, str]]) -> Path:
    """A repository with one tag per version; each holds exactly ``files``
    (target path -> text, or a Link) under tree/."""
    repo = project.up.root / name
    git_init(repo)
    for tag, files in versions.items():
        shutil.rmtree(repo / "tree", ignore_errors=True)
        for path, text in files.items():
            where = repo / "tree" / path.lstrip("/")
            if isinstance(text, Link):
                where.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(str(text), where)
            else:
                write(where, text)
        commit_all(repo, tag, tag=tag)
    return repo


def component(name: str, repo: Path, needs: str | None = None, installs: str = "") -> str:
    """A component installing its checkout's tree/; its artifact and first
    declared file is /usr/local/share/NAME.txt (each tree has one)."""
    return (f"{name}:\n  git: {repo}\n  ref: v1\n  artifacts: [tree/usr/local/share/{name}.txt]\n"
            f"  install: cp -R tree/. \"$DESTDIR/\"\n"
            f"  installs: [/usr/local/share/{name}.txt{installs}]\n"
            + (f"  needs: [{needs}]\n" if needs else ""))


def listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def manifest(project: Project, part: str) -> dict:
    path = project.workdir / "state/installs/manifests" / f"{part}.json"
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.fixture
def outside(project) -> Path:
    """A folder outside the target root, holding one file."""
    folder = project.root / "outside"
    write(folder / "mine", "not the install's\n")
    return folder


def filer(project: Project) -> Path:
    """A component installing /usr/local/share/x/f."""
    return tree_repo(project, "filer", {"v1": {"/usr/local/share/filer.txt": "filer\n",
                                               "/usr/local/share/x/f": "f\n"}})


def refused_with_nothing_written(project: Project, res) -> None:
    assert res.code != 0
    assert "refused, nothing written" in res.text and "Hint:" in res.text
    assert "Traceback" not in res.text
    assert not project.staged("/usr/local/share/filer.txt").exists()
    assert manifest(project, "filer") == {}


# --------------------------------------------------------------------------
# The merge


def test_a_staged_link_to_a_folder_outside_is_not_written_through(project, outside):
    linker = tree_repo(project, "linker", {"v1": {"/usr/local/share/linker.txt": "linker\n",
                                                  "/usr/local/share/x": Link(outside)}})
    project.write_stack(component("linker", linker) + component("filer", filer(project), "linker"))
    res = project.doit(expect=None)
    refused_with_nothing_written(project, res)
    x, f = project.staged("/usr/local/share/x"), project.staged("/usr/local/share/x/f")
    assert f"{x} -> {outside}: {f} would be written through it" in res.text
    assert f"no folder {outside} inside {project.stage}" in res.text
    assert listing(outside) == {"mine"}
    assert os.readlink(x) == str(outside)  # the other component's link is left alone


def test_an_unowned_link_to_a_folder_outside_is_not_written_through(project, outside):
    x = project.staged("/usr/local/share/x")
    x.parent.mkdir(parents=True)
    x.symlink_to(outside)
    project.write_stack(component("filer", filer(project)))
    res = project.doit(expect=None)
    refused_with_nothing_written(project, res)
    assert f"{x} -> {outside}: {project.staged('/usr/local/share/x/f')}" in res.text
    assert listing(outside) == {"mine"}


def test_our_own_link_replaced_by_a_folder_in_an_upgrade_is_not_refused(project, outside):
    """The link is the previous version's and unchanged: it is removed
    first, then the folder is made where it was."""
    repo = tree_repo(project, "filer", {
        "v1": {"/usr/local/share/filer.txt": "one\n", "/usr/local/share/x": Link(outside)},
        "v2": {"/usr/local/share/filer.txt": "two\n", "/usr/local/share/x/f": "f\n"}})
    project.write_stack(component("filer", repo))
    project.doit()
    project.edit_stack("ref: v1", "ref: v2")
    project.doit()
    x = project.staged("/usr/local/share/x")
    assert x.is_dir() and not x.is_symlink() and (x / "f").read_text() == "f\n"
    assert listing(outside) == {"mine"}


def test_an_absolute_link_is_followed_inside_the_root(project):
    """lib64 -> $PREFIX/lib, staged under destdir: what goes into lib64/
    lands in <destdir>$PREFIX/lib, never in the live $PREFIX/lib (here a
    folder of the test, as the prefix is)."""
    prefix = project.root / "prefix"
    (prefix / "lib").mkdir(parents=True)  # the "live" prefix
    libs = tree_repo(project, "libs", {"v1": {"/usr/local/share/libs.txt": "libs\n",
                                              f"{prefix}/lib/liba": "a\n",
                                              f"{prefix}/lib64": Link(f"{prefix}/lib")}})
    more = tree_repo(project, "more", {"v1": {"/usr/local/share/more.txt": "more\n",
                                              f"{prefix}/lib64/libb": "b\n"}})
    project.write_stack(component("libs", libs)
                        + component("more", more, "libs", installs=", $PREFIX/lib64/libb"),
                        settings=f"prefix: {prefix}\n")
    project.doit()
    assert project.staged(f"{prefix}/lib/libb").read_text() == "b\n"
    assert os.readlink(project.staged(f"{prefix}/lib64")) == f"{prefix}/lib"
    assert listing(prefix) == {"lib"}
    assert project.doit().ran == []  # $PREFIX/lib64/libb is seen where it is: nothing to redo
    project.doit("uninstall:more")
    assert not project.staged(f"{prefix}/lib/libb").exists()
    assert project.staged(f"{prefix}/lib/liba").read_text() == "a\n"
    assert listing(prefix) == {"lib"}


def test_dotdot_in_a_link_that_climbs_above_the_root_is_refused(project, outside):
    # From <stage>/usr/local/share, four '..' reach tmp_path: above the root.
    climb = "../../../../outside"
    assert (project.staged("/usr/local/share") / climb).resolve() == outside
    linker = tree_repo(project, "linker", {"v1": {"/usr/local/share/linker.txt": "linker\n",
                                                  "/usr/local/share/x": Link(climb)}})
    project.write_stack(component("linker", linker) + component("filer", filer(project), "linker"))
    res = project.doit(expect=None)
    refused_with_nothing_written(project, res)
    x, f = project.staged("/usr/local/share/x"), project.staged("/usr/local/share/x/f")
    assert f"{x} -> {climb}: {f} would be written outside {project.stage}" in res.text
    assert listing(outside) == {"mine"}


def test_a_loop_of_links_is_refused_naming_the_links(project, outside):
    linker = tree_repo(project, "linker", {"v1": {"/usr/local/share/linker.txt": "linker\n",
                                                  "/usr/local/share/x": Link("y"),
                                                  "/usr/local/share/y": Link("x")}})
    project.write_stack(component("linker", linker) + component("filer", filer(project), "linker"))
    res = project.doit(expect=None)
    refused_with_nothing_written(project, res)
    x, f = project.staged("/usr/local/share/x"), project.staged("/usr/local/share/x/f")
    assert f"{x} -> y: {f} cannot be reached: the links loop" in res.text
    assert f"{project.staged('/usr/local/share/y')} -> x" in res.text


def test_the_live_root_has_nothing_above_it(tmp_path):
    """With / as the root, '..' stays at / (as the kernel does): a link that
    climbs too far is not refused, it is where the kernel finds it."""
    here = tmp_path / "here"
    here.mkdir()
    (tmp_path / "a").symlink_to("../" * 30 + str(here).lstrip("/"))
    assert inroot.Target("/").where(f"{tmp_path}/a/f") == f"{here}/f"
    with pytest.raises(inroot.Blocked):  # the same link, under a root that is not /
        inroot.Target(str(tmp_path)).where(f"{tmp_path}/a/f")


# --------------------------------------------------------------------------
# A link swapped in after planning: checked again when the journal is applied


def plan(root: Path, stage: Path, work: Path) -> dict:
    """A merge journal as manifest.merge writes it: nothing installed yet."""
    return {"version": 1, "kind": "merge", "part": "p", "root": str(root), "stage": str(stage),
            "backups": str(work / "backups"), "saved": str(work / "saved"),
            "owner": [os.getuid(), os.getgid()], "ours": [], "old": {},
            "new": journal.scan(stage, str(root)), "old_backups": {}, "unowned": []}


def test_a_folder_swapped_for_a_link_after_planning_is_refused_when_applied(
        tmp_path, outside, capsys):
    root, stage = tmp_path / "root", tmp_path / "staged"
    (root / "usr/share/d").mkdir(parents=True)
    write(stage / "usr/share/d/f", "f\n")
    write(stage / "usr/share/e", "e\n")
    j = plan(root, stage, tmp_path / "work")
    (root / "usr/share/d").rmdir()  # after planning, before the journal is carried out
    (root / "usr/share/d").symlink_to(outside)
    with pytest.raises(StackError) as err:
        journal.apply(j)
    assert f"{root}/usr/share/d -> {outside}: {root}/usr/share/d/f" in str(err.value)
    assert "refused, nothing written" in str(err.value)
    assert listing(outside) == {"mine"}
    assert not (root / "usr/share/e").exists()
    # Through sudo (python -m tasks.journal apply): its own exit status, so
    # that the journal is dropped rather than tried again on every run.
    saved = tmp_path / "journal.json"
    saved.write_text(json.dumps(j))
    assert journal.main(["apply", str(saved)]) == journal.REFUSED
    assert "refused, nothing written" in capsys.readouterr().err
    assert listing(outside) == {"mine"}


def test_a_folder_swapped_for_a_link_while_applying_is_not_written_through(
        tmp_path, outside, monkeypatch):
    """The swap comes after the path was checked and resolved, before the
    file is written: the write opens each folder without following links."""
    root, stage = tmp_path / "root", tmp_path / "staged"
    (root / "usr/share/d").mkdir(parents=True)
    write(stage / "usr/share/d/f", "f\n")
    j = plan(root, stage, tmp_path / "work")
    resolve = inroot.Target.resolve
    swapped = []

    def racing(self, path, *args, **kwargs):
        parts = resolve(self, path, *args, **kwargs)
        if path.endswith("/d/f") and inroot.Target.resolve.armed and not swapped:
            (root / "usr/share/d").rmdir()
            (root / "usr/share/d").symlink_to(outside)
            swapped.append(path)
        return parts

    racing.armed = False
    monkeypatch.setattr(inroot.Target, "resolve", racing)
    real_problems = journal.problems

    def checked_then_armed(*args, **kwargs):
        found = real_problems(*args, **kwargs)
        racing.armed = True  # the check saw the folder; the swap comes after it
        return found

    monkeypatch.setattr(journal, "problems", checked_then_armed)
    with pytest.raises(StackError) as err:
        journal.apply(j)
    assert swapped
    assert f"{root}/usr/share/d changed into a symbolic link while" in str(err.value)
    assert listing(outside) == {"mine"}


def test_a_pending_journal_refused_when_applied_is_dropped(project, outside):
    """A journal left by a killed run, whose target changed meanwhile, is
    refused (nothing written), named, and not tried again forever."""
    repo = tree_repo(project, "tool", {"v1": {"/usr/local/share/tool.txt": "tool\n"}})
    project.write_stack(component("tool", repo))
    project.doit()
    stage = project.root / "left-stage"
    write(stage / "usr/local/share/x/f", "f\n")
    j = plan(project.stage, stage, project.workdir / "state/installs")
    j["part"] = "tool"
    pending = project.workdir / "state/installs/journals/tool.json"
    pending.parent.mkdir(parents=True, exist_ok=True)
    pending.write_text(json.dumps(j))
    x = project.staged("/usr/local/share/x")
    x.symlink_to(outside)
    project.edit_stack("ref: v1", "ref: v1\n    env: {AGAIN: '1'}")  # install:tool runs again
    res = project.doit(expect=None)
    assert res.code != 0 and "refused, nothing written" in res.text
    assert f"{x} -> {outside}: {x}/f" in res.text
    assert listing(outside) == {"mine"}
    assert not pending.exists()
    x.unlink()
    assert "install:tool" in project.doit().ran


# --------------------------------------------------------------------------
# Uninstall


@pytest.mark.parametrize("how", ["absolute", "climbing"])
def test_uninstall_removes_nothing_through_a_link_out_of_the_root(project, outside, how):
    """The installed folder share/x was moved outside and a link left in its
    place: the same files are there, but outside the root."""
    project.write_stack(component("filer", filer(project)))
    project.doit()
    x = project.staged("/usr/local/share/x")
    shutil.move(x, outside / "x")
    x.symlink_to(outside / "x" if how == "absolute" else "../../../../outside/x")
    assert (x / "f").read_text() == "f\n"
    res = project.doit("uninstall:filer", expect=None)
    assert listing(outside) == {"mine", "x", "x/f"}
    assert (outside / "x/f").read_text() == "f\n"
    if how == "climbing":
        assert res.code != 0 and "refused, nothing removed" in res.text
        assert f"{x} -> ../../../../outside/x: {x}/f would be removed outside" in res.text
        assert project.staged("/usr/local/share/filer.txt").exists()  # nothing removed
        assert project.doit().ran == []  # and it is still installed, as far as doit knows
    else:  # read inside the root, the link leads nowhere: there is nothing to remove
        assert res.code == 0
        assert not project.staged("/usr/local/share/filer.txt").exists()


# --------------------------------------------------------------------------
# A file that becomes a folder between versions, and back

KEEP = "/usr/local/share/odd.txt"
T = "/usr/local/share/odd/t"


@pytest.fixture
def odd(project) -> Project:
    """odd v1 installs the file share/odd/t, v2 the folder share/odd/t/."""
    repo = tree_repo(project, "odd", {
        "v1": {KEEP: "one\n", T: "a file\n"},
        "v2": {KEEP: "two\n", f"{T}/inner": "inner\n", f"{T}/sub/deep": "deep\n"},
    })
    project.write_stack(component("odd", repo))
    return project


def test_a_file_becomes_a_folder_and_back(odd):
    t = odd.staged(T)
    odd.doit()
    assert t.read_text() == "a file\n"
    odd.edit_stack("ref: v1", "ref: v2")
    assert "install:odd" in odd.doit().ran
    assert (t / "inner").read_text() == "inner\n" and (t / "sub/deep").read_text() == "deep\n"
    assert manifest(odd, "odd")["entries"][str(t)]["type"] == "dir"
    assert odd.doit().ran == []
    odd.edit_stack("ref: v2", "ref: v1")
    assert "install:odd" in odd.doit().ran
    assert t.is_file() and t.read_text() == "a file\n"
    assert manifest(odd, "odd")["entries"][str(t)]["type"] == "file"
    assert odd.doit().ran == []
    odd.doit("uninstall:odd")
    assert listing(odd.stage) == set()


def test_a_changed_file_that_becomes_a_folder_is_saved_first(odd):
    t = odd.staged(T)
    odd.doit()
    t.write_text("my edit\n")
    odd.edit_stack("ref: v1", "ref: v2")
    res = odd.doit()
    assert (t / "inner").read_text() == "inner\n"
    [saved] = [p for p in (odd.workdir / "state/installs/saved").rglob("t") if p.is_file()]
    assert saved.read_text() == "my edit\n"
    assert f"{t} was changed since it was installed: replaced, your version saved as {saved}" \
        in res.err


def test_a_changed_file_in_a_folder_that_becomes_a_file_is_saved_first(odd):
    t = odd.staged(T)
    odd.edit_stack("ref: v1", "ref: v2")
    odd.doit()
    (t / "inner").write_text("my edit\n")
    odd.edit_stack("ref: v2", "ref: v1")
    res = odd.doit()
    assert t.read_text() == "a file\n"
    [saved] = [p for p in (odd.workdir / "state/installs/saved").rglob("inner") if p.is_file()]
    assert saved.read_text() == "my edit\n"
    assert f"{t}/inner was changed since it was installed: replaced, your version saved as " \
        f"{saved}" in res.err


def test_a_file_no_install_recorded_in_the_way_of_a_folder_is_still_refused(odd):
    t = write(odd.staged(T), "my own file\n")
    odd.edit_stack("ref: v1", "ref: v2")
    res = odd.doit(expect=None)
    assert res.code != 0 and "refused, nothing written" in res.text
    assert f"{t} is a file on the target; odd installs a folder there" in res.text
    assert t.read_text() == "my own file\n"
    assert not odd.staged(KEEP).exists()


def test_a_folder_holding_a_file_no_install_recorded_does_not_become_a_file(odd):
    t = odd.staged(T)
    odd.edit_stack("ref: v1", "ref: v2")
    odd.doit()
    write(t / "sub/mine", "my own file\n")
    odd.edit_stack("ref: v2", "ref: v1")
    res = odd.doit(expect=None)
    assert res.code != 0 and "refused, nothing written" in res.text
    assert f"{t} is a folder on the target; odd installs a file there, and the folder " \
           f"holds {t}/sub/mine, which no install recorded" in res.text
    assert (t / "sub/mine").read_text() == "my own file\n"
    assert (t / "inner").read_text() == "inner\n" and odd.staged(KEEP).read_text() == "two\n"


def test_another_destdir_moves_the_install_there_and_back(project):
    """Each journal stays inside one root: with another destdir the install
    is taken back from the old root, then merged into the new one (and back)."""
    repo = filer(project)
    project.write_stack(component("filer", repo))
    project.doit()
    first, second = project.root / "stage", project.root / "stage2"
    assert (first / "usr/local/share/x/f").read_text() == "f\n"

    project.edit_stack("destdir: stage", "destdir: stage2")
    res = project.doit()
    assert "install:filer" in res.ran and "Traceback" not in res.text
    assert (second / "usr/local/share/x/f").read_text() == "f\n"
    assert not (first / "usr/local/share/x/f").exists()
    assert manifest(project, "filer")["root"] == str(second)

    project.edit_stack("destdir: stage2", "destdir: stage")
    project.doit()
    assert (first / "usr/local/share/x/f").read_text() == "f\n"
    assert not (second / "usr/local/share/x/f").exists()
    assert project.doit().ran == []
