"""tasks/tree.py: the content state of a checkout, decided from git."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import commit_all, git, git_init, isolated_git_env, write

from tasks import tree
from tasks.errors import StackError
from tasks.state import HashCache


def blake(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A checkout with a submodule, made once per module (with the isolation
    conftest's _isolated_env gives each test); tests get copies."""
    root = tmp_path_factory.mktemp("tree-template")
    with isolated_git_env(root):
        sub, repo = root / "sublib", root / "repo"
        git_init(sub)
        write(sub / "lib.txt", "lib\n")
        commit_all(sub, "lib")
        git_init(repo)
        write(repo / "file.txt", "one\n")
        write(repo / "other.txt", "other\n")
        write(repo / ".gitignore", "/ignored/\n")
        subprocess.run(["git", "-C", str(repo), "-c", "protocol.file.allow=always", "submodule",
                        "add", "-q", str(sub), "lib"], check=True, capture_output=True)
        commit_all(repo, "first")
    return root


@pytest.fixture
def repo(tmp_path, template) -> Path:
    return Path(shutil.copytree(template / "repo", tmp_path / "src/repo", symlinks=True))


@pytest.fixture
def cache(tmp_path) -> HashCache:
    return HashCache(tmp_path / "state/hashes.json")


@pytest.fixture
def trees(tmp_path) -> tree.Trees:
    return tree.Trees(tmp_path / "state/trees.json")


def test_scan_of_a_clean_checkout(repo, cache):
    assert tree.scan(repo, cache) == (git(repo, "rev-parse", "HEAD"), {})


def test_scan_sees_edits_untracked_files_and_submodules(repo, cache):
    write(repo / "file.txt", "edited\n")
    (repo / "other.txt").unlink()
    write(repo / "new dir/new.txt", "new\n")
    write(repo / "ignored/build.o", "output\n")
    write(repo / "lib/lib.txt", "edited in the submodule\n")
    write(repo / "lib/sub-new.txt", "new in the submodule\n")
    head, dirty = tree.scan(repo, cache)
    assert head == git(repo, "rev-parse", "HEAD")
    assert dirty == {
        "file.txt": "f:" + blake(b"edited\n"),
        "other.txt": "-",
        "new dir/new.txt": "?f:" + blake(b"new\n"),
        "lib@": git(repo / "lib", "rev-parse", "HEAD"),
        "lib/lib.txt": "f:" + blake(b"edited in the submodule\n"),
        "lib/sub-new.txt": "?f:" + blake(b"new in the submodule\n"),
    }
    assert tree.untracked(dirty) == {"new dir/new.txt", "lib/sub-new.txt"}


def test_a_second_edit_of_an_edited_file_changes_the_scan(repo, cache):
    write(repo / "file.txt", "edit one\n")
    first = tree.scan(repo, cache)
    write(repo / "file.txt", "edit two\n")
    assert tree.scan(repo, cache) != first


def test_a_submodule_moved_to_another_commit(repo, cache):
    write(repo / "lib/lib.txt", "lib v2\n")
    git(repo / "lib", "commit", "-qam", "v2")
    _, dirty = tree.scan(repo, cache)
    assert dirty == {"lib@": git(repo / "lib", "rev-parse", "HEAD")}


def test_source_state(repo, cache, trees, tmp_path):
    write(repo / "file.txt", "edited\n")
    state = tree.source_state(repo, cache, trees)
    assert state == {"tree": git(repo, "rev-parse", "HEAD^{tree}"),
                     "edits": {"file.txt": "f:" + blake(b"edited\n")}}
    # The commit's tree is remembered.
    assert trees.file.read() == {git(repo, "rev-parse", "HEAD"): state["tree"]}
    # A scan made a moment ago is used as it is.
    scanned = (git(repo, "rev-parse", "HEAD"), {"x": "f:1"})
    assert tree.source_state(repo, cache, trees, scanned)["edits"] == {"x": "f:1"}


def test_source_state_of_a_missing_or_empty_checkout(tmp_path, cache, trees):
    with pytest.raises(StackError, match="checkout .*/nothing is missing"):
        tree.source_state(tmp_path / "nothing", cache, trees)
    empty = tmp_path / "empty"
    git_init(empty)
    with pytest.raises(StackError, match="has no commit checked out"):
        tree.source_state(empty, cache, trees)


def test_trees_remembers_a_commit_on_disk(repo, tmp_path):
    head = git(repo, "rev-parse", "HEAD")
    trees = tree.Trees(tmp_path / "trees.json")
    assert trees.tree(repo, head) == git(repo, "rev-parse", "HEAD^{tree}")
    # Another instance answers from the file (here: even for another repository).
    assert tree.Trees(tmp_path / "trees.json").tree(tmp_path, head) == \
        git(repo, "rev-parse", "HEAD^{tree}")


def test_committing_a_built_edit_changes_the_state_but_not_the_content(repo, cache, trees):
    write(repo / "file.txt", "edited\n")
    (repo / "other.txt").unlink()
    write(repo / "new.txt", "new\n")
    write(repo / "out.bin", "built by our make\n")  # an output our build recorded
    write(repo / "lib/lib.txt", "sub edit\n")
    outputs = {"out.bin"}
    before = tree.source_state(repo, cache, trees)
    content = tree.content(repo, before, outputs)
    assert content["tree"] != before["tree"]
    assert content["submodules"] == {"lib@": git(repo / "lib", "rev-parse", "HEAD"),
                                     "lib/lib.txt": "f:" + blake(b"sub edit\n")}
    git(repo, "add", "file.txt", "other.txt", "new.txt")
    git(repo, "commit", "-qm", "the edit that was built")
    after = tree.source_state(repo, cache, trees)
    assert after != before
    assert tree.content(repo, after, outputs) == content
    # ...while a further edit does change it.
    write(repo / "file.txt", "edited again\n")
    assert tree.content(repo, tree.source_state(repo, cache, trees), outputs) != content


def test_content_leaves_out_our_outputs(repo, cache, trees):
    clean = tree.content(repo, tree.source_state(repo, cache, trees), set())
    write(repo / "out.bin", "output\n")
    state = tree.source_state(repo, cache, trees)
    assert tree.content(repo, state, {"out.bin"}) == clean
    assert tree.content(repo, state, set()) != clean


def test_committing_a_built_rename_does_not_change_the_content(repo, cache, trees):
    git(repo, "mv", "other.txt", "renamed.txt")
    content = tree.content(repo, tree.source_state(repo, cache, trees), set())
    git(repo, "commit", "-qm", "rename")
    assert tree.content(repo, tree.source_state(repo, cache, trees), set()) == content


def test_without_outputs():
    state = {"tree": "t", "edits": {"a": "f:1", "out": "?f:2", "b": "-"}}
    assert tree.without_outputs(state, {"out", "not-there"}) == \
        {"tree": "t", "edits": {"a": "f:1", "b": "-"}}
    assert state["edits"]["out"] == "?f:2"  # the given state is left alone
    assert tree.without_outputs({}, set()) == {"tree": None, "edits": {}}


# --------------------------------------------------------------------------
# Prefetch


@pytest.fixture
def two(tmp_path, template) -> dict[str, Path]:
    return {name: Path(shutil.copytree(template / "repo", tmp_path / "src" / name,
                                       symlinks=True))
            for name in ("one", "two")}


def caches_for(tmp_path):
    made = {}

    def cache(name):
        return made.setdefault(name, HashCache(tmp_path / f"state/{name}.json"))
    return cache


def test_prefetch_gives_each_scan(tmp_path, two):
    write(two["one"] / "file.txt", "edited\n")
    caches = caches_for(tmp_path)
    prefetch = tree.Prefetch(two, caches)
    assert prefetch.take("one") == tree.scan(two["one"], caches("one"))
    assert prefetch.take("two") == tree.scan(two["two"], caches("two"))
    assert prefetch.take("unknown") is None


def test_prefetch_drops_the_scan_of_a_touched_checkout(tmp_path, two):
    prefetch = tree.Prefetch(two, caches_for(tmp_path))
    assert prefetch.take("two") is not None  # starts every scan
    prefetch.touched("one")
    write(two["one"] / "file.txt", "edited after the scan started\n")
    assert prefetch.take("one") is None
    assert prefetch.take("two") is not None


def test_prefetch_of_a_single_checkout_is_not_done(tmp_path, two):
    prefetch = tree.Prefetch({"one": two["one"], "gone": tmp_path / "src/gone"},
                             caches_for(tmp_path))
    assert prefetch.take("one") is None


def _statuses(trace: Path) -> set[str]:
    """The checkouts git status ran in, from a GIT_TRACE2_EVENT file."""
    argv, worktree = {}, {}
    for line in trace.read_text().splitlines() if trace.exists() else []:
        event = json.loads(line)
        if event["event"] == "start":
            argv[event["sid"]] = event["argv"]
        elif event["event"] == "def_repo" and "worktree" in event:
            worktree[event["sid"]] = event["worktree"]
    return {Path(worktree[sid]).name for sid, args in argv.items()
            if "status" in args and sid in worktree}


def test_the_scans_start_early_only_for_a_run_that_asks_every_checkout(ab):
    """The loader starts the scans of every checkout before doit sets up
    when the run will ask them all (no task named, status, graph, run_pod);
    a run whose tasks look at no checkout scans none."""
    ab.doit()
    trace = ab.root / "trace"
    ab.doit("check", env={"GIT_TRACE2_EVENT": str(trace)})
    assert _statuses(trace) == set()
    assert ab.doit(env={"GIT_TRACE2_EVENT": str(trace)}).ran == []
    assert _statuses(trace) == {"alpha", "beta"}
