"""run_pod and stop_pod through the real dodo.py, with stand-in crio, crictl
and ip (tests/standins/) first on PATH and CRI-O's socket under tmp_path.

The stand-ins behave like the real programs where it matters (argument
parsing, exit codes, IDs, the socket) and record every call, so the tests
check what would have been run against CRI-O.  Nothing runs on the host's
network namespaces: the stand-in ip only records.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.errors import StackError
from tasks.host.crictl import Shell
from tasks.spec import load_stack
from tasks.workspace import Workspace

STANDINS = Path(__file__).parent / "standins"

ALPHA = """\
alpha:
  git: {alpha}
  ref: v1
  build: make
  artifacts: [bin/alpha]
  install: make install
  installs: [$PREFIX/bin/alpha]
"""


def alive(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rfind(")") + 2] not in "ZX"


class Rig:
    """The stand-ins, their records, and a stack with a pod section."""

    def __init__(self, project, tmp_path: Path):
        self.project = project
        self.dir = tmp_path / "standin"
        self.dir.mkdir()
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        for name in ("crictl", "crio", "ip"):
            exe = self.bin / name
            exe.write_text(f"#!{sys.executable}\n" + (STANDINS / f"{name}.py").read_text())
            exe.chmod(0o755)
        self.socket = tmp_path / "run" / "crio.sock"
        self.env = {"PATH": f"{self.bin}:{os.environ['PATH']}", "STANDIN_DIR": str(self.dir)}
        self.workdir = project.workdir
        self.procs: list[subprocess.Popen] = []

    def stack(self, pod: str = "", with_pod: bool = True) -> None:
        self.project.write_stack(ALPHA.format(alpha=self.project.up.alpha()))
        if with_pod:
            text = f"pod:\n  socket: {self.socket}\n"
            if "start_timeout" not in pod:
                text += "  start_timeout: 10\n"
            text += "".join(f"  {line}\n" for line in pod.splitlines() if line.strip())
            with open(self.project.stack_file, "a") as f:
                f.write(text)

    def doit(self, *args: str, expect: int | None = 0, **env: str):
        return self.project.doit(*args, expect=expect, env={**self.env, **env})

    def calls(self) -> list[dict]:
        try:
            lines = (self.dir / "calls.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines]

    def cri(self) -> dict:
        return json.loads((self.dir / "crictl-state.json").read_text())

    def crio_pids(self) -> list[int]:
        try:
            return [int(x) for x in (self.dir / "crio.pids").read_text().split()]
        except FileNotFoundError:
            return []

    def state(self, name: str) -> dict | None:
        path = self.workdir / "state" / name
        return json.loads(path.read_text()) if path.exists() else None

    def start_crio(self) -> subprocess.Popen:
        """A crio that is already running before run_pod (not ours)."""
        out = open(self.dir / "own-crio.log", "ab")
        proc = subprocess.Popen([str(self.bin / "crio"), "--listen", str(self.socket)],
                                env={**os.environ, **self.env}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        self.procs.append(proc)
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            assert time.monotonic() < deadline, "stand-in crio did not listen"
            time.sleep(0.05)
        return proc

    def cleanup(self) -> None:
        for pid in self.crio_pids():
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc in self.procs:
            proc.kill()
            proc.wait()


@pytest.fixture
def rig(project, tmp_path):
    r = Rig(project, tmp_path)
    yield r
    r.cleanup()


def since(calls: list[dict], n: int) -> list[dict]:
    return calls[n:]


def names(calls: list[dict]) -> list[str]:
    return [c["cmd"] for c in calls if c["cmd"] != "version"]


def diag_path(text: str) -> Path:
    m = re.search(r"--- diagnostics: (\S+)", text)
    assert m, text
    return Path(m.group(1))


# --------------------------------------------------------------------------


def test_run_pod_runs_the_whole_sequence_in_order(rig):
    rig.stack()
    res = rig.doit("run_pod")
    assert res.ran.index("install:alpha") < res.ran.index("run_pod")
    calls = rig.calls()
    assert names(calls) == ["crio", "pods", "pods", "images", "pull", "runp", "create", "start",
                            "exec", "inspectp", "ip"]
    assert calls[0]["argv"] == ["--listen", str(rig.socket), "--log-level", "debug"]
    for c in calls[1:-1]:
        assert c["global"]["--runtime-endpoint"] == [f"unix://{rig.socket}"]
    by = {c["cmd"]: c for c in calls}
    assert by["pull"]["args"] == ["docker.io/library/busybox:latest"]
    pod_file = str(rig.workdir / "pod" / "pod-config.json")
    ctr_file = str(rig.workdir / "pod" / "container-busybox.json")
    assert by["runp"]["flags"] == {"--runtime": ["kata"]}
    assert by["runp"]["args"] == [pod_file]  # the flag came before the file
    pod_id = rig.state("pod.json")["pod_id"]
    ctr_id = rig.state("pod.json")["container_id"]
    assert rig.cri()["pods"][pod_id]["handler"] == "kata"
    assert by["create"]["args"] == [pod_id, ctr_file, pod_file]
    assert by["start"]["args"] == [ctr_id]
    assert "-s" in by["exec"]["flags"] and by["exec"]["args"] == [ctr_id, "ip", "addr", "show"]
    assert by["inspectp"]["args"] == [pod_id]
    netns = rig.cri()["pods"][pod_id]["netns"]
    assert by["ip"]["argv"] == ["netns", "exec", netns, "sysctl", "-w",
                                "net.ipv4.ping_group_range=0 2147483647"]
    assert rig.state("pod.json")["netns"] == f"/var/run/netns/{netns}"
    assert pod_id in res.text and ctr_id in res.text
    assert "inet 10.88.0.7/16" in res.text
    crio = rig.state("crio.json")
    assert crio["pid"] in rig.crio_pids() and alive(crio["pid"])
    assert "Serving on" in (rig.workdir / "logs" / "crio.log").read_text()


def test_the_json_sent_has_crictl_field_names_and_the_spec_image_and_command(rig):
    rig.stack('image: docker.io/library/busybox:1.36\ncommand: [sh, -c, "sleep 1234"]\n'
              'ping: false')
    rig.doit("run_pod")
    calls = rig.calls()
    by = {c["cmd"]: c for c in calls}
    assert "inspectp" not in by and "ip" not in by  # ping: false
    (pod_cfg,) = by["runp"]["files"].values()
    assert set(pod_cfg) <= {"metadata", "log_directory", "linux", "labels"}
    assert pod_cfg["log_directory"] == str(rig.workdir / "logs" / "pod")
    assert Path(pod_cfg["log_directory"]).is_dir()
    assert pod_cfg["metadata"]["name"] and pod_cfg["metadata"]["uid"]
    files = by["create"]["files"]
    ctr_cfg = files[by["create"]["args"][1]]
    assert files[by["create"]["args"][2]] == pod_cfg
    assert ctr_cfg["image"] == {"image": "docker.io/library/busybox:1.36"}
    assert ctr_cfg["command"] == ["sh", "-c", "sleep 1234"]
    assert ctr_cfg["log_path"] == "kata-busybox.log"
    assert by["pull"]["args"] == ["docker.io/library/busybox:1.36"]

    def keys(node, path=""):
        if isinstance(node, dict):
            for k, v in node.items():
                yield f"{path}.{k}", k
                if k not in ("labels", "annotations"):
                    yield from keys(v, f"{path}.{k}")
    for where, key in [*keys(pod_cfg), *keys(ctr_cfg)]:
        assert re.fullmatch(r"[a-z_]+", key), f"{where} is not a snake_case CRI field"


def test_a_camel_case_template_is_refused_before_anything_starts(rig, tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "pod-config.json").write_text(json.dumps({
        "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
        "logDirectory": "/tmp"}))
    rig.stack()
    res = rig.doit("run_pod", expect=1)
    assert "'logDirectory' is not a pod config field" in res.text
    assert "did you mean 'log_directory'?" in res.text
    assert rig.calls() == []  # no crio, no crictl


def test_a_crio_that_never_answers_fails_with_its_log_within_the_timeout(rig):
    rig.stack("start_timeout: 2")
    started = time.monotonic()
    res = rig.doit("run_pod", expect=1, STANDIN_CRIO_MODE="never")
    assert time.monotonic() - started < 30
    assert f"CRI-O did not answer on {rig.socket} within 2 s" in res.text
    assert "waiting for storage that never comes" in res.text  # the log's tail
    assert "pod.start_timeout" in res.text
    (pid,) = rig.crio_pids()
    assert not alive(pid)  # the crio we started is stopped again
    assert rig.state("crio.json") is None
    assert "runp" not in names(rig.calls())
    folder = diag_path(res.text)
    assert folder.parent == rig.workdir / "logs" and folder.name.startswith("diag-")
    assert "never comes" in (folder / "crio.log").read_text()


def test_a_crio_that_exits_at_start_is_reported_at_once(rig):
    rig.stack()
    started = time.monotonic()
    res = rig.doit("run_pod", expect=1, STANDIN_CRIO_MODE="fail")
    assert time.monotonic() - started < 10
    assert "crio exited (code 1)" in res.text
    assert "conmon cgroup should be 'pod' or empty" in res.text
    assert "conmon_cgroup" in res.text  # the hint
    assert rig.state("crio.json") is None


def test_a_failing_create_writes_diagnostics_and_leaves_the_pod_for_stop_pod(rig):
    rig.stack()
    with open(rig.project.stack_file, "a") as f:
        f.write("debug:\n  qemu_log: true\n")
    (rig.workdir / "logs").mkdir(parents=True)  # as the QEMU wrapper would have left it
    (rig.workdir / "logs" / "qemu-serial.log").write_text("[    0.000000] Linux version 6.1\n")
    res = rig.doit("run_pod", expect=1, STANDIN_FAIL="create")
    assert "create: stand-in failure on purpose" in res.text
    folder = diag_path(res.text)
    assert folder.is_dir() and str(folder).startswith(str(rig.workdir / "logs"))
    commands = (folder / "commands.txt").read_text()
    assert "runp --runtime=kata" in commands and "# exit 1" in commands
    assert "create: stand-in failure on purpose" in commands
    pod_id = rig.state("pod.json")["pod_id"]
    assert json.loads((folder / "inspectp.json").read_text())["status"]["id"] == pod_id
    assert pod_id[:13] in (folder / "pods.txt").read_text()
    assert "Serving on" in (folder / "crio.log").read_text()
    assert (folder / "pod-config.json").exists() and (folder / "container-busybox.json").exists()
    assert "Linux version" in (folder / "qemu-serial.log").read_text()
    assert "qemu-stderr.log: No such file" in (folder / "README.txt").read_text()
    assert "left for inspection" in res.text and "doit stop_pod" in res.text
    assert list(rig.cri()["pods"]) == [pod_id]

    rig.doit("stop_pod")
    assert rig.cri()["pods"] == {}
    assert rig.state("pod.json") is None


def test_an_unknown_runtime_handler_is_explained(rig):
    rig.stack("runtime: kata-typo")
    res = rig.doit("run_pod", expect=1)
    assert "failed to find runtime handler kata-typo" in res.text
    assert "[crio.runtime.runtimes.kata-typo]" in res.text
    assert "create" not in names(rig.calls())
    diag_path(res.text)


def test_a_rerun_replaces_the_pod_and_never_runs_two(rig):
    rig.stack()
    rig.doit("run_pod")
    first = rig.state("pod.json")["pod_id"]
    n = len(rig.calls())

    res = rig.doit("run_pod")
    calls = since(rig.calls(), n)
    seq = names(calls)
    assert "crio" not in seq and "pull" not in seq  # CRI-O answers; the image is there
    assert seq.index("stopp") < seq.index("rmp") < seq.index("runp")
    assert [c["args"] for c in calls if c["cmd"] in ("stopp", "rmp")] == [[first], [first]]
    second = rig.state("pod.json")["pod_id"]
    assert second != first and list(rig.cri()["pods"]) == [second]
    assert "removing the pod left by an earlier run_pod" in res.text
    assert len(rig.crio_pids()) == 1

    # The state file lost: our label still finds the pod.
    (rig.workdir / "state" / "pod.json").unlink()
    n = len(rig.calls())
    rig.doit("run_pod")
    calls = since(rig.calls(), n)
    assert [c["args"] for c in calls if c["cmd"] == "rmp"] == [[second]]
    assert len(rig.cri()["pods"]) == 1


def test_stop_pod_after_run_pod_removes_the_pod_and_stops_our_crio(rig):
    rig.stack()
    rig.doit("run_pod")
    pod_id = rig.state("pod.json")["pod_id"]
    (pid,) = rig.crio_pids()
    n = len(rig.calls())
    res = rig.doit("stop_pod")
    assert res.ran == ["stop_pod"]
    calls = since(rig.calls(), n)
    assert [(c["cmd"], c["args"]) for c in calls if c["cmd"] in ("stopp", "rmp")] == [
        ("stopp", [pod_id]), ("rmp", [pod_id])]
    assert rig.cri()["pods"] == {}
    assert not alive(pid) and not rig.socket.exists()
    assert rig.state("crio.json") is None and rig.state("pod.json") is None
    assert f"stopped the crio run_pod started (pid {pid})" in res.text
    assert "Received signal terminated" in (rig.workdir / "logs" / "crio.log").read_text()

    n = len(rig.calls())
    again = rig.doit("stop_pod")
    assert "nothing to stop" in again.text
    assert rig.calls()[n:] == []


def test_stop_pod_with_nothing_running_says_so(rig):
    rig.stack()
    res = rig.doit("stop_pod")
    assert res.ran == ["stop_pod"]  # no installs for stopping
    assert "nothing to stop" in res.text
    assert rig.calls() == []


def test_a_running_crio_is_used_and_left_running(rig):
    rig.stack()
    proc = rig.start_crio()
    res = rig.doit("run_pod")
    assert f"CRI-O answers on {rig.socket}: using it" in res.text
    assert names(rig.calls()).count("crio") == 1  # the test's own
    assert rig.state("crio.json") is None
    res = rig.doit("stop_pod")
    assert rig.cri()["pods"] == {}
    assert "was not started by run_pod: left running" in res.text
    assert proc.poll() is None and rig.socket.exists()


def test_a_stale_socket_from_a_killed_crio_is_not_taken_for_a_running_one(rig):
    rig.stack()
    proc = rig.start_crio()
    proc.kill()
    proc.wait()
    assert rig.socket.exists()  # left behind, refuses connections
    res = rig.doit("run_pod")
    assert "does not answer" in res.text
    assert names(rig.calls()).count("crio") == 2
    assert alive(rig.state("crio.json")["pid"])


def test_run_pod_without_a_pod_section_says_what_to_add(rig):
    rig.stack(with_pod=False)
    res = rig.doit("run_pod", expect=1)
    assert "no 'pod' section" in res.text
    assert rig.calls() == []


@pytest.mark.skipif(shutil.which("crictl") is not None, reason="a real crictl is on PATH")
def test_a_missing_crictl_fails_at_once(rig):
    rig.stack()
    (rig.bin / "crictl").unlink()
    started = time.monotonic()
    res = rig.doit("run_pod", expect=1)
    assert time.monotonic() - started < 8  # not start_timeout (10 s) of polling
    assert "crictl: command not found" in res.text and "doit install" in res.text
    assert rig.calls() == []  # no crio started
    diag_path(res.text)


def test_not_root_with_sudo_never_is_refused_with_a_clear_message(project, monkeypatch):
    project.write_stack(ALPHA.format(alpha=project.up.alpha()), settings="sudo: never\n")
    ws = Workspace(load_stack(project.stack_file))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(StackError, match="run_pod needs root") as err:
        Shell(ws, "run_pod")
    assert "settings.sudo: auto" in str(err.value)
