"""tasks/lockfile.py: stack.lock, the commit each component's ref resolved to."""

from __future__ import annotations

import threading
import tomllib

import pytest

from tasks.lockfile import HEADER, LockError, LockFile

A = "a" * 40
B = "b" * 40


def test_record_and_commit_for_round_trip(tmp_path):
    lock = LockFile(tmp_path / "stack.lock")
    assert lock.commit_for("alpha", "https://x/alpha", "v1") is None
    lock.record("alpha", "https://x/alpha", "v1", A, keep={"alpha"})
    assert lock.commit_for("alpha", "https://x/alpha", "v1") == A
    # A fresh reader sees the same.
    again = LockFile(tmp_path / "stack.lock")
    assert again.commit_for("alpha", "https://x/alpha", "v1") == A
    assert again.entry("alpha") == {"git": "https://x/alpha", "ref": "v1", "commit": A}


def test_an_entry_applies_only_for_its_url_and_ref(tmp_path):
    lock = LockFile(tmp_path / "stack.lock")
    lock.record("alpha", "https://x/alpha", "v1", A, keep={"alpha"})
    assert lock.commit_for("alpha", "https://x/alpha", "v2") is None
    assert lock.commit_for("alpha", "https://mirror/alpha", "v1") is None
    assert lock.commit_for("beta", "https://x/alpha", "v1") is None
    # A re-pin replaces the entry.
    lock.record("alpha", "https://x/alpha", "v2", B, keep={"alpha"})
    assert lock.commit_for("alpha", "https://x/alpha", "v2") == B
    assert lock.commit_for("alpha", "https://x/alpha", "v1") is None


def test_keep_drops_removed_components(tmp_path):
    lock = LockFile(tmp_path / "stack.lock")
    lock.record("alpha", "g/a", "v1", A, keep={"alpha", "beta"})
    lock.record("beta", "g/b", "main", B, keep={"alpha", "beta"})
    assert lock.entry("alpha") and lock.entry("beta")
    # beta left stack.yaml: the next record drops it, even if alpha is unchanged.
    lock.record("alpha", "g/a", "v1", A, keep={"alpha"})
    assert lock.entry("beta") is None and lock.commit_for("alpha", "g/a", "v1") == A
    assert set(tomllib.loads(lock.path.read_text())["components"]) == {"alpha"}


def test_an_unchanged_record_does_not_rewrite_the_file(tmp_path):
    lock = LockFile(tmp_path / "stack.lock")
    lock.record("alpha", "g/a", "v1", A, keep={"alpha"})
    before = lock.path.stat()
    lock.record("alpha", "g/a", "v1", A, keep={"alpha", "other"})
    after = lock.path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_the_file_has_the_header_and_parses_as_toml(tmp_path):
    lock = LockFile(tmp_path / "stack.lock")
    lock.record("zeta", "g/z", "main", B, keep={"zeta", "alpha"})
    lock.record("alpha", "g/a", "v1", A, keep={"zeta", "alpha"})
    text = lock.path.read_text()
    header = [f"# {line}" for line in HEADER.splitlines()]
    assert text.splitlines()[:len(header)] == header
    data = tomllib.loads(text)
    assert data == {"version": 1, "components": {
        "alpha": {"git": "g/a", "ref": "v1", "commit": A},
        "zeta": {"git": "g/z", "ref": "main", "commit": B}}}
    assert text.index("[components.alpha]") < text.index("[components.zeta]")


def test_odd_entries_are_ignored(tmp_path):
    path = tmp_path / "stack.lock"
    path.write_text('[components]\nalpha = "not a table"\n'
                    '[components.beta]\ngit = "g"\nref = "r"\ncommit = 5\n')
    lock = LockFile(path)
    assert lock.entry("alpha") is None
    assert lock.commit_for("beta", "g", "r") is None  # a commit that is not a string
    lock.record("gamma", "g/c", "v1", A, keep={"gamma"})
    assert tomllib.loads(path.read_text())["components"] == {
        "gamma": {"git": "g/c", "ref": "v1", "commit": A}}


@pytest.mark.parametrize("text, says", [
    ("version = 1\nthis is = not [toml\n", "stack.lock:2: not valid TOML"),
    ('version = 1\ncomponents = "oops"\n', "stack.lock: 'components' must be a table"),
    ('version = 1\n<<<<<<< HEAD\n[components.a]\n=======\n', "stack.lock:2: a merge conflict"),
])
def test_a_lock_that_cannot_be_read_stops_with_where_and_what(tmp_path, text, says):
    """Treating it as empty would take moved tags without a word."""
    path = tmp_path / "stack.lock"
    path.write_text(text)
    lock = LockFile(path)
    with pytest.raises(LockError) as err:
        lock.check()
    assert err.value.message.startswith(says) and "delete stack.lock" in err.value.hint
    with pytest.raises(LockError):
        lock.record("alpha", "g/a", "v1", A, keep={"alpha"})
    assert path.read_text() == text  # left for the user to resolve


def test_the_lock_records_its_stack_file_and_refuses_another(tmp_path):
    path = tmp_path / "stack.lock"
    LockFile(path, "stack.yaml").record("alpha", "g/a", "v1", A, keep={"alpha"})
    assert tomllib.loads(path.read_text())["stack"] == "stack.yaml"
    assert LockFile(path, "stack.yaml").commit_for("alpha", "g/a", "v1") == A
    with pytest.raises(LockError, match="belongs to the stack file stack.yaml, not stack.yml"):
        LockFile(path, "stack.yml").check()


def test_a_change_by_someone_else_is_seen(tmp_path):
    lock = LockFile(tmp_path / "stack.lock")
    lock.record("alpha", "g/a", "v1", A, keep={"alpha"})
    assert lock.commit_for("alpha", "g/a", "v1") == A
    LockFile(lock.path).record("alpha", "g/a", "v1", B, keep={"alpha"})
    assert lock.commit_for("alpha", "g/a", "v1") == B


def test_concurrent_records_keep_every_entry(tmp_path):
    lock = LockFile(tmp_path / "stack.lock")
    names = [f"c{i:02d}" for i in range(24)]
    barrier = threading.Barrier(len(names))
    errors = []

    def record(name):
        try:
            barrier.wait()
            lock.record(name, f"g/{name}", "v1", A, keep=set(names))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=record, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    data = tomllib.loads(lock.path.read_text())["components"]
    assert sorted(data) == names
    assert all(LockFile(lock.path).commit_for(n, f"g/{n}", "v1") == A for n in names)
