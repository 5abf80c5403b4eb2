"""The build step's staleness rules, end to end: real git, real make, real doit."""

from __future__ import annotations

import os
import time

from conftest import git, write


def test_needs_orders_builds_after_installs(ab):
    res = ab.doit()
    assert res.ran.index("install:alpha") < res.ran.index("build:beta")


def test_local_edits_rebuild_and_a_second_edit_counts(ab):
    ab.doit()
    f = ab.src("beta") / "beta.in"
    f.write_text("beta edited\n")
    res = ab.doit()
    assert sorted(res.ran) == ["build:beta", "install:beta"]
    assert "beta edited" in ab.staged("/usr/local/share/beta/beta.txt").read_text()
    f.write_text("beta edited twice\n")
    res = ab.doit()
    assert sorted(res.ran) == ["build:beta", "install:beta"]
    assert "twice" in ab.staged("/usr/local/share/beta/beta.txt").read_text()
    assert ab.doit().ran == []


def test_touch_reruns_nothing(ab):
    ab.doit()
    later = time.time() + 10
    for path in list(ab.src("beta").rglob("*")) + list(ab.src("alpha").rglob("*")):
        if ".git" not in path.parts and path.is_file():
            os.utime(path, (later, later))
    assert ab.doit().ran == []


def test_untracked_file_rebuilds_but_identical_output_does_not_reinstall(ab):
    ab.doit()
    write(ab.src("beta") / "notes.txt", "mine\n")
    res = ab.doit()
    assert res.ran == ["build:beta"]
    assert ab.doit().ran == []


def test_commit_with_same_tree_rebuilds_nothing(ab):
    ab.doit()
    src = ab.src("beta")
    git(src, "commit", "-q", "--allow-empty", "-m", "same tree, new commit")
    assert ab.doit().ran == []


def test_build_outputs_in_the_tree_are_not_source_edits(project):
    gamma = project.up.gamma()
    project.write_stack(f"""\
        gamma:
          git: {gamma}
          ref: v1
          parts:
            one:
              build: make one
              artifacts: [one.out]
            two:
              build: make two
              artifacts: [two.out]
        """)
    res = project.doit()
    assert {"build:gamma/one", "build:gamma/two", "install:gamma/one",
            "install:gamma/two"} <= set(res.ran)
    assert project.doit().ran == []
    # ... yet a real edit still counts, for both parts of the checkout.
    write(project.src("gamma") / "one.in", "one edited\n")
    res = project.doit()
    assert sorted(res.ran) == ["build:gamma/one", "build:gamma/two", "install:gamma/one"]
    assert (project.src("gamma") / "one.out").read_text() == "one edited\n"


def test_failed_build_shows_command_code_tail_and_log_then_retries(ab):
    f = ab.root / "fail-flag"
    f.write_text("1")
    text = ab.stack_file.read_text().replace(
        'build: make ALPHA=', f'build: [\'echo some output; test ! -e {f} || exit 7\', make ALPHA=')
    text = text.replace('make ALPHA="$DESTDIR$PREFIX/bin/alpha"',
                        "'make ALPHA=\"$DESTDIR$PREFIX/bin/alpha\"']")
    ab.stack_file.write_text(text)
    res = ab.doit(expect=None)
    assert res.code != 0
    assert "exit code 7" in res.text
    assert "some output" in res.text
    assert "build-beta.log" in res.text
    assert "install:beta" not in res.ran
    f.unlink()
    res = ab.doit()
    assert sorted(res.ran) == ["build:beta", "install:beta"]


def test_env_change_rebuilds_and_reinstalls_that_component(ab):
    ab.doit()
    ab.edit_stack("  build: make\n", "  build: make\n    env: {FOO: bar}\n")
    res = ab.doit()
    assert sorted(res.ran) == ["build:alpha", "install:alpha"]


def test_prefix_change_reinstalls_and_rebuilds_what_names_it(ab):
    ab.doit()
    text = ab.stack_file.read_text().replace("jobs: 2\n", "jobs: 2\n  prefix: /opt/kps\n")
    ab.stack_file.write_text(text)
    res = ab.doit()
    # beta's build command names $PREFIX, alpha's does not.
    assert sorted(res.ran) == ["build:beta", "install:alpha", "install:beta"]
    assert ab.staged("/opt/kps/bin/alpha").exists()


def test_jobs_change_reruns_nothing(ab):
    ab.doit()
    ab.stack_file.write_text(ab.stack_file.read_text().replace("jobs: 2", "jobs: 3"))
    assert ab.doit().ran == []


def test_deleted_artifact_rebuilds_without_reinstalling(ab):
    ab.doit()
    (ab.src("alpha") / "bin/alpha").unlink()
    res = ab.doit()
    assert res.ran == ["build:alpha"]
    assert ab.doit().ran == []


def test_committing_a_built_edit_rebuilds_nothing(ab):
    ab.doit()
    src = ab.src("beta")
    (src / "beta.in").write_text("beta edited\n")
    write(src / "extra.txt", "new file\n")
    assert sorted(ab.doit().ran) == ["build:beta", "install:beta"]
    git(src, "add", "-A")
    git(src, "commit", "-q", "-m", "my edit")
    assert ab.doit().ran == []
    # ... but committing something other than what was built does rebuild.
    (src / "beta.in").write_text("beta edited again\n")
    git(src, "commit", "-q", "-am", "another")
    assert sorted(ab.doit().ran) == ["build:beta", "install:beta"]
