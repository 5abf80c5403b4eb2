"""The staleness rules, end to end: real git, real make, real doit."""

from __future__ import annotations

import os
import time

import pytest
from conftest import ALPHA_BETA, commit_all, git, write

ALL_AB = ["check", "fetch:alpha", "fetch:beta", "patch:alpha", "patch:beta",
          "build:alpha", "install:alpha", "build:beta", "install:beta"]


def test_first_run_builds_all_and_second_run_does_nothing(ab):
    first = ab.doit()
    assert sorted(first.ran) == sorted(ALL_AB)
    beta = ab.staged("/usr/local/share/beta/beta.txt").read_text()
    assert beta == "alpha one\nbeta\nhello from the patch\n"
    assert os.access(ab.staged("/usr/local/bin/alpha"), os.X_OK)
    lock = (ab.root / "stack.lock").read_text()
    assert git(ab.up.alpha(), "rev-parse", "v1^{commit}") in lock

    second = ab.doit()
    assert second.ran == []
    assert sorted(second.uptodate) == sorted(ALL_AB)
    assert "$ " not in second.err  # no command ran


def test_state_lives_under_the_workdir(ab):
    ab.doit()
    assert (ab.workdir / ".doit.db").exists()
    assert not (ab.root / ".doit.db").exists()
    from conftest import ROOT
    assert not (ROOT / ".doit.db").exists()
    assert (ab.workdir / "logs" / "build-alpha.log").exists()


def test_needs_orders_builds_after_installs(ab):
    res = ab.doit()
    assert res.ran.index("install:alpha") < res.ran.index("build:beta")


def test_repin_fetches_into_the_existing_checkout_and_rebuilds_dependents(ab):
    ab.doit()
    marker = ab.src("alpha") / ".git" / "kept-by-test"
    marker.write_text("not re-cloned")
    ab.edit_stack("ref: v1", "ref: v2")
    res = ab.doit()
    assert sorted(res.ran) == sorted(["fetch:alpha", "patch:alpha", "build:alpha", "install:alpha",
                                      "build:beta", "install:beta"])
    assert marker.exists()
    assert ab.staged("/usr/local/share/beta/beta.txt").read_text().startswith("alpha two\n")
    assert git(ab.up.alpha(), "rev-parse", "v2^{commit}") in (ab.root / "stack.lock").read_text()
    assert ab.doit().ran == []


def test_moved_tag_is_refused_until_updated(ab):
    ab.doit()
    up = ab.up.alpha()
    old = git(up, "rev-parse", "v1^{commit}")
    write(up / "src/alpha.in", "alpha moved\n")
    new_commit = commit_all(up, "moved")
    git(up, "tag", "-f", "-a", "v1", "-m", "moved v1")
    # A fresh machine with the committed stack.lock: the checkout is not there.
    import shutil
    shutil.rmtree(ab.workdir)
    res = ab.doit(expect=None)
    assert res.code != 0
    assert "tag 'v1'" in res.text and old in res.text and new_commit in res.text
    assert "doit update:alpha" in res.text

    ab.doit("update:alpha")
    assert new_commit in (ab.root / "stack.lock").read_text()
    ab.doit()
    assert ab.staged("/usr/local/bin/alpha").read_text().endswith("echo alpha moved\n")


def test_update_reports_and_takes_a_moved_branch(ab):
    ab.edit_stack("ref: v1", "ref: main")
    ab.doit()
    up = ab.up.alpha()
    write(up / "src/alpha.in", "alpha three\n")
    new = commit_all(up, "three")
    # Without update the locked commit stays: nothing to do.
    assert ab.doit().ran == []
    res = ab.doit("update")
    assert new[:12] in res.text
    res = ab.doit()
    assert "build:alpha" in res.ran and "build:beta" in res.ran
    assert ab.staged("/usr/local/bin/alpha").read_text().endswith("echo alpha three\n")


def test_patch_beside_the_stack_file_change_reruns_patch_build_install(ab):
    patch = write(ab.root / "patches/beta/0002-more.patch", """\
        --- a/beta.in
        +++ b/beta.in
        @@ -1,2 +1,3 @@
         beta
         hello from the patch
        +more
        """)
    ab.edit_stack("0001-beta-greets.patch}\n",
                  "0001-beta-greets.patch}\n      - patches/beta/0002-more.patch\n")
    ab.doit()
    assert ab.staged("/usr/local/share/beta/beta.txt").read_text().endswith("more\n")
    log = git(ab.src("beta"), "log", "--format=%s", "-3")
    assert "beta: greet politely" in log and "Apply 0002-more.patch" in log

    patch.write_text(patch.read_text().replace("+more", "+much more"))
    res = ab.doit()
    assert sorted(res.ran) == ["build:beta", "install:beta", "patch:beta"]
    assert ab.staged("/usr/local/share/beta/beta.txt").read_text().endswith("much more\n")


def test_patch_in_another_checkout_is_tracked(ab):
    ab.doit()
    other = ab.src("alpha") / "contrib/beta/0001-beta-greets.patch"
    other.write_text(other.read_text().replace("+hello from the patch", "+hello, edited"))
    res = ab.doit()
    # The edit is also a local edit of alpha's checkout, but not one that
    # changes alpha's artifact: alpha rebuilds, does not reinstall.
    assert sorted(res.ran) == ["build:alpha", "build:beta", "install:beta", "patch:beta"]
    assert ab.staged("/usr/local/share/beta/beta.txt").read_text().endswith("hello, edited\n")


def test_patch_that_does_not_apply_leaves_the_checkout_clean_at_base(ab):
    bad = write(ab.root / "patches/beta/0002-bad.patch", """\
        --- a/beta.in
        +++ b/beta.in
        @@ -1,1 +1,2 @@
         this line is not there
        +x
        """)
    ab.edit_stack("0001-beta-greets.patch}\n",
                  "0001-beta-greets.patch}\n      - patches/beta/0002-bad.patch\n")
    res = ab.doit(expect=None)
    assert res.code != 0
    assert "0002-bad.patch" in res.text and "does not apply" in res.text
    assert "build:beta" not in res.ran
    base = git(ab.up.beta(), "rev-parse", "v1^{commit}")
    src = ab.src("beta")
    assert git(src, "rev-parse", "HEAD") == base
    assert git(src, "status", "--porcelain", "--ignored") == ""
    assert not list(src.rglob("*.rej")) and not list(src.rglob("*.orig"))

    bad.write_text("--- a/beta.in\n+++ b/beta.in\n@@ -1,2 +1,3 @@\n beta\n+x\n"
                   " hello from the patch\n")
    ab.doit()
    beta = ab.staged("/usr/local/share/beta/beta.txt").read_text()
    assert beta.startswith("alpha one\nbeta\nx\n")


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


def test_local_edits_block_a_repin_and_survive(ab):
    ab.doit()
    f = ab.src("alpha") / "src/alpha.in"
    f.write_text("my work\n")
    ab.edit_stack("ref: v1", "ref: v2")
    res = ab.doit(expect=None)
    assert res.code != 0
    assert "alpha" in res.text and "src/alpha.in" in res.text and "local edits" in res.text
    assert "stash" in res.text and "doit reset:alpha" in res.text
    assert f.read_text() == "my work\n"

    ab.doit("reset:alpha")
    assert git(ab.src("alpha"), "stash", "list")
    ab.doit()
    assert ab.staged("/usr/local/bin/alpha").read_text().endswith("echo alpha two\n")


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


def test_deleted_artifact_rebuilds_without_reinstalling(ab):
    ab.doit()
    (ab.src("alpha") / "bin/alpha").unlink()
    res = ab.doit()
    assert res.ran == ["build:alpha"]
    assert ab.doit().ran == []


def test_submodules_are_fetched_at_the_pinned_commit(project):
    sup = project.up.with_submodule()
    project.write_stack(f"""\
        super:
          git: {sup}
          ref: v1
          submodules: true
          build: make
          artifacts: [super.out]
        """)
    project.doit()
    assert (project.src("super") / "super.out").read_text() == "lib v1\n"
    assert project.doit().ran == []
    # An edit inside the submodule is a source edit of the component.
    (project.src("super") / "lib/lib.txt").write_text("lib edited\n")
    res = project.doit()
    # The artifact changed, so its install is stale too.
    assert res.ran == ["build:super", "install:super"]
    assert (project.src("super") / "super.out").read_text() == "lib edited\n"


def test_parallel_run_then_noop(ab):
    res = ab.doit("-n", "4", "-P", "thread")
    assert sorted(res.ran) == sorted(ALL_AB)
    assert ab.doit("-n", "4", "-P", "thread").ran == []


def test_git_insteadof_keeps_working(project):
    alpha = project.up.alpha()
    (project.root / "home" / ".gitconfig").write_text(
        f'[url "{alpha}"]\n\tinsteadOf = https://example.invalid/alpha.git\n')
    project.write_stack("""\
        alpha:
          git: https://example.invalid/alpha.git
          ref: v2
          build: make
          artifacts: [bin/alpha]
        """)
    project.doit()
    assert (project.src("alpha") / "bin/alpha").read_text().endswith("echo alpha two\n")


def test_list_and_info(ab):
    res = ab.doit("list", "--all")
    for name in ALL_AB + ["update:alpha", "reset:beta"]:
        assert name in res.out
    ab.doit()
    (ab.src("beta") / "beta.in").write_text("changed\n")
    res = ab.doit("info", "build:beta", expect=None)
    assert "beta.in" in res.out


def _snapshot(root):
    """Every path under ``root`` with its content (or link target) and mtime."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        body = os.readlink(p) if p.is_symlink() else (p.read_bytes() if p.is_file() else b"")
        out[str(p.relative_to(root))] = (st.st_mtime_ns, st.st_mode, body)
    return out


@pytest.mark.parametrize("command", [("list", "--all"), ("list", "--status"),
                                     ("info", "build:beta"), ("help",), ("help", "build")])
def test_read_only_commands_write_nothing(ab, tmp_path, command):
    ok = (0, 1) if command[0] == "info" else (0,)  # info exits 1 for a stale task
    fresh = ab.doit(*command, expect=None)
    assert fresh.code in ok, fresh.text
    assert not (ab.root / "build").exists()  # no workdir, no database, no cache
    ab.doit()
    (ab.src("beta") / "beta.in").write_text("changed\n")  # info has something to say
    before = _snapshot(tmp_path)
    res = ab.doit(*command, expect=None)
    assert res.code in ok, res.text
    assert _snapshot(tmp_path) == before


def test_json_reporter(ab):
    import json
    res = ab.doit("--reporter", "json")
    data = json.loads(res.out)
    assert {t["name"] for t in data["tasks"]} >= set(ALL_AB)


def test_stack_variable_selects_the_spec(project, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    alpha = project.up.alpha()
    (other / "s.yaml").write_text(ALPHA_BETA.split("beta:")[0].join(["", ""]) and
                                  "version: 1\nsettings: {destdir: st}\ncomponents:\n"
                                  + "\n".join("  " + line for line in
                                              ALPHA_BETA.format(alpha=alpha, beta="")
                                              .split("beta:")[0].splitlines()) + "\n")
    project.stack_file = other / "s.yaml"
    project.doit()
    assert (other / "build" / "src" / "alpha" / "bin" / "alpha").exists()
    assert (other / "st" / "usr/local/bin/alpha").exists()
    assert (other / "s.lock").exists()


def test_deleted_checkout_is_restored_and_rebuilt(ab):
    ab.doit()
    import shutil
    shutil.rmtree(ab.src("beta"))
    res = ab.doit()
    assert sorted(res.ran) == ["build:beta", "fetch:beta", "patch:beta"]
    assert ab.doit().ran == []


def test_lost_lock_is_rebuilt_offline_from_the_fetched_refs(ab):
    ab.doit()
    lock = (ab.root / "stack.lock").read_text()
    (ab.root / "stack.lock").unlink()
    # Upstream unreachable: the refs fetched before still say what v1 was.
    ab.up.alpha().rename(ab.root / "alpha-away")
    ab.up.beta().rename(ab.root / "beta-away")
    res = ab.doit()
    assert "cannot be reached" in res.err
    assert (ab.root / "stack.lock").read_text() == lock
    assert not [t for t in res.ran if t.startswith(("patch", "build", "install"))]


def test_branch_of_yours_is_kept_when_the_pin_moves(ab):
    ab.doit()
    src = ab.src("alpha")
    git(src, "checkout", "-q", "-b", "mywork")
    (src / "src/alpha.in").write_text("my branch\n")
    git(src, "commit", "-q", "-am", "my work")
    res = ab.doit()
    assert "build:alpha" in res.ran  # your commit is built
    assert ab.staged("/usr/local/bin/alpha").read_text().endswith("echo my branch\n")
    ab.edit_stack("ref: v1", "ref: v2")
    res = ab.doit()
    assert "your branch 'mywork' (kept" in res.err
    assert git(src, "log", "-1", "--format=%s", "mywork") == "my work"
    assert ab.staged("/usr/local/bin/alpha").read_text().endswith("echo alpha two\n")


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


def test_first_run_does_not_mention_a_branch(ab):
    res = ab.doit()
    assert "your branch" not in res.err
    assert not list((ab.workdir / "state" / "tmp").glob("kps-*"))
