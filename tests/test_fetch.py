"""The fetch step (and update, reset): its staleness rules and stack.lock, end to end:
real git, real make, real doit."""

from __future__ import annotations

import os
import shutil

from conftest import commit_all, git, write


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


def test_only_a_new_checkouts_first_fetch_leaves_out_gits_maintenance(ab):
    # one pack in an empty repository has nothing to maintain; a repository
    # that fetches again keeps git's own automatic maintenance
    ab.doit()
    log = (ab.workdir / "logs/fetch-alpha.log").read_text()
    assert "-c maintenance.auto=false fetch" in log, log
    ab.edit_stack("ref: v1", "ref: v2")
    assert "fetch:alpha" in ab.doit().ran
    log = (ab.workdir / "logs/fetch-alpha.log").read_text()
    assert " fetch " in log and "maintenance.auto" not in log, log


def test_moved_tag_is_refused_until_updated(ab):
    ab.doit()
    up = ab.up.alpha()
    old = git(up, "rev-parse", "v1^{commit}")
    write(up / "src/alpha.in", "alpha moved\n")
    new_commit = commit_all(up, "moved")
    git(up, "tag", "-f", "-a", "v1", "-m", "moved v1")
    # A fresh machine with the committed stack.lock: the checkout is not there.
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


def test_deleted_checkout_is_restored_and_rebuilt(ab):
    ab.doit()
    shutil.rmtree(ab.src("beta"))
    res = ab.doit()
    assert sorted(res.ran) == ["build:beta", "fetch:beta", "patch:beta"]
    assert ab.doit().ran == []


GIT_KILLED_IN_INIT = """\
#!/bin/sh
# git, killed half-way through its first 'init': a .git with folders, no HEAD
case " $* " in *" init "*)
  if [ ! -e {flag} ]; then
    touch {flag}
    c=.; prev=; last=
    for a; do [ "$prev" = -C ] && c=$a; prev=$a; last=$a; done
    case $last in -*) last=.;; esac
    mkdir -p "$c/$last/.git/objects" "$c/$last/.git/refs"
    kill -9 $$
  fi;;
esac
exec {git} "$@"
"""


def test_a_checkout_whose_git_init_was_killed_is_made_again(ab, tmp_path):
    # git refuses a half-made .git ("not a git repository"); the next run
    # must not stumble on what a killed run left
    bin_ = tmp_path / "killing-git"
    write(bin_ / "git", GIT_KILLED_IN_INIT.format(flag=tmp_path / "killed-once",
                                                  git=shutil.which("git")), mode=0o755)
    env = {"PATH": f"{bin_}:{os.environ['PATH']}"}
    res = ab.doit(expect=1, env=env)
    assert "exit code 137" in res.out, res.out
    assert (tmp_path / "killed-once").exists()
    res = ab.doit(env=env)
    assert "fetch:alpha" in res.ran and "fetch:beta" in res.ran
    assert git(ab.src("alpha"), "remote", "get-url", "origin") == str(ab.up.alpha())
    assert not list(ab.src("alpha").parent.glob(".*git-init"))
    assert ab.doit(env=env).ran == []


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
