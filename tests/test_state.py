"""tasks/state.py: atomic writes, JSON state files, stamps, checks, hashes."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
import types

import pytest

from tasks import session, state
from tasks.errors import StackError
from tasks.state import Check, HashCache, JsonFile, Stamps, atomic_write, explain


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".kps-tmp"))


# --------------------------------------------------------------------------
# atomic_write


def test_atomic_write_writes_bytes_or_text_and_makes_folders(tmp_path):
    target = tmp_path / "a/b/file"
    atomic_write(target, "text ✓")
    assert target.read_text() == "text ✓"
    atomic_write(target, b"\x00bytes")
    assert target.read_bytes() == b"\x00bytes"
    assert leftovers(target.parent) == []


def test_atomic_write_sets_the_mode(tmp_path):
    target = tmp_path / "file"
    atomic_write(target, "x", mode=0o640)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    atomic_write(target, "y", mode=0o755)
    assert stat.S_IMODE(target.stat().st_mode) == 0o755 and target.read_text() == "y"


def test_atomic_write_never_leaves_a_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "file"
    target.write_text("old content")
    seen = []

    def failing_replace(src, dst):
        with open(src) as f:
            seen.append(f.read())  # the new content was complete in the temp file
        raise OSError("disk on fire")

    monkeypatch.setattr(state.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write(target, "new content")
    assert seen == ["new content"]
    assert target.read_text() == "old content"
    assert leftovers(tmp_path) == []


def test_atomic_write_cleans_up_after_an_interrupt(tmp_path, monkeypatch):
    target = tmp_path / "file"
    target.write_text("old")

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(state.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, "new")
    assert target.read_text() == "old" and leftovers(tmp_path) == []


def test_atomic_write_refuses_in_a_read_only_run(tmp_path):
    target = tmp_path / "file"
    target.write_text("old")
    assert state.read_only() is False  # outside any run
    with session.using(session.Run("list", read_only=True)):
        assert state.read_only() is True
        with pytest.raises(StackError, match="written by a read-only command"):
            atomic_write(target, "new")
        assert target.read_text() == "old" and leftovers(tmp_path) == []
        with pytest.raises(StackError):
            JsonFile(tmp_path / "state.json").write({"a": 1})
        assert not (tmp_path / "state.json").exists()
    assert state.read_only() is False  # the run is over: nothing of it stays
    atomic_write(target, "new")
    assert target.read_text() == "new"


def test_a_new_file_honours_the_umask_of_the_moment(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a", "x")
        os.umask(0o002)
        atomic_write(tmp_path / "b", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o664


def test_digest_is_stable_and_order_blind():
    assert state.digest({"a": 1, "b": [1, 2]}) == state.digest({"b": [1, 2], "a": 1})
    assert state.digest({"a": 1}) != state.digest({"a": 2})
    assert len(state.digest({})) == 24


# --------------------------------------------------------------------------
# JsonFile


def test_jsonfile_reads_the_default_for_missing_garbage_or_wrong_kind(tmp_path):
    f = JsonFile(tmp_path / "s.json")
    assert f.read() == {} and not f.exists()
    f.path.write_text("{not json")
    assert f.read() == {}
    f.path.write_bytes(b"\xff\xfe")
    assert f.read() == {}
    f.path.write_text("[1, 2]")
    assert f.read() == {}
    assert JsonFile(f.path, kind=list).read() == [1, 2]
    f.path.write_text('{"a": 1}')
    assert JsonFile(f.path, kind=list).read() == []
    assert JsonFile(f.path, kind=str).read() is None
    assert JsonFile(f.path, kind=list, default=["d"]).read() == ["d"]
    assert f.read() == {"a": 1}


def test_jsonfile_write_update_clear(tmp_path):
    f = JsonFile(tmp_path / "sub/s.json")
    f.write({"b": 1, "a": 2})
    assert f.path.read_text() == '{\n "a": 2,\n "b": 1\n}'
    assert f.update(c=3, a=4) == {"a": 4, "b": 1, "c": 3}
    assert f.read() == {"a": 4, "b": 1, "c": 3}
    f.write({"b": 1, "a": 2}, indent=None, sort_keys=False)
    assert f.path.read_text() == '{"b": 1, "a": 2}'
    f.clear()
    assert not f.exists() and f.read() == {}
    f.clear()  # twice is fine
    assert f.update(x=1) == {"x": 1}


# --------------------------------------------------------------------------
# Stamps


def test_stamps_write_read_produced_clear(tmp_path):
    stamps = Stamps(tmp_path / "stamps")
    assert stamps.read("install:kata/runtime") is None
    assert stamps.produced("install:kata/runtime", "installed") is None
    before = time.time()
    stamps.write("install:kata/runtime", {"commit": "abc"}, installed="d1", files=["a"])
    assert (tmp_path / "stamps/install@kata@runtime.json").is_file()
    stamp = stamps.read("install:kata/runtime")
    assert stamp["task"] == "install:kata/runtime" and stamp["key"] == {"commit": "abc"}
    assert before <= stamp["time"] <= time.time()
    assert stamps.produced("install:kata/runtime", "installed") == "d1"
    assert stamps.produced("install:kata/runtime", "files") == ["a"]
    assert stamps.produced("install:kata/runtime", "other") is None
    assert stamps.read("install:kata/agent") is None
    stamps.clear("install:kata/runtime")
    assert stamps.read("install:kata/runtime") is None
    stamps.clear("install:kata/runtime")


def test_a_damaged_stamp_reads_as_none(tmp_path):
    stamps = Stamps(tmp_path)
    (tmp_path / "build@x.json").write_text('{"task": "build:x", "ke')
    assert stamps.read("build:x") is None
    (tmp_path / "build@x.json").write_text("{}")
    assert stamps.read("build:x") is None


# --------------------------------------------------------------------------
# explain() and Check


def test_explain_in_plain_words():
    old = {"commit": "a" * 40, "gone": 1, "same": [1], "cfg": {"jobs": 2, "env": {"A": "1"}}}
    new = {"commit": "b" * 40, "added": True, "same": [1], "cfg": {"jobs": 4, "env": {}}}
    assert explain(old, new) == [
        "added is new",
        "cfg.env.A was removed",
        "cfg.jobs: 2 -> 4",
        f"commit: {'a' * 40} -> {'b' * 40}",
        "gone was removed",
    ]
    assert explain({"x": [1, 2]}, {"x": {"y": 1}}) == ['x: [1, 2] -> {"y": 1}']
    assert explain({"x": "s" * 80}, {"x": "t"}) == [f"x: {'s' * 57}... -> t"]
    assert explain(old, old) == []


def key_check(stamps, task_id, key=None, gone=None, fails=None, **hooks) -> Check:
    """A check of a fixed key (or one that cannot be computed: ``fails``)."""
    def key_now():
        if fails:
            raise StackError(fails)
        return key

    return Check(stamps, task_id, key_now, lambda: gone, **hooks)


def test_check_never_ran(tmp_path):
    check = key_check(Stamps(tmp_path), "build:x", key={"a": 1})
    assert repr(check) == "build:x: not checked yet"
    assert check() is False
    assert check.reason == "never ran, or its last run did not finish"


def test_check_up_to_date_and_key_changes(tmp_path):
    stamps = Stamps(tmp_path)
    stamps.write("build:x", {"commit": "abc", "env": {"CC": "gcc"}})
    check = key_check(stamps, "build:x", key={"commit": "abc", "env": {"CC": "gcc"}})
    assert check(None, {}) is True and repr(check) == "build:x: up to date"
    check = key_check(stamps, "build:x", key={"commit": "def", "env": {"CC": "clang"}})
    assert check() is False
    assert check.reason == "commit: abc -> def; env.CC: gcc -> clang"


def test_check_says_at_most_six_changes(tmp_path):
    stamps = Stamps(tmp_path)
    stamps.write("build:x", {f"k{i}": i for i in range(8)})
    check = key_check(stamps, "build:x", key={f"k{i}": i + 1 for i in range(8)})
    assert check() is False
    assert check.reason.count("->") == 6 and check.reason.endswith(" ...")


def test_check_a_key_that_cannot_be_computed(tmp_path):
    stamps = Stamps(tmp_path)
    stamps.write("build:x", {"a": 1})
    check = key_check(stamps, "build:x", fails="alpha is not installed yet")
    assert check() is False and check.reason == "alpha is not installed yet"


def test_check_a_missing_output(tmp_path):
    stamps = Stamps(tmp_path)
    stamps.write("build:x", {"a": 1})
    check = key_check(stamps, "build:x", key={"a": 1}, gone="bin/alpha is missing")
    assert check() is False and check.reason == "bin/alpha is missing"
    # A changed key is said first.
    check = key_check(stamps, "build:x", key={"a": 2}, gone="bin/alpha is missing")
    assert check() is False and check.reason == "a: 1 -> 2"


def test_check_equivalent_and_compare_hooks(tmp_path):
    stamps = Stamps(tmp_path)
    stamps.write("build:x", {"a": 1, "noise": 1})
    same = key_check(stamps, "build:x", key={"a": 1, "noise": 2},
                    equivalent=lambda stamp, now: stamp["key"]["a"] == now["a"])
    assert same() is True and same.reason == "up to date"
    differs = key_check(stamps, "build:x", key={"a": 2, "noise": 2},
                       equivalent=lambda stamp, now: stamp["key"]["a"] == now["a"])
    assert differs() is False and differs.reason == "a: 1 -> 2; noise: 1 -> 2"

    def quiet(old, new):
        return ({k: v for k, v in old.items() if k != "noise"},
                {k: v for k, v in new.items() if k != "noise"})

    assert key_check(stamps, "build:x", key={"a": 1, "noise": 9}, compare=quiet)() is True
    filtered = key_check(stamps, "build:x", key={"a": 3, "noise": 9}, compare=quiet)
    assert filtered() is False and filtered.reason == "a: 1 -> 3"
    assert filtered.compared == ({"a": 1}, {"a": 3})


def test_check_says_what_changed_in_its_own_words(tmp_path):
    stamps = Stamps(tmp_path)
    stamps.write("check", {"requirements": {"gcc": 1}, "other": 1})
    check = key_check(stamps, "check", key={"requirements": {"gcc": 2}, "other": 1},
                      changed=lambda old, new: f"gcc: {old['requirements']['gcc']} -> "
                                               f"{new['requirements']['gcc']}, in words")
    assert check() is False and check.reason == "gcc: 1 -> 2, in words"
    assert key_check(stamps, "check", key={"requirements": {"gcc": 1}, "other": 1},
                     changed=lambda old, new: "never said")() is True


def test_every_check_is_the_one_class(tmp_path):
    """Steps give it functions, not subclasses; the part is there for the planner."""
    check = key_check(Stamps(tmp_path), "install:a", key={}, part="a")
    assert type(check) is Check and check.part == "a"
    assert key_check(Stamps(tmp_path), "fetch:a", key={}).part is None


# --------------------------------------------------------------------------
# HashCache


def blake(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def future(monkeypatch, seconds: float = 10) -> None:
    """Make every file look ``seconds`` old to the cache (ctime cannot be set)."""
    now = time.time_ns()
    monkeypatch.setattr(state, "time", types.SimpleNamespace(
        time=time.time, time_ns=lambda: now + int(seconds * 1e9)))


def test_fingerprints_of_files_links_folders_and_nothing(tmp_path):
    cache = HashCache(tmp_path / "cache.json")
    (tmp_path / "f").write_bytes(b"content")
    (tmp_path / "x").write_bytes(b"content")
    (tmp_path / "x").chmod(0o755)
    (tmp_path / "link").symlink_to("f")
    (tmp_path / "dangling").symlink_to("nowhere")
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    assert cache.fingerprint(tmp_path / "f") == "f:" + blake(b"content")
    assert cache.fingerprint(tmp_path / "x") == "fx:" + blake(b"content")
    assert cache.fingerprint(tmp_path / "link") == "l:f"
    assert cache.fingerprint(tmp_path / "dangling") == "l:nowhere"
    assert cache.fingerprint(tmp_path / "dir") == "d"
    assert cache.fingerprint(tmp_path / "missing") == "-"
    assert cache.fingerprint(tmp_path / "fifo") == f"special:{stat.S_IFIFO}"
    assert cache.fingerprint(tmp_path / "f/under-a-file").startswith("error:")


def test_a_young_entry_is_not_stored(tmp_path):
    f = tmp_path / "f"
    f.write_text("fresh")
    cache = HashCache(tmp_path / "cache.json")
    assert cache.fingerprint(f) == "f:" + blake(b"fresh")
    cache.save()
    assert not cache.path.exists()  # nothing to trust, nothing written
    # An old mtime is not enough: the ctime (now) is still young.
    old = time.time() - 10
    os.utime(f, (old, old))
    cache.fingerprint(f)
    cache.save()
    assert not cache.path.exists()


def test_an_old_entry_is_stored_and_reused_while_the_file_holds(tmp_path, monkeypatch):
    f = tmp_path / "f"
    f.write_text("content")
    future(monkeypatch)
    cache = HashCache(tmp_path / "cache.json")
    assert cache.fingerprint(f) == "f:" + blake(b"content")
    cache.save()
    st = f.stat()
    saved = json.loads(cache.path.read_text())
    assert saved == {str(f): [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
                              blake(b"content")]}
    # Reused: a cache that says another hash is believed while the file holds.
    saved[str(f)][4] = "cafe"
    cache.path.write_text(json.dumps(saved))
    assert HashCache(cache.path).fingerprint(f) == "f:cafe"


def test_a_changed_file_is_hashed_again(tmp_path, monkeypatch):
    f = tmp_path / "f"
    f.write_text("one")
    future(monkeypatch)
    cache = HashCache(tmp_path / "cache.json")
    cache.fingerprint(f)
    cache.save()
    st = f.stat()
    # Same size, mtime put back: only the ctime tells.
    f.write_text("two")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_mtime_ns == st.st_mtime_ns and f.stat().st_size == st.st_size
    assert HashCache(cache.path).fingerprint(f) == "f:" + blake(b"two")
    # A new file in its place (another inode): hashed again too.
    (tmp_path / "g").write_text("three")
    os.replace(tmp_path / "g", f)
    fresh = HashCache(cache.path)
    assert fresh.fingerprint(f) == "f:" + blake(b"three")
    # A size change, same cache instance.
    f.write_text("three and more")
    assert fresh.fingerprint(f) == "f:" + blake(b"three and more")


def test_save_writes_only_when_something_was_learnt(tmp_path, monkeypatch):
    f = tmp_path / "f"
    f.write_text("x")
    future(monkeypatch)
    cache = HashCache(tmp_path / "cache.json")
    cache.save()
    assert not cache.path.exists()
    cache.fingerprint(f)
    cache.save()
    first = cache.path.stat().st_mtime_ns, cache.path.stat().st_ino
    cache.fingerprint(f)  # a hit: nothing new
    cache.save()
    assert (cache.path.stat().st_mtime_ns, cache.path.stat().st_ino) == first


def test_save_does_nothing_when_read_only(tmp_path, monkeypatch):
    f = tmp_path / "f"
    f.write_text("x")
    future(monkeypatch)
    cache = HashCache(tmp_path / "cache.json")
    cache.fingerprint(f)
    with session.using(session.Run("list", read_only=True)):
        cache.save()
    assert not cache.path.exists()
    cache.save()
    assert cache.path.exists()


def test_a_damaged_cache_is_ignored(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    (tmp_path / "cache.json").write_text("{garbage")
    assert HashCache(tmp_path / "cache.json").fingerprint(f) == "f:" + blake(b"x")
