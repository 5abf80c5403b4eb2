"""tasks/run.py: running commands, logs, the sudo policy, stopping processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import write

from tasks import run, session
from tasks.errors import CommandFailed, StackError

# A process group that ignores SIGTERM (the disposition is inherited by sleep;
# the ':' keeps the shell from exec'ing sleep).  Ready once sleep runs.
STUBBORN = ["sh", "-c", 'trap "" TERM; sleep 30; :']


@pytest.fixture
def group():
    """Start a process in a session (and process group) of its own; every
    one started is killed and reaped at the end."""
    started: list[subprocess.Popen] = []

    def start(argv: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL)
        started.append(proc)
        # wait until it runs its own program (and, for a shell, its child)
        assert wait_until(lambda: run.cmdline(proc.pid)[:1] == [argv[0]])
        if argv[0] == "sh":
            assert wait_until(lambda: len(members(proc.pid)) >= 2)
        return proc

    yield start
    for proc in started:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait(timeout=10)


def alive(pid: int) -> bool:
    st = run.proc_stat(pid)
    return st is not None and st[0] != "Z"


def members(pgid: int) -> list[int]:
    """The live processes of a process group (from /proc: no pgrep needed)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry.name))
    return sorted(found)


def wait_until(condition, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


# --------------------------------------------------------------------------
# run()


def test_run_streams_output_into_the_log_and_appends(tmp_path, capsys):
    log = tmp_path / "logs/build.log"
    run.run("echo one; echo two >&2", cwd=tmp_path, log=log, label="build:x: ")
    run.run("echo three", cwd=tmp_path, log=log)
    text = log.read_text()
    assert text.index("one\n") < text.index("two\n") < text.index("three\n")
    assert "### $ echo one; echo two >&2\n" in text and "### $ echo three\n" in text
    assert f" in {tmp_path}\n" in text
    assert "  build:x: $ echo one; echo two >&2" in capsys.readouterr().err


def test_run_runs_in_cwd(tmp_path):
    (tmp_path / "sub").mkdir()
    run.run("pwd > here", cwd=tmp_path / "sub", log=tmp_path / "x.log")
    assert (tmp_path / "sub/here").read_text().strip() == str(tmp_path / "sub")


def test_run_failure_has_code_tail_of_this_run_and_log(tmp_path):
    log = tmp_path / "x.log"
    run.run("echo from-the-earlier-run", cwd=tmp_path, log=log)
    with pytest.raises(CommandFailed) as err:
        run.run("for i in $(seq 1 40); do echo line$i; done; echo oops >&2; exit 3",
                cwd=tmp_path, log=log)
    failed = err.value
    assert failed.code == 3
    assert failed.log == str(log)
    lines = failed.tail.splitlines()
    assert len(lines) == run.TAIL_LINES and lines[-1] == "oops" and lines[-2] == "line40"
    assert "from-the-earlier-run" not in failed.tail
    assert f"--- full log: {log}" in str(failed) and "exit code 3" in str(failed)
    assert "from-the-earlier-run" in log.read_text()


def test_run_a_command_killed_by_a_signal_says_which(tmp_path):
    log = tmp_path / "x.log"
    with pytest.raises(CommandFailed) as err:
        run.run("echo before; kill -KILL $$", cwd=tmp_path, log=log)
    assert err.value.code == -signal.SIGKILL
    assert "command was killed by SIGKILL: echo before; kill -KILL $$" in str(err.value)
    assert err.value.tail == "before"


def test_run_a_missing_folder_is_a_failure_not_a_traceback(tmp_path):
    with pytest.raises(CommandFailed) as err:
        run.run("true", cwd=tmp_path / "gone", log=tmp_path / "x.log")
    assert err.value.code == 127 and "gone" in str(err.value)


def test_run_starts_no_thread_and_passes_the_log_file_itself(tmp_path):
    # the command writes into the log file (its stdout is that file), with no
    # thread of ours copying bytes: what a gigabyte of output relies on
    before = threading.active_count()
    run.run("ls -l /proc/self/fd/1 /proc/self/fd/2 > fds; readlink /proc/self/fd/1",
            cwd=tmp_path, log=tmp_path / "x.log")
    assert threading.active_count() == before
    assert str(tmp_path / "x.log") in (tmp_path / "x.log").read_text()
    assert (tmp_path / "fds").read_text().count(str(tmp_path / "x.log")) == 1  # fd 2 too


def test_run_non_utf8_output_is_logged_as_bytes(tmp_path):
    log = tmp_path / "x.log"
    run.run(r"printf 'ok \377\376\n'", cwd=tmp_path, log=log)
    assert b"ok \xff\xfe\n" in log.read_bytes()
    with pytest.raises(CommandFailed) as err:
        run.run(r"printf 'bad \377\n'; exit 1", cwd=tmp_path, log=log)
    assert err.value.tail == "bad \ufffd"


def test_run_env_extra_is_merged_into_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("KPS_OUTER", "outer")
    monkeypatch.setenv("KPS_OVERRIDDEN", "old")
    run.run('echo "$KPS_OUTER $KPS_EXTRA $KPS_OVERRIDDEN" > env.txt', cwd=tmp_path,
            log=tmp_path / "x.log", env={"KPS_EXTRA": "extra", "KPS_OVERRIDDEN": "new"})
    assert (tmp_path / "env.txt").read_text() == "outer extra new\n"
    assert "KPS_EXTRA" not in os.environ and os.environ["KPS_OVERRIDDEN"] == "old"


def test_run_gives_the_command_its_own_process_group(tmp_path):
    script = ("import os; print(os.getpid(), os.getppid(), os.getpgrp(), os.getsid(0))")
    run.run(f"{sys.executable} -c '{script}' > ids; :", cwd=tmp_path, log=tmp_path / "x.log")
    pid, ppid, pgid, sid = map(int, (tmp_path / "ids").read_text().split())
    assert pgid != os.getpgrp() and sid != os.getsid(0)
    assert pgid == sid == ppid  # the shell leads the group; its children are in it


def test_run_records_the_running_group_and_removes_the_record(tmp_path):
    folder = tmp_path / "running"
    folder.mkdir()
    current = session.Run()
    current.registry = folder
    # (the record is written just after the command starts: wait for it)
    command = (f"for i in $(seq 500); do [ -e {folder}/$$.pgid ] && break; sleep 0.01; done; "
               f"cat {folder}/$$.pgid > seen; echo >> seen; echo $$ >> seen")
    with session.using(current):
        run.run(command, cwd=tmp_path, log=tmp_path / "x.log")
    pid, ticks, recorded, shell = (tmp_path / "seen").read_text().splitlines()
    assert pid == shell  # the group is recorded by its leader, the shell
    assert int(ticks) >= int(run.start_ticks(os.getpid()))  # it started after us
    assert recorded == command
    assert list(folder.iterdir()) == []


def test_run_with_sudo_keeps_the_env_names(tmp_path, monkeypatch):
    calls = tmp_path / "sudo.calls"
    write(tmp_path / "bin/sudo", f"""\
        #!/bin/sh
        echo "$*" >> {calls}
        while [ "$1" != "--" ]; do shift; done
        shift
        exec "$@"
        """, mode=0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    log = tmp_path / "x.log"
    run.run("echo $KPS_B$KPS_A", cwd=tmp_path, log=log, sudo=True,
            env={"KPS_B": "b", "KPS_A": "a"})
    assert calls.read_text() == "--preserve-env=KPS_A,KPS_B -- sh -c echo $KPS_B$KPS_A\n"
    assert "### $ sudo echo $KPS_B$KPS_A\n" in log.read_text()
    assert log.read_text().endswith("ba\n")


# --------------------------------------------------------------------------
# query()


def test_query_returns_code_out_err(tmp_path):
    result = run.query(["sh", "-c", "echo out; echo err >&2; exit 4"], check=False)
    assert (result.code, result.out, result.err, result.ok) == (4, "out\n", "err\n", False)
    assert result.argv == ("sh", "-c", "echo out; echo err >&2; exit 4")
    ok = run.query(["cat"], input=b"fed\n", cwd=tmp_path)
    assert ok.ok and ok.stdout == b"fed\n"


def test_query_check_raises_with_the_stderr(tmp_path):
    with pytest.raises(CommandFailed) as err:
        run.query(["sh", "-c", "echo the reason >&2; exit 2"])
    assert err.value.code == 2 and err.value.tail == "the reason" and err.value.log is None


def test_query_env_and_cwd(tmp_path, monkeypatch):
    monkeypatch.setenv("KPS_OUTER", "o")
    out = run.capture(["sh", "-c", 'echo "$KPS_OUTER$KPS_X $(pwd)"'], cwd=tmp_path,
                      env={"KPS_X": "x"})
    assert out == f"ox {tmp_path}\n"


def test_query_keeps_undecodable_bytes_in_out():
    result = run.query(["printf", r"a\377"])
    assert result.out == "a\udcff"
    assert result.out.encode("utf-8", "surrogateescape") == b"a\xff"


def test_query_a_missing_program():
    with pytest.raises(run.ProgramMissing) as err:
        run.query(["kps-no-such-program-here"], missing_hint="apt install it")
    assert isinstance(err.value, StackError)
    assert err.value.message == "kps-no-such-program-here: command not found"
    assert err.value.hint == "apt install it"


def test_query_timeout():
    start = time.monotonic()
    result = run.query(["sleep", "10"], timeout=0.2, check=False)
    assert time.monotonic() - start < 5
    assert result.code == -1 and result.err.endswith("(timed out)")
    with pytest.raises(CommandFailed) as err:
        run.query(["sleep", "10"], timeout=0.2)
    assert err.value.code == -1


# --------------------------------------------------------------------------
# Logs


def test_tail_bytes_reads_only_the_end_of_a_big_file(tmp_path, monkeypatch):
    big = tmp_path / "big.log"
    with open(big, "wb") as f:
        f.seek(1 << 30)  # 1 GiB of hole, then the end
        f.write(b"the end\n")
    read = []
    real_open = open

    def counting_open(*args, **kwargs):
        f = real_open(*args, **kwargs)
        real_read = f.read
        f.read = lambda *a: read.append(len(data := real_read(*a))) or data
        return f

    monkeypatch.setattr(run, "open", counting_open, raising=False)
    data, size = run.tail_bytes(big, 100)
    assert size == (1 << 30) + 8 and data == b"\0" * 92 + b"the end\n"
    assert sum(read) == 100
    assert run.tail(big).endswith("the end")
    assert sum(read) <= 100 + 64 * 1024


def test_tail_bytes_after_an_offset(tmp_path):
    f = tmp_path / "x.log"
    f.write_bytes(b"0123456789")
    assert run.tail_bytes(f, 100, offset=7) == (b"789", 10)
    assert run.tail_bytes(f, 4, offset=2) == (b"6789", 10)


def test_tail_lines_offset_and_missing(tmp_path):
    f = tmp_path / "x.log"
    f.write_text("".join(f"l{i}\n" for i in range(100)))
    assert run.tail(f, lines=3) == "l97\nl98\nl99"
    assert run.tail(f).splitlines() == [f"l{i}" for i in range(75, 100)]
    assert run.tail(f, offset=len("".join(f"l{i}\n" for i in range(98)))) == "l98\nl99"
    assert run.tail(tmp_path / "missing.log") == ""


def test_rotate_keeps_the_previous_log(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "x.log"
    run.rotate(log)  # nothing there: nothing happens
    assert list(logs.iterdir()) == []
    log.write_text("first")
    run.rotate(log)
    assert not log.exists() and (logs / "x.log.1").read_text() == "first"
    log.write_text("second")
    run.rotate(log)
    assert (logs / "x.log.1").read_text() == "second"
    assert sorted(p.name for p in logs.iterdir()) == ["x.log.1"]


# --------------------------------------------------------------------------
# The sudo policy


@pytest.mark.parametrize("policy, live, root, expected", [
    ("auto", True, False, True),
    ("auto", True, True, False),
    ("auto", False, False, False),
    ("never", True, False, False),
    ("never", False, True, False),
])
def test_sudo_for(monkeypatch, policy, live, root, expected):
    monkeypatch.setattr(run, "is_root", lambda: root)
    assert run.sudo_for(policy, live) is expected


def test_as_root():
    argv = ["make", "install"]
    plain = run.as_root(argv, False, keep_env=["X"])
    assert plain == argv and plain is not argv
    assert run.as_root(argv, True) == ["sudo", "--", "make", "install"]
    assert run.as_root(argv, True, keep_env={"PREFIX": 1, "DESTDIR": 2}.keys()) == \
        ["sudo", "--preserve-env=DESTDIR,PREFIX", "--", "make", "install"]


def test_need_root(monkeypatch):
    monkeypatch.setattr(run, "is_root", lambda: True)
    assert run.need_root("pod", "never", "it talks to CRI-O") is False
    monkeypatch.setattr(run, "is_root", lambda: False)
    with pytest.raises(StackError, match="pod needs root: it talks to CRI-O"):
        run.need_root("pod", "never", "it talks to CRI-O")
    monkeypatch.setattr(run, "which", lambda program: None)
    with pytest.raises(StackError, match="sudo is not installed"):
        run.need_root("pod", "auto", "it talks to CRI-O")


# --------------------------------------------------------------------------
# Processes


def test_stop_sends_sigkill_to_what_ignores_sigterm(group):
    proc = group(STUBBORN)
    sent = []

    def send(sig):
        sent.append(sig)
        os.killpg(proc.pid, sig)
        return True

    start = time.monotonic()
    assert run.stop(send, lambda: proc.poll() is not None, grace=0.3) is True
    assert sent == [signal.SIGTERM, signal.SIGKILL]
    assert time.monotonic() - start >= 0.3
    assert proc.returncode == -signal.SIGKILL


def test_stop_with_sigterm_only_when_that_suffices(group):
    proc = group(["sleep", "30"])
    sent = []

    def send(sig):
        sent.append(sig)
        os.kill(proc.pid, sig)
        return True

    assert run.stop(send, lambda: proc.poll() is not None, grace=5) is True
    assert sent == [signal.SIGTERM] and proc.returncode == -signal.SIGTERM


def test_stop_when_nothing_is_left_to_signal():
    assert run.stop(lambda sig: False, lambda: False, grace=0.1) is False
    sent = []
    assert run.stop(lambda sig: sent.append(sig) or True, lambda: True) is True
    assert sent == []


def test_stop_group_kills_a_group_that_ignores_sigterm(group):
    proc = group(STUBBORN)
    assert run.group_alive(proc.pid)
    assert run.stop_group(proc.pid, grace=0.3) is True
    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert not run.group_alive(proc.pid)


def test_stop_group_kills_members_that_outlive_the_leader(group):
    proc = group(["sh", "-c", "sh -c 'trap \"\" TERM; sleep 30; :' & wait"])
    assert wait_until(lambda: len(members(proc.pid)) == 3)
    run.stop_group(proc.pid, grace=0.3)
    proc.wait(timeout=5)
    assert wait_until(lambda: members(proc.pid) == [], timeout=1)


def record(folder: Path, pid: int, ticks: str | None, command: str) -> Path:
    """A registry entry as run._record writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    entry = folder / f"{pid}.pgid"
    entry.write_text(f"{pid}\n{ticks}\n{command}")
    return entry


def test_reap_stops_a_group_a_killed_run_left_behind(tmp_path, group):
    proc = group(["sh", "-c", "sleep 30; :"])
    assert len(members(proc.pid)) == 2  # sh and its sleep
    folder = tmp_path / "running"
    entry = record(folder, proc.pid, run.start_ticks(proc.pid), "make -j8 all")
    assert run.reap(folder) == ["make -j8 all"]
    assert proc.wait(timeout=5) == -signal.SIGTERM
    assert not entry.exists()
    assert wait_until(lambda: members(proc.pid) == [])


def test_reap_ignores_a_reused_pid(tmp_path, group):
    proc = group(["sleep", "30"])
    folder = tmp_path / "running"
    ticks = run.start_ticks(proc.pid)
    entry = record(folder, proc.pid, str(int(ticks) + 1), "make")
    garbage = folder / "999.pgid"
    garbage.write_text("not a pid")
    assert run.reap(folder) == []
    assert proc.poll() is None and alive(proc.pid)
    assert not entry.exists() and not garbage.exists()
    assert run.reap(tmp_path / "no-such-folder") == []


def test_proc_stat_and_start_ticks(group):
    me = run.proc_stat(os.getpid())
    assert me is not None and me[0] == "R" and me[1].isdigit()
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    assert run.start_ticks(os.getpid()) == fields[19] == me[1]
    sleeper = group(["sleep", "30"])
    deadline = time.monotonic() + 5  # it may still be running its first steps
    while run.proc_stat(sleeper.pid)[0] != "S" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert run.proc_stat(sleeper.pid)[0] == "S"
    os.kill(sleeper.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while run.proc_stat(sleeper.pid)[0] != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert run.proc_stat(sleeper.pid)[0] == "Z"
    sleeper.wait()
    assert run.proc_stat(sleeper.pid) is None and run.start_ticks(sleeper.pid) is None


def test_proc_stat_of_a_process_whose_name_has_a_parenthesis(group):
    script = "open('/proc/self/comm', 'w').write('a) b c'); import time; time.sleep(30)"
    proc = group([sys.executable, "-c", script])
    deadline = time.monotonic() + 5
    while "a) b c" not in Path(f"/proc/{proc.pid}/stat").read_text() and \
            time.monotonic() < deadline:
        time.sleep(0.01)
    st = run.proc_stat(proc.pid)
    assert st is not None and st[0] == "S" and st[1].isdigit()
