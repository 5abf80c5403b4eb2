"""tasks/git.py: the only module that talks to git, on real repositories."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import commit_all, git, git_init, isolated_git_env, write

from tasks import git as g
from tasks.errors import CommandFailed, DirtyCheckout, GitError, PatchFailed


def make_upstream(repo: Path) -> None:
    """main: two commits; v1 an annotated tag on the first, light a
    lightweight tag on the second; a branch 'topic' one commit further."""
    git_init(repo)
    write(repo / "file.txt", "one\n")
    commit_all(repo, "first", tag="v1")
    write(repo / "file.txt", "two\n")
    commit_all(repo, "second")
    git(repo, "tag", "light")
    git(repo, "checkout", "-q", "-b", "topic")
    write(repo / "topic.txt", "topic\n")
    commit_all(repo, "topic")
    git(repo, "checkout", "-q", "main")


def make_busy(clone: Path, sub: Path) -> None:
    """The clone with a submodule, then edits of every kind."""
    git_init(sub)
    write(sub / "lib.txt", "lib\n")
    commit_all(sub, "lib")
    write(clone / "ünï code/my file.txt", "spaces\n")
    write(clone / "gone.txt", "soon gone\n")
    write(clone / "moved-from.txt", "moving\n")
    write(clone / ".gitignore", "/build/\n")
    subprocess.run(["git", "-C", str(clone), "-c", "protocol.file.allow=always", "submodule",
                    "add", "-q", str(sub), "lib"], check=True, capture_output=True)
    commit_all(clone, "more files")
    write(clone / "file.txt", "edited\n")
    write(clone / "ünï code/my file.txt", "edited too\n")
    (clone / "gone.txt").unlink()
    git(clone, "mv", "moved-from.txt", "moved to.txt")
    write(clone / "new dir/untracked ✓.txt", "new\n")
    write(clone / "build/output.o", "ignored\n")
    write(clone / "lib/lib.txt", "changed in the submodule\n")


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> Path:
    """The repositories, made once per module (as conftest's _isolated_env
    would, which is not there yet at module scope); tests get copies."""
    root = tmp_path_factory.mktemp("git-templates")
    with isolated_git_env(root):
        make_upstream(root / "upstream")
        clone, log = root / "src/up", root / "fetch.log"
        g.ensure_repo(clone, str(root / "upstream"), log, "")
        commit = g.fetch(clone, log, "", g.ls_remote(clone, "main"), "main", 0)
        g.switch(clone, commit, log, "")
        shutil.copytree(clone, root / "busy/up", symlinks=True)
        make_busy(root / "busy/up", root / "busy/sublib")
    return root


def copy(templates: Path, name: str, to: Path, origin: Path | None = None) -> Path:
    shutil.copytree(templates / name, to, symlinks=True)
    if origin is not None:
        git(to, "config", "remote.origin.url", str(origin))
    return to


@pytest.fixture
def upstream(tmp_path, templates) -> Path:
    return copy(templates, "upstream", tmp_path / "upstream")


@pytest.fixture
def clone(tmp_path, templates, upstream) -> Path:
    """A checkout made the way the fetch step makes it, detached at main."""
    return copy(templates, "src/up", tmp_path / "src/up", origin=upstream)


@pytest.fixture
def busy(tmp_path, templates, upstream) -> Path:
    return copy(templates, "busy/up", tmp_path / "src/up", origin=upstream)


def rev(repo: Path, what: str) -> str:
    return git(repo, "rev-parse", what)


# --------------------------------------------------------------------------
# Fetching


def test_ensure_repo_creates_and_repoints_origin(tmp_path, capsys):
    path, log = tmp_path / "src/x", tmp_path / "logs/fetch.log"
    g.ensure_repo(path, "https://example.invalid/x.git", log, "fetch:x: ")
    assert g.is_repo(path)
    assert git(path, "config", "remote.origin.url") == "https://example.invalid/x.git"
    assert "git" in log.read_text() and "init" in log.read_text()
    (path / "keep.txt").write_text("mine")
    g.ensure_repo(path, "https://example.invalid/x.git", log, "fetch:x: ")
    assert "origin changes" not in capsys.readouterr().err
    g.ensure_repo(path, "/elsewhere/x", log, "fetch:x: ")
    assert git(path, "config", "remote.origin.url") == "/elsewhere/x"
    assert "fetch:x: origin changes: https://example.invalid/x.git -> /elsewhere/x" in \
        capsys.readouterr().err
    assert (path / "keep.txt").read_text() == "mine"  # never re-cloned


def test_ls_remote_finds_tags_peeled_and_branches(tmp_path, upstream):
    path = tmp_path / "src/up"
    g.ensure_repo(path, str(upstream), tmp_path / "log", "")
    v1 = g.ls_remote(path, "v1")
    assert v1 == g.Remote("refs/tags/v1", rev(upstream, "v1^{commit}"))
    assert v1.commit != rev(upstream, "v1")  # not the tag object
    assert v1.is_tag and not v1.is_branch
    assert g.ls_remote(path, "light") == g.Remote("refs/tags/light", rev(upstream, "main"))
    topic = g.ls_remote(path, "topic")
    assert topic == g.Remote("refs/heads/topic", rev(upstream, "topic")) and topic.is_branch
    assert g.ls_remote(path, "no-such-ref") is None
    sha = rev(upstream, "main")
    assert g.ls_remote(path, sha) == g.Remote("", sha)


def test_ls_remote_prefers_a_tag_over_a_branch_of_the_same_name(tmp_path, upstream):
    git(upstream, "branch", "v1", "topic")
    path = tmp_path / "src/up"
    g.ensure_repo(path, str(upstream), tmp_path / "log", "")
    assert g.ls_remote(path, "v1") == g.Remote("refs/tags/v1", rev(upstream, "v1^{commit}"))


def test_ls_remote_of_an_unreachable_origin(tmp_path):
    path = tmp_path / "src/x"
    g.ensure_repo(path, str(tmp_path / "no-such-repo"), tmp_path / "log", "")
    with pytest.raises(GitError, match="cannot reach origin of x") as err:
        g.ls_remote(path, "v1")
    assert "insteadOf" in err.value.hint


def test_fetch_by_tag_branch_and_commit(tmp_path, upstream):
    path, log = tmp_path / "src/up", tmp_path / "log"
    g.ensure_repo(path, str(upstream), log, "")
    v1 = g.fetch(path, log, "", g.ls_remote(path, "v1"), "v1", 0)
    assert v1 == rev(upstream, "v1^{commit}") and g.has_commit(path, v1)
    assert g.rev_parse(path, "refs/tags/v1") == v1
    assert g.local_ref(path, "v1") == g.Remote("refs/tags/v1", v1)
    topic = g.fetch(path, log, "", g.ls_remote(path, "topic"), "topic", 0)
    assert topic == rev(upstream, "topic")
    assert g.rev_parse(path, "refs/remotes/origin/topic") == topic
    assert g.local_ref(path, "topic") == g.Remote("refs/heads/topic", topic)
    assert git(path, "for-each-ref", "--format=%(refname)").split() == [
        "refs/remotes/origin/topic", "refs/tags/v1"]  # no other refs came
    second = rev(upstream, "main")
    assert g.fetch(path, log, "", g.Remote("", second), second, 0) == second
    assert g.has_commit(path, second)


def test_fetch_an_abbreviated_commit_fetches_everything(tmp_path, upstream):
    path, log = tmp_path / "src/up", tmp_path / "log"
    g.ensure_repo(path, str(upstream), log, "")
    short = rev(upstream, "topic")[:10]
    assert g.fetch(path, log, "", None, short, 0) == rev(upstream, "topic")
    with pytest.raises(GitError, match="ref 'deadbeef00' not found at origin"):
        g.fetch(path, log, "", None, "deadbeef00", 0)


def test_fetch_shallow(tmp_path, upstream):
    path, log = tmp_path / "src/up", tmp_path / "log"
    g.ensure_repo(path, upstream.as_uri(), log, "")
    topic = g.fetch(path, log, "", g.ls_remote(path, "topic"), "topic", 1)
    assert g.has_commit(path, topic)
    assert (path / ".git/shallow").read_text().split() == [topic]


def test_fetch_a_commit_that_is_not_there(tmp_path, upstream):
    path, log = tmp_path / "src/up", tmp_path / "log"
    g.ensure_repo(path, str(upstream), log, "")
    with pytest.raises(CommandFailed) as err:
        g.fetch(path, log, "", g.Remote("", "1" * 40), "1" * 40, 0)
    assert err.value.code != 0 and "1" * 40 in err.value.tail and err.value.log == str(log)


# --------------------------------------------------------------------------
# HEAD, branches, refs


def test_query_gives_the_result_every_quick_command_gives(clone):
    from tasks.run import Result

    res = g.query(clone, "rev-parse", "--verify", "-q", "no-such-ref^{commit}", check=False)
    assert isinstance(res, Result) and not res.ok and res.code == 1 and res.out == ""
    head = g.query(clone, "rev-parse", "HEAD")
    assert head.ok and head.out == g.head(clone) + "\n"
    assert g.text(clone, "rev-parse", "HEAD") == g.head(clone)  # without the final newline
    with pytest.raises(CommandFailed):
        g.query(clone, "rev-parse", "--verify", "no-such-ref")


def test_head_and_branch(tmp_path, clone, upstream):
    assert g.head(clone) == rev(upstream, "main") and g.branch(clone) is None
    assert g.head(tmp_path / "nothing") is None and g.branch(tmp_path / "nothing") is None
    assert g.branch(upstream) == "main" and g.head(upstream) == rev(upstream, "main")


def test_on_some_ref(clone):
    head = g.head(clone)
    assert g.on_some_ref(clone, head)
    write(clone / "file.txt", "loose\n")
    git(clone, "commit", "-qam", "on a detached HEAD")
    loose = g.head(clone)
    assert not g.on_some_ref(clone, loose)
    git(clone, "tag", "keep", loose)
    assert g.on_some_ref(clone, loose)


def test_paths_only_in_and_commits_between(clone):
    base = g.head(clone)
    git(clone, "rm", "-q", "file.txt")
    write(clone / "new.txt", "n\n")
    git(clone, "add", "new.txt")
    git(clone, "commit", "-qm", "swap files")
    tip = g.head(clone)
    assert g.paths_only_in(clone, base, tip) == ["file.txt"]
    assert g.paths_only_in(clone, tip, base) == ["new.txt"]
    assert [line.split(" ", 1)[1] for line in g.commits_between(clone, base, tip)] == \
        ["swap files"]


def test_clear_stale_locks_removes_only_old_ones(clone):
    run_started = time.time()
    old = run_started - 60
    stale = [clone / ".git/index.lock", clone / ".git/refs/heads/x.lock",
             clone / ".git/refs/remotes/origin/deep.lock"]
    for lock in stale:
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text("")
        os.utime(lock, (old, old))
    fresh = clone / ".git/HEAD.lock"
    fresh.write_text("")
    os.utime(fresh, (run_started + 1, run_started + 1))
    g.clear_stale_locks(clone, run_started)
    assert [lock.exists() for lock in stale] == [False, False, False]
    assert fresh.exists()
    g.clear_stale_locks(clone.parent / "not-a-repo", run_started)  # nothing to do


# --------------------------------------------------------------------------
# Status and edits


def test_status_parses_every_kind_of_entry(busy):
    head, entries = g.status(busy)
    assert head == rev(busy, "HEAD")
    assert sorted((e.path, e.kind) for e in entries) == [
        ("file.txt", "changed"),
        ("gone.txt", "changed"),
        ("lib", "submodule"),
        ("moved to.txt", "changed"),
        ("moved-from.txt", "changed"),  # a rename's original path: gone, an edit too
        ("new dir/untracked ✓.txt", "untracked"),
        ("ünï code/my file.txt", "changed"),
    ]


def test_status_reports_both_paths_of_a_staged_rename(busy):
    assert "moved-from.txt" in [e.path for e in g.status(busy)[1]]


def test_status_of_a_clean_checkout_and_of_no_commit(tmp_path, clone):
    assert g.status(clone) == (g.head(clone), [])
    empty = tmp_path / "empty"
    git_init(empty)
    write(empty / "a", "a\n")
    head, entries = g.status(empty)
    assert head is None and [(e.path, e.kind) for e in entries] == [("a", "untracked")]


def test_local_edits_and_refuse_if_edited(busy):
    assert sorted(g.local_edits(busy)) == sorted(
        ["file.txt", "gone.txt", "lib", "moved to.txt", "moved-from.txt",
         "new dir/untracked ✓.txt", "ünï code/my file.txt"])
    with pytest.raises(DirtyCheckout) as err:
        g.refuse_if_edited(busy, "up", "the pin moved")
    assert err.value.message.startswith("up: the pin moved, but its checkout has local edits:")
    assert "  file.txt" in err.value.message and "reset:up" in err.value.hint
    g.refuse_if_edited(busy, "up", "x", ignore=set(g.local_edits(busy)))


def test_tree_with_is_the_tree_a_commit_would_have(busy):
    index_before = (busy / ".git/index").read_bytes()
    paths = ["file.txt", "gone.txt", "new dir/untracked ✓.txt", "ünï code/my file.txt"]
    tree = g.tree_with(busy, paths)
    assert tree != g.tree_of(busy, "HEAD")
    assert (busy / ".git/index").read_bytes() == index_before  # the real index untouched
    git(busy, "add", "--", *paths)
    git(busy, "commit", "-qm", "commit them", "--", *paths)
    assert g.tree_of(busy, "HEAD") == tree


# --------------------------------------------------------------------------
# Patches


def patch_mail(upstream: Path, tmp_path: Path) -> bytes:
    """A format-patch mail by 'Patch Author' changing file.txt on main."""
    work = tmp_path / "mailer"
    subprocess.run(["git", "clone", "-q", str(upstream), str(work)], check=True)
    write(work / "file.txt", "two\npatched\n")
    git(work, "add", "-A")
    subprocess.run(["git", "-C", str(work), "commit", "-q", "-m", "Make it better",
                    "-m", "The body says why.", "--author",
                    "Patch Author <patch@example.org>", "--date", "2022-01-28T10:00:00+01:00"],
                   check=True)
    return subprocess.run(["git", "-C", str(work), "format-patch", "-1", "--stdout"],
                          check=True, capture_output=True).stdout


PLAIN_DIFF = b"""\
--- a/file.txt
+++ b/file.txt
@@ -1,2 +1,3 @@
 two
 patched
+plain
"""

BAD_DIFF = b"""\
--- a/file.txt
+++ b/file.txt
@@ -1 +1 @@
-this line is not there
+nor this
"""


def test_apply_series_commits_one_commit_per_patch_off_the_work_tree(tmp_path, clone, upstream):
    base = g.head(clone)
    before = (clone / "file.txt").read_text(), (clone / ".git/index").read_bytes()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    mail = patch_mail(upstream, tmp_path)
    tip = g.apply_series(clone, base, [("patches/0001-better.patch", mail),
                                       ("patches/0002-plain.diff", PLAIN_DIFF)], scratch)
    assert git(clone, "rev-list", "--count", f"{base}..{tip}") == "2"
    assert git(clone, "show", f"{tip}:file.txt") == "two\npatched\nplain"
    # Nothing moved: HEAD, work tree, index; no scratch files left.
    assert g.head(clone) == base
    assert ((clone / "file.txt").read_text(), (clone / ".git/index").read_bytes()) == before
    assert g.status(clone)[1] == [] and list(scratch.iterdir()) == []
    first, second = git(clone, "rev-list", "--reverse", f"{base}..{tip}").split()
    # The mail's author, subject and body are kept; the patch is named.
    assert git(clone, "show", "-s", "--format=%an <%ae> %aI", first) == \
        "Patch Author <patch@example.org> 2022-01-28T10:00:00+01:00"
    message = git(clone, "show", "-s", "--format=%B", first).strip()
    assert message.endswith(
        "Make it better\n\nThe body says why.\n\n[kata-passt-stack: patches/0001-better.patch]")
    # A plain diff: named after its file, by the tool, at the base's date.
    base_date = git(clone, "show", "-s", "--format=%cI", base)
    assert git(clone, "show", "-s", "--format=%s|%an|%cn|%aI|%cI", second) == \
        f"Apply 0002-plain.diff|kata-passt-stack|kata-passt-stack|{base_date}|{base_date}"
    # The same series gives the same commits (nothing depends on the clock).
    assert g.apply_series(clone, base, [("patches/0001-better.patch", mail),
                                        ("patches/0002-plain.diff", PLAIN_DIFF)]) == tip


def test_apply_series_takes_the_subject_as_git_am_does(tmp_path, clone, upstream):
    tip = g.apply_series(clone, g.head(clone), [("0001.patch", patch_mail(upstream, tmp_path))])
    assert git(clone, "show", "-s", "--format=%s", tip) == "Make it better"


def test_apply_series_of_nothing_is_the_base(clone):
    assert g.apply_series(clone, g.head(clone), []) == g.head(clone)


def test_a_failing_patch_names_itself_and_changes_nothing(tmp_path, clone, upstream):
    base = g.head(clone)
    write(clone / "untracked.txt", "mine\n")
    status_before = g.status(clone)
    mail = patch_mail(upstream, tmp_path)
    with pytest.raises(PatchFailed) as err:
        g.apply_series(clone, base, [("0001-good.patch", mail), ("0002-bad.patch", BAD_DIFF)])
    assert err.value.message.startswith("patch 0002-bad.patch does not apply:")
    assert "file.txt" in err.value.message
    assert g.head(clone) == base and g.status(clone) == status_before
    assert (clone / "file.txt").read_text() == "two\n"


# Applies (the context matches) but changes nothing.
NO_OP_DIFF = b"""\
--- a/file.txt
+++ b/file.txt
@@ -1,2 +1,2 @@
 two
-patched
+patched
"""


def test_a_patch_that_changes_nothing(tmp_path, clone, upstream):
    mail = patch_mail(upstream, tmp_path)
    with pytest.raises(PatchFailed, match="patch 0002-again.patch changes nothing"):
        g.apply_series(clone, g.head(clone), [("0001.patch", mail),
                                              ("0002-again.patch", NO_OP_DIFF)])


def test_head_of_an_unborn_branch_and_of_packed_refs(tmp_path):
    repo = tmp_path / "r"
    git_init(repo)
    assert g.head(repo) is None  # a new repository: read from the files
    write(repo / "f", "x\n")
    sha = commit_all(repo, "one")
    assert g.head(repo) == sha  # on a branch: the ref file
    git(repo, "pack-refs", "--all")
    assert not (repo / ".git/refs/heads/main").exists()
    assert g.head(repo) == sha  # the branch only in packed-refs
    git(repo, "checkout", "-q", "--detach")
    assert g.head(repo) == sha
