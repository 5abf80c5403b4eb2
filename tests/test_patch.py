"""The patch step: moving the checkout to the pin and applying the series, end
to end: real git, real make, real doit."""

from __future__ import annotations

from conftest import git, write


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


def test_first_run_does_not_mention_a_branch(ab):
    res = ab.doit()
    assert "your branch" not in res.err
    assert not list((ab.workdir / "state" / "tmp").glob("kps-*"))
