"""smoke: the stack's end-to-end check, through the real dodo.py.

The shell-command form runs the fixture's installed ``alpha`` (staged under
tmp_path, found through PATH); the run_pod form uses the crictl, crio and ip
stand-ins of tests/standins/, and the image_boot form the QEMU stand-in.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import ALPHA
from test_image import Boot

STANDINS = Path(__file__).parent / "standins"


def smoke_stack(project, smoke: str, extra: str = "") -> None:
    project.write_stack(ALPHA.format(alpha=project.up.alpha()))
    with open(project.stack_file, "a") as f:
        f.write(textwrap.dedent(extra))
        f.write("smoke:\n" + textwrap.indent(textwrap.dedent(smoke), "  "))


def result(project) -> dict:
    return json.loads((project.workdir / "state/smoke.json").read_text())


PASSING = """\
commands:
  - run: alpha
    expect: [alpha one]
"""


def test_smoke_runs_the_installed_stack_and_records_its_result(project):
    smoke_stack(project, PASSING)
    res = project.doit("smoke")
    assert res.ran[-1] == "smoke" and "install:alpha" in res.ran  # what it uses, first
    assert "ok   command: alpha: exit code 0, its output has 'alpha one'" in res.err
    got = result(project)
    assert got["passed"] is True and got["seconds"] >= 0 and time.time() - got["when"] < 120
    assert [c["check"] for c in got["checks"]] == ["command: alpha"]
    assert "alpha one" in got["transcript"]  # what alpha printed
    assert "alpha one" in Path(got["log"]).read_text()
    # alpha exists only in the staged install: the command found it on PATH
    assert project.staged("/usr/local/bin/alpha").exists()


def test_smoke_is_up_to_date_while_nothing_it_uses_changed(project):
    smoke_stack(project, PASSING)
    project.doit("smoke")
    res = project.doit("smoke")
    assert "smoke" in res.uptodate and "smoke" not in res.ran
    assert res.ran == []


def test_smoke_reruns_when_an_install_changes(project):
    smoke_stack(project, PASSING)
    project.doit("smoke")
    project.edit_stack("ref: v1", "ref: v2")  # alpha now says "alpha two"
    res = project.doit("smoke", expect=1)
    assert "install:alpha" in res.ran and "smoke" in res.ran
    assert "command: alpha: its output lacks 'alpha one'" in res.text
    assert result(project)["passed"] is False


def test_smoke_reruns_when_its_own_definition_changes(project):
    smoke_stack(project, PASSING)
    project.doit("smoke")
    project.edit_stack("expect: [alpha one]", "expect: [alpha]")
    res = project.doit("smoke")
    assert res.ran == ["smoke"]


def test_a_failing_smoke_runs_again_next_time(project):
    smoke_stack(project, "commands: [{run: alpha, expect: [alpha three]}]\n")
    first = project.doit("smoke", expect=1)
    assert "smoke" in first.ran
    again = project.doit("smoke", expect=1)
    assert again.ran == ["smoke"]  # nothing else changed: only the smoke reruns
    got = result(project)
    assert got["passed"] is False
    assert got["checks"][0]["why"] == "its output lacks 'alpha three'"


def test_a_command_that_fails_fails_the_smoke_with_its_exit_code(project):
    smoke_stack(project, "commands: ['alpha; exit 3']\n")
    res = project.doit("smoke", expect=1)
    assert "command: alpha; exit 3: exit code 3" in res.text
    assert "Hint: the transcript is in" in res.text


def test_a_command_that_hangs_is_stopped_at_the_timeout(project):
    smoke_stack(project, "commands: ['sleep 600']\ntimeout: 600\n")
    started = time.monotonic()
    res = project.doit("smoke", "timeout=1", expect=1)
    assert time.monotonic() - started < 60
    assert "still running after 1 s: stopped" in res.text
    assert result(project)["checks"][0]["timed_out"] is True


def test_a_bad_timeout_is_refused(project):
    smoke_stack(project, PASSING)
    res = project.doit("smoke", "timeout=soon", expect=1)
    assert "timeout=soon: give the time limit in whole seconds" in res.text


def test_smoke_is_not_part_of_plain_doit(project):
    smoke_stack(project, PASSING)
    res = project.doit()
    assert "smoke" not in res.ran and "install:alpha" in res.ran
    assert not (project.workdir / "state/smoke.json").exists()


def test_smoke_without_a_section_says_what_to_add(project):
    project.write_stack(ALPHA.format(alpha=project.up.alpha()))
    res = project.doit("smoke", expect=1)
    assert "stack.yaml has no 'smoke' section" in res.text and "Hint: add one" in res.text


def test_status_shows_the_last_smoke_and_whether_it_would_rerun(project):
    smoke_stack(project, PASSING)
    res = project.doit("status")
    assert "smoke: never ran" in res.out
    project.doit("smoke")
    res = project.doit("status")
    assert "smoke: passed" in res.out and "up to date" in res.out
    project.edit_stack("expect: [alpha one]", "expect: [alpha nine]")
    res = project.doit("status")
    assert "smoke: passed" in res.out and "doit smoke would run it again: " in res.out
    project.doit("smoke", expect=1)
    res = project.doit("status")
    line = next(x for x in res.out.splitlines() if x.startswith("smoke:"))
    assert "FAILED" in line and "doit smoke runs it again" in line
    assert "command: alpha: its output lacks 'alpha nine'" in res.out
    assert "smoke.log" in res.out


# --------------------------------------------------------------------------
# run_pod and image_boot, with the stand-ins


def standin_bin(tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    for name in names:
        exe = folder / name
        exe.write_text(f"#!{sys.executable}\n" + (STANDINS / f"{name}.py").read_text())
        exe.chmod(0o755)
    return folder


def test_the_pod_check_runs_the_pod_checks_its_ip_addr_and_removes_it(project, tmp_path):
    folder = standin_bin(tmp_path, "crictl", "crio", "ip")
    (tmp_path / "standin").mkdir()
    socket = tmp_path / "run" / "crio.sock"
    env = {"PATH": f"{folder}:{os.environ['PATH']}", "STANDIN_DIR": str(tmp_path / "standin")}
    smoke_stack(project, "run_pod: {expect: [inet 10.88.0.7/16]}\n",
                extra=f"pod:\n  runtime: runc\n  socket: {socket}\n  start_timeout: 10\n")
    try:
        res = project.doit("smoke", env=env)
        assert "ok   run_pod: the pod ran, its ip addr has 'inet 10.88.0.7/16'" in res.err
        calls = [json.loads(x)["cmd"] for x in
                 (tmp_path / "standin/calls.jsonl").read_text().splitlines()]
        assert "exec" in calls and "rmp" in calls[calls.index("exec"):]  # removed after
        assert project.doit("smoke", env=env).ran == []  # up to date
        project.edit_stack("inet 10.88.0.7/16", "inet 192.0.2.1")
        res = project.doit("smoke", env=env, expect=1)
        assert "the pod's ip addr lacks 'inet 192.0.2.1'" in res.text
    finally:
        pids = tmp_path / "standin/crio.pids"
        for pid in pids.read_text().split() if pids.exists() else []:
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass


@pytest.mark.parametrize("mode, passed", [("boot", True), ("panic", False)])
def test_the_image_check_boots_the_image(kata, tmp_path, mode, passed):
    env = Boot(kata, tmp_path, mode=mode).env
    with open(kata.stack_file, "a") as f:
        f.write("smoke:\n  image_boot: true\n")
    res = kata.doit("smoke", env=env, expect=0 if passed else 1)
    assert "image" in res.ran and res.ran[-1] == "smoke"
    assert result(kata)["passed"] is passed
    if passed:
        assert "ok   image_boot: the image booted to its agent" in res.err
    else:
        assert "FAIL image_boot: the image did not boot: the kernel panicked" in res.text
    assert "console:" in result(kata)["transcript"]
