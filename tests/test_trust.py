"""State you can trust: the lock file, doit's own commands, parallel modes,
patches at the edges, part-level needs and a check scoped to the request.
Each test reproduces one way a hostile new user broke the tool."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest
from conftest import ALPHA_BETA, commit_all, git, write

from tasks.lockfile import HEADER

ALL_AB = ["check", "fetch:alpha", "fetch:beta", "patch:alpha", "patch:beta", "build:alpha",
          "build:beta", "install:alpha", "install:beta"]


# --------------------------------------------------------------------------
# The lock file


def test_a_stack_file_named_like_a_lock_keeps_its_content(ab, tmp_path):
    text = ab.stack_file.read_text()
    mine = tmp_path / "my.lock"
    mine.write_text(text)
    ab.doit(f"stack={mine}")
    assert mine.read_text() == text  # not overwritten by its own lock
    assert "[components.alpha]" in (tmp_path / "my.lock.lock").read_text()
    assert ab.doit(f"stack={mine}").ran == []


def test_two_stack_files_do_not_share_a_lock_silently(ab, tmp_path):
    ab.doit()
    lock = (tmp_path / "stack.lock").read_text()
    other = tmp_path / "stack.yml"
    other.write_text(ab.stack_file.read_text().replace("workdir", "workdir"))
    res = ab.doit(f"stack={other}", expect=None)
    assert res.code != 0
    assert "belongs to the stack file stack.yaml, not stack.yml" in res.text
    assert res.ran == []
    assert (tmp_path / "stack.lock").read_text() == lock
    assert ab.doit().ran == []  # the first one never refetches


CONFLICT = """\
<<<<<<< HEAD
[components.alpha]
git = "{url}"
ref = "v1"
commit = "{a}"
=======
[components.alpha]
git = "{url}"
ref = "v2"
commit = "{b}"
>>>>>>> bump-alpha
"""


def test_a_lock_with_a_merge_conflict_stops_before_anything_runs(ab, tmp_path):
    ab.doit()
    alpha = ab.up.alpha()
    lock = tmp_path / "stack.lock"
    text = lock.read_text()
    start = text.index("[components.alpha]")
    end = text.index("[components.beta]")
    broken = text[:start] + CONFLICT.format(url=alpha, a="1" * 40, b="2" * 40) + text[end:]
    lock.write_text(broken)
    line = broken.splitlines().index("<<<<<<< HEAD") + 1
    res = ab.doit(expect=None)
    assert res.code != 0 and res.ran == []
    assert f"stack.lock:{line}: a merge conflict marker" in res.text
    assert "Hint:" in res.text and "delete stack.lock to re-resolve every ref" in res.text
    assert "Traceback" not in res.text
    assert lock.read_text() == broken  # not treated as empty and rewritten


def test_a_garbage_lock_names_the_line(ab, tmp_path):
    ab.doit()
    lock = tmp_path / "stack.lock"
    lock.write_text(lock.read_text() + "this is = = not toml\n")
    res = ab.doit(expect=None)
    assert res.code != 0 and res.ran == []
    n = len(lock.read_text().splitlines())
    assert f"stack.lock:{n}: not valid TOML" in res.text


def test_the_lock_is_created_with_the_umask(ab, tmp_path):
    old = os.umask(0o022)
    try:
        ab.doit()
    finally:
        os.umask(old)
    lock = tmp_path / "stack.lock"
    assert stat.S_IMODE(lock.stat().st_mode) == 0o644
    assert lock.read_text().startswith("# " + HEADER.splitlines()[0])
    assert 'stack = "stack.yaml"' in lock.read_text()


# --------------------------------------------------------------------------
# The command line and parallel modes


def test_an_unknown_variable_is_refused_naming_it(ab, tmp_path):
    res = ab.doit("list", f"stak={ab.stack_file}", expect=None)
    assert res.code != 0
    assert "unknown variable on the command line: stak= (did you mean 'stack'?)" in res.text
    assert "stack=, force=" in res.text
    assert not (tmp_path / "build").exists()


def test_process_parallelism_is_refused_at_once(ab, tmp_path):
    for args in (("-n", "2", "-P", "process"), ("-Pprocess",)):
        res = ab.doit(*args, expect=None)
        assert res.code != 0 and res.ran == []
        assert "use -P thread" in res.text
    assert not (tmp_path / "build/src").exists()


def test_json_reporter_in_parallel_is_valid_and_each_task_keeps_its_output(ab):
    ab.edit_stack("  beta:\n", "  gamma:\n    git: {g}\n    ref: v1\n    build: make one two\n"
                  "    artifacts: [one.out, two.out]\n  beta:\n".replace("{g}",
                                                                     str(ab.up.gamma())))
    for _ in range(3):
        res = ab.doit("--reporter", "json", "-n", "3", "-P", "thread", "-a", expect=None)
        assert res.code == 0, res.text
        data = json.loads(res.out)
        for task in data["tasks"]:
            own = task["name"]
            for line in task["err"].splitlines():
                label = line.strip().split(": ", 1)[0]
                if label.count(":") == 1 and label.split(":")[0] in (
                        "fetch", "patch", "build", "install"):
                    assert label == own, f"{own} holds {line!r}"


# --------------------------------------------------------------------------
# doit's own commands


def test_forget_makes_the_task_run_again(ab):
    ab.doit()
    res = ab.doit("forget", "build:beta")
    assert "forgot 1 task(s): build:beta" in res.text
    assert ab.doit().ran == ["build:beta"]
    ab.doit("forget", "install")  # a group
    assert sorted(ab.doit().ran) == ["install:alpha", "install:beta"]


@pytest.mark.parametrize("command", ["clean", "reset-dep", "dumpdb", "strace", "ignore"])
def test_doit_commands_that_would_do_nothing_refuse(ab, command):
    ab.doit()
    args = [command] + (["build:alpha"] if command in ("strace", "ignore") else [])
    res = ab.doit(*args, expect=None)  # (each is a command of tasks/plugins.py)
    assert res.code != 0
    assert f"doit {command} is not supported by kata-passt-stack: " in res.text
    assert "Traceback" not in res.text
    assert ab.doit().ran == []


def test_disk_full_says_so_in_one_line(project, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
                           capture_output=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.decode().strip()}")
    try:
        project.write_stack(ALPHA_BETA.split("beta:")[0].format(alpha=project.up.alpha()),
                            settings=f"workdir: {small}/build\n")
        project.edit_stack("build: make", "build: make && head -c 3000000 /dev/zero > big")
        res = project.doit(expect=None)
        assert res.code != 0
        assert "Traceback" not in res.text and "OperationalError" not in res.text
        full = [line for line in res.text.splitlines() if "no space left on device" in line]
        assert len(full) == 1, res.text
        assert str(small) in full[0]
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


# --------------------------------------------------------------------------
# Patches at the edges


def beta_v2_with_the_patch(project):
    """beta v2: upstream took the change that alpha's patch carries."""
    beta = project.up.beta()
    write(beta / "beta.in", "beta\nhello from the patch\n")
    commit_all(beta, "beta v2: greet politely", tag="v2")


def test_a_patch_already_upstream_says_drop_it(ab):
    ab.doit()
    beta_v2_with_the_patch(ab)
    ab.edit_stack("    ref: v1\n    needs: [alpha]", "    ref: v2\n    needs: [alpha]")
    res = ab.doit(expect=None)
    assert res.code != 0
    v2 = git(ab.up.beta(), "rev-parse", "v2^{commit}")[:12]
    assert f"is already in upstream at v2 ({v2}): drop it from stack.yaml" in res.text


def test_an_empty_patch_is_named(project):
    write(project.root / "patches/empty.patch", "")
    project.write_stack(ALPHA_BETA.split("beta:")[0].format(alpha=project.up.alpha()))
    project.edit_stack("    build: make", "    patches: [patches/empty.patch]\n    build: make")
    res = project.doit(expect=None)
    assert res.code != 0
    assert "patches/empty.patch is empty" in res.text
    assert "allow-empty" not in res.text


def test_patch_commits_read_like_upstream(ab):
    ab.doit()
    subject = git(ab.src("beta"), "log", "-1", "--format=%s")
    assert subject == "beta: greet politely"


def test_the_dirty_checkout_hint_says_stash(ab):
    ab.doit()
    (ab.src("alpha") / "src/alpha.in").write_text("edited\n")
    ab.edit_stack("ref: v1", "ref: v2")
    res = ab.doit(expect=None)
    assert res.code != 0
    assert "let 'doit reset:alpha' stash them for you" in res.text
    assert "discard" not in res.text


# --------------------------------------------------------------------------
# Part-level needs and a check scoped to the request


def test_a_config_can_need_one_part(kata):
    with open(kata.stack_file, "a") as f:
        f.write("configs:\n  crictl:\n    path: /etc/crictl.yaml\n    format: yaml\n"
                "    set: {timeout: 10}\n    needs: [kata/runtime]\n")
    res = kata.doit("config:crictl", env=kata.tool_env)
    assert "install:kata/runtime" in res.ran
    assert "build:kata/agent" not in res.ran and "install:kata/agent" not in res.ran


def test_an_unknown_part_in_needs_is_a_spec_error(kata):
    with open(kata.stack_file, "a") as f:
        f.write("configs:\n  crictl:\n    path: /etc/crictl.yaml\n    format: yaml\n"
                "    needs: [kata/runtme]\n")
    res = kata.doit("list", expect=None)
    assert res.code != 0
    assert "configs.crictl.needs.0: 'kata' has no part 'runtme' (did you mean 'runtime'?)" \
        in res.text


def test_the_check_counts_only_what_the_named_tasks_build(ab, tmp_path, monkeypatch):
    monkeypatch.setenv("KPS_CHECK_ROOT", str(tmp_path / "emptyroot"))
    ab.edit_stack("    build: make ALPHA", "    requires: [glib-dev]\n    build: make ALPHA")
    res = ab.doit("install:alpha")
    assert "install:alpha" in res.ran  # beta's missing glib does not stop alpha
    res = ab.doit(expect=None)  # plain doit checks everything
    assert res.code != 0 and "glib-dev" in res.text and "build:beta" not in res.ran


# --------------------------------------------------------------------------
# Small ones


def test_a_workdir_that_is_a_file_says_so(ab, tmp_path):
    (tmp_path / "afile").write_text("x\n")
    ab.edit_stack("settings:\n", f"settings:\n  workdir: {tmp_path / 'afile'}\n")
    res = ab.doit(expect=None)
    assert res.code != 0
    assert f"{tmp_path / 'afile'} is a file, not a folder" in res.text


def test_a_read_only_stack_folder_names_the_lock(ab, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    stack = folder / "stack.yaml"
    stack.write_text(ab.stack_file.read_text().replace(
        "settings:\n", f"settings:\n  workdir: {tmp_path / 'work'}\n"))
    # Root writes anywhere, so make the folder read-only for everyone.
    for argv in (["mount", "--bind", str(folder), str(folder)],
                 ["mount", "-o", "remount,ro,bind", str(folder)]):
        if subprocess.run(argv, capture_output=True).returncode != 0:
            subprocess.run(["umount", str(folder)], capture_output=True)
            pytest.skip("cannot make a read-only bind mount here")
    try:
        res = ab.doit(f"stack={stack}", expect=None)
    finally:
        subprocess.run(["umount", str(folder)], check=True)
    assert res.code != 0
    assert str(folder / "stack.lock") in res.text, res.text
    assert ".kps-tmp" not in res.text


def test_doit_image_without_an_image_section_says_so(ab):
    res = ab.doit("image", expect=None)
    assert res.code != 0
    assert "stack.yaml has no 'image' section" in res.text
    assert "image" not in ab.doit().ran  # plain doit does not try


def test_x_keys_hold_yaml_anchors(ab):
    text = ab.stack_file.read_text()
    ab.stack_file.write_text("x-make: &make make install\n" + text.replace(
        "  install: make install\n", "  install: *make\n", 1))
    assert sorted(ab.doit().ran) == sorted(ALL_AB)

