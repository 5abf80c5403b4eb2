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
import textwrap
import time
from pathlib import Path

import pytest
from conftest import ALPHA

from tasks.errors import StackError
from tasks.host.pod.crictl import Shell
from tasks.spec import load_stack
from tasks.workspace import Workspace

STANDINS = Path(__file__).parent / "standins"
KATA_CONFIG = "/etc/kata-containers/configuration.toml"
KATA_TOML = """\
[hypervisor.qemu]
path = "/usr/bin/qemu-system-x86_64"
kernel = "/boot/vmlinuz-test"
initrd = "/var/lib/kata/kata.img"
shared_fs = "virtio-fs"
virtio_fs_daemon = "/usr/libexec/virtiofsd"
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
        self.root = tmp_path / "root"  # the host, as the Kata pre-flight sees it
        for path in ("/dev/kvm", "/dev/vhost-vsock", "/dev/log"):
            self.host(path)
        for path in ("/usr/bin/qemu-system-x86_64", "/usr/libexec/virtiofsd"):
            self.host(path, mode=0o755)
        for path in ("/boot/vmlinuz-test", "/var/lib/kata/kata.img"):
            self.host(path)
        self.host(KATA_CONFIG, KATA_TOML)
        self.env = {"PATH": f"{self.bin}:{os.environ['PATH']}", "STANDIN_DIR": str(self.dir),
                    "KPS_CHECK_ROOT": str(self.root)}
        self.workdir = project.workdir
        self.procs: list[subprocess.Popen] = []

    def host(self, path: str, text: str = "", mode: int = 0o644) -> Path:
        """A file of the host the pre-flight looks at (under KPS_CHECK_ROOT)."""
        file = Path(str(self.root) + path)
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text)
        file.chmod(mode)
        return file

    def stack(self, pod: str = "", with_pod: bool = True, sections: str = "") -> None:
        """ALPHA, then ``sections`` (configs...), then the pod section."""
        self.project.write_stack(ALPHA.format(alpha=self.project.up.alpha()))
        with open(self.project.stack_file, "a") as f:
            f.write(textwrap.dedent(sections))
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
    assert names(calls) == ["crio", "pods", "pods", "images", "pull", "inspecti", "pull", "runp",
                            "create", "start", "exec", "inspectp", "ip"]
    assert calls[0]["argv"] == ["--listen", str(rig.socket), "--log-level", "debug"]
    for c in calls[1:-1]:
        assert c["global"]["--runtime-endpoint"] == [f"unix://{rig.socket}"]
    by = {c["cmd"]: c for c in calls}
    pulls = [c["args"] for c in calls if c["cmd"] == "pull"]
    assert pulls == [["docker.io/library/busybox:latest"], ["k8s.gcr.io/pause:3.6"]]
    assert by["inspecti"]["args"] == ["k8s.gcr.io/pause:3.6"]  # CRI-O 1.23's default
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
    assert by["pull"]["args"] == ["k8s.gcr.io/pause:3.6"]
    assert [c["args"] for c in calls if c["cmd"] == "pull"][0] == ["docker.io/library/busybox:1.36"]

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


def test_stop_pod_waits_until_our_crio_has_ended(rig):
    # An exiting process loses its command line before it ends; here the
    # stand-in execs ``sleep 0.5`` on SIGTERM: same pid, no "crio" in argv.
    rig.stack()
    rig.doit("run_pod", STANDIN_CRIO_LINGER="0.5")
    (pid,) = rig.crio_pids()
    res = rig.doit("stop_pod")
    assert not alive(pid), "stop_pod returned while crio was still ending"
    assert f"stopped the crio run_pod started (pid {pid})" in res.text


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


# --------------------------------------------------------------------------
# What CRI-O's refusals mean: one hint per failure seen on a real host, the
# stand-in crictl replaying CRI-O's exact message.

PAUSE_UNREACHABLE = (
    'error creating pod sandbox with name "k8s_kata-sandbox_default_hdishd83djaidwnduwk28bcsb_1":'
    ' initializing source docker://k8s.gcr.io/pause:3.6: pinging container registry k8s.gcr.io:'
    ' Get "https://k8s.gcr.io/v2/": dial tcp: lookup k8s.gcr.io on 10.0.2.3:53: no such host')
OOM_REFUSED = (
    "container create failed: nsexec[24986]: failed to update /proc/self/oom_score_adj: "
    'Permission denied\ntime="2024-05-02T10:11:12Z" level=error msg="runc create failed: '
    "unable to start container process: can't get final child's PID from pipe: EOF\"")
NO_SYSLOG = "CreateContainer failed: Unix syslog delivery error: unknown"
NO_VSOCK = ("CreateContainer failed: /etc/kata-containers/configuration.toml: host system "
            "doesn't support vsock: stat /dev/vhost-vsock: no such file or directory: unknown")

# A phrase only each hint has: a hint must carry its own and no other's.
HINT_MARKS = {
    "pause": "for the pause image k8s.gcr.io/pause:3.6 (offline?)",
    "oom": "CAP_SYS_RESOURCE",
    "syslog": "start a syslog daemon",
    "vsock": "modprobe vhost_vsock",
    "handler": "does not know the runtime handler",
    "cni": "CRI-O's network is not ready",
    "generic": "CRI-O refused the",
}


@pytest.mark.parametrize("kind, pod, env, then", [
    ("pause", "", {"STANDIN_FAIL": "runp", "STANDIN_FAIL_MSG": PAUSE_UNREACHABLE},
     ["cannot reach k8s.gcr.io", "containers-storage:k8s.gcr.io/pause:3.6",
      "point pause_image at an image CRI-O has"]),
    ("oom", "runtime: runc", {"STANDIN_FAIL": "runp", "STANDIN_FAIL_MSG": OOM_REFUSED},
     ["oom_score_adj to -998", "--cap-add=SYS_RESOURCE", "OOMScoreAdjust=-999"]),
    ("syslog", "", {"STANDIN_FAIL": "create", "STANDIN_FAIL_MSG": NO_SYSLOG},
     ["nothing listens at /dev/log", "socat -u UNIX-RECV:/dev/log"]),
    ("vsock", "", {"STANDIN_FAIL": "start", "STANDIN_FAIL_MSG": NO_VSOCK},
     ["the host has no /dev/vhost-vsock", "Some VMs cannot have it"]),
    ("handler", "runtime: kata-typo", {},
     ["'kata-typo' (it knows: runc, kata)", "[crio.runtime.runtimes.kata-typo]"]),
    ("cni", "runtime: runc", {"STANDIN_CNI": "none"},
     ["No CNI configuration file in /etc/cni/net.d/", "network_dir, /etc/cni/net.d"]),
    ("generic", "", {"STANDIN_FAIL": "start"}, ["CRI-O refused the start"]),
])
def test_each_crio_refusal_gets_its_own_hint(rig, kind, pod, env, then):
    rig.stack(pod)
    res = rig.doit("run_pod", expect=1, **env)
    hint = res.text[res.text.index("Hint: "):]
    assert HINT_MARKS[kind] in hint
    assert [k for k, mark in HINT_MARKS.items() if mark in hint] == [kind]
    for text in then:
        assert text in hint
    step = env.get("STANDIN_FAIL", "runp")
    seq = names(rig.calls())
    assert step in seq and {"runp": "create", "create": "start", "start": "exec"}[step] \
        not in seq
    folder = diag_path(res.text)
    assert HINT_MARKS[kind] in (folder / "README.txt").read_text()


def test_the_cni_probe_is_marked_as_a_probe(rig):
    rig.stack("runtime: runc")
    res = rig.doit("run_pod", expect=1, STANDIN_CNI="none")
    assert "code = DeadlineExceeded" in res.text
    commands = (diag_path(res.text) / "commands.txt").read_text()
    (line,) = [x for x in commands.splitlines() if x.startswith("$ ") and " info" in x]
    assert line.endswith("# probe: is CRI-O's network ready?")


# --------------------------------------------------------------------------
# The pause image


def test_a_pause_image_missing_offline_stops_before_runp_and_says_how_to_provide_it(rig):
    rig.stack()
    (rig.dir / "crictl-state.json").write_text(json.dumps(  # busybox is there, pause is not
        {"images": {"docker.io/library/busybox:latest": "b" * 64}, "pods": {},
         "containers": {}}))
    res = rig.doit("run_pod", expect=1, STANDIN_OFFLINE="1")
    assert "CRI-O's pause image k8s.gcr.io/pause:3.6 is not in its storage, and pulling it " \
           "failed" in res.text
    assert "lookup k8s.gcr.io on 10.0.2.3:53: no such host" in res.text
    hint = res.text[res.text.index("Hint: "):]
    assert "skopeo copy docker://k8s.gcr.io/pause:3.6 oci-archive:img.tar" in hint
    assert "containers-storage:k8s.gcr.io/pause:3.6" in hint and "podman load" in hint
    assert "point pause_image at an image CRI-O has" in hint
    calls = rig.calls()
    i = names(calls).index("inspecti")
    assert names(calls)[i:i + 2] == ["inspecti", "pull"] and "runp" not in names(calls)
    assert [c["args"] for c in calls if c["cmd"] == "pull"] == [["k8s.gcr.io/pause:3.6"]]


def test_a_present_pause_image_is_not_pulled_and_its_name_comes_from_the_crio_config(rig):
    rig.stack(sections="""\
        configs:
          crio:
            path: /etc/crio/crio.conf.d/50-test.conf
            format: toml
            set: {crio: {image: {pause_image: "registry.example/pause:9"}}}
        """)
    (rig.dir / "crictl-state.json").write_text(json.dumps(
        {"images": {"registry.example/pause:9": "c" * 64}, "pods": {}, "containers": {}}))
    rig.doit("run_pod", STANDIN_PAUSE_IMAGE="registry.example/pause:9")
    calls = rig.calls()
    assert [c["args"] for c in calls if c["cmd"] == "inspecti"] == [["registry.example/pause:9"]]
    assert [c["args"] for c in calls if c["cmd"] == "pull"] == [
        ["docker.io/library/busybox:latest"]]


# --------------------------------------------------------------------------
# The Kata pre-flight


def test_the_kata_preflight_says_what_is_missing_before_crio_is_asked(rig):
    rig.stack()
    (rig.root / "dev" / "vhost-vsock").unlink()
    res = rig.doit("run_pod", expect=1)
    assert "Kata pre-flight: 1 problem(s), so CRI-O was not asked for a 'kata' pod" in res.text
    assert f"- {rig.root}/dev/vhost-vsock is missing" in res.text
    assert "modprobe vhost_vsock" in res.text and "Some VMs cannot have it" in res.text
    assert rig.calls() == []  # no crio started, no crictl
    diag_path(res.text)

    rig.host("/dev/vhost-vsock")
    (rig.root / "dev" / "log").unlink()
    res = rig.doit("run_pod", expect=1)
    assert f"no syslog socket at {rig.root}/dev/log" in res.text
    assert "start a syslog daemon" in res.text

    rig.host("/dev/log")
    rig.doit("run_pod")  # all there
    (rig.root / "dev" / "kvm").unlink()
    rig.stack("runtime: runc")
    rig.doit("run_pod")  # with runc, none of it is looked at


def test_the_preflight_reads_the_kata_config_the_stack_writes(rig):
    rig.stack(sections=f"""\
        configs:
          kata:
            path: {KATA_CONFIG}
            format: toml
            set:
              hypervisor:
                qemu:
                  path: /usr/bin/qemu-system-x86_64
                  kernel: /boot/vmlinuz-missing
                  initrd: /var/lib/kata/kata.img
                  shared_fs: virtio-fs
                  virtio_fs_daemon: /usr/lib/qemu/virtiofsd
        """)
    res = rig.doit("run_pod", expect=1)
    staged = rig.project.staged(KATA_CONFIG)
    assert staged.is_file() and "config:kata" in res.ran
    assert "Kata pre-flight: 2 problem(s)" in res.text
    assert (f"hypervisor.qemu.kernel = /boot/vmlinuz-missing in {KATA_CONFIG} ({staged}) is "
            "not there") in res.text
    assert f"hypervisor.qemu.virtio_fs_daemon = /usr/lib/qemu/virtiofsd in {KATA_CONFIG}" \
        in res.text
    assert "qemu-system-common ships /usr/lib/qemu/virtiofsd" in res.text
    assert "hypervisor.qemu.path" not in res.text and "hypervisor.qemu.initrd" not in res.text
    assert rig.calls() == []

    rig.host("/boot/vmlinuz-missing")
    rig.host("/usr/lib/qemu/virtiofsd", mode=0o755)
    rig.doit("run_pod")


# --------------------------------------------------------------------------
# What run_pod depends on follows the runtime

CRIO_REPO_FILES = {"crio": "#!/bin/sh\necho crio\n", "crictl": "#!/bin/sh\necho crictl\n",
                   "bridge": "#!/bin/sh\necho bridge\n"}


def _graph_stack(rig, runtime: str) -> None:
    from conftest import (
        KATA_COMPONENTS,
        KATA_IMAGE,
        commit_all,
        git_init,
        kata_upstreams,
        kernel_modules,
        write,
    )
    repos = kata_upstreams(rig.project.up)
    tools = rig.project.up.root / "tools"
    if not tools.exists():
        git_init(tools)
        for name, text in CRIO_REPO_FILES.items():
            write(tools / name, text, mode=0o755)
        commit_all(tools, "crio, crictl, a CNI plugin", tag="v1")
    modules = kernel_modules(rig.project.root / "modroot", "5.10.0-test")
    rig.project.write_stack(KATA_COMPONENTS.format(**repos) + f"""\
crio:
  git: {tools}
  ref: v1
  parts:
    crio:
      install: install -D -m 0755 crio "$DESTDIR$PREFIX/bin/crio"
      installs: [$PREFIX/bin/crio]
    crictl:
      install: install -D -m 0755 crictl "$DESTDIR$PREFIX/bin/crictl"
      installs: [$PREFIX/bin/crictl]
    cni:
      install: install -D -m 0755 bridge "$DESTDIR/opt/cni/bin/bridge"
      installs: [/opt/cni/bin/bridge]
""")
    with open(rig.project.stack_file, "a") as f:
        f.write(KATA_IMAGE.format(modules=modules) + textwrap.dedent(f"""\
            configs:
              crio:
                path: /etc/crio/crio.conf.d/50-test.conf
                format: toml
                needs: [crio/crio]
                set:
                  crio:
                    runtime:
                      runtimes:
                        kata:
                          runtime_path: /usr/local/bin/containerd-shim-kata-v2
                          runtime_type: vm
              cni:
                path: /etc/cni/net.d/50-test.conf
                format: json
                set: {{cniVersion: "0.4.0", name: test, type: bridge}}
              kata:
                path: {KATA_CONFIG}
                format: toml
                base: /usr/share/defaults/kata-containers/configuration-qemu.toml
                needs: [kata/runtime, qemu, image]
                set: {{hypervisor: {{qemu: {{kernel: "${{image.kernel}}",
                                            initrd: "${{image.initrd}}"}}}}}}
              policy:
                path: /etc/containers/policy.json
                format: json
                set: {{default: [{{type: insecureAcceptAnything}}]}}
            pod:
              runtime: {runtime}
              socket: {rig.socket}
              start_timeout: 10
            """))


def test_with_runc_run_pod_builds_only_the_crio_side(rig):
    _graph_stack(rig, "runc")
    res = rig.doit("run_pod")
    built = {t for t in res.ran if t.split(":")[0] in ("install", "config", "image")}
    assert built == {"install:crio/crio", "install:crio/crictl", "install:crio/cni",
                     "install:kata/runtime",  # the shim the drop-in names: CRI-O needs it
                     "config:crio", "config:cni", "config:policy"}
    assert "image" not in res.ran and "build:kata/agent" not in res.ran
    assert "install:qemu" not in res.ran and "fetch:mbuto" not in res.ran
    assert rig.state("pod.json")["runtime"] == "runc"
    assert not rig.project.staged(KATA_CONFIG).exists()


def test_run_deps_of_the_real_stack_follow_the_runtime():
    import dataclasses

    from conftest import ROOT

    from tasks.steps.pod import run_deps

    stack = load_stack(ROOT / "stack.yaml")
    kata = set(run_deps(Workspace(stack)))
    assert {"image", "config:kata", "install:kata-containers/agent", "install:qemu",
            "install:passt", "install:mbuto"} <= kata
    runc = dataclasses.replace(stack, pod=dataclasses.replace(stack.pod, runtime="runc"))
    assert set(run_deps(Workspace(runc))) == {
        "install:cri-o", "install:cni-plugins", "install:cri-tools",
        "install:kata-containers/runtime",  # the shim the crio drop-in names
        "config:crio", "config:cni", "config:crictl", "config:policy"}


# --------------------------------------------------------------------------
# Restarting the crio run_pod started


def test_our_crio_is_restarted_when_its_args_or_binary_change_and_no_other_is(rig):
    rig.stack()
    rig.doit("run_pod")
    (first,) = rig.crio_pids()
    res = rig.doit("run_pod")  # nothing changed: the same crio
    assert rig.crio_pids() == [first] and alive(first)
    assert f"using the crio run_pod started (pid {first})" in res.text

    rig.stack("crio_args: [--log-level, info]")
    res = rig.doit("run_pod")
    assert f"the crio run_pod started (pid {first}) runs with other crio_args now: " \
           "restarting it" in res.text
    first_, second = rig.crio_pids()
    assert not alive(first) and alive(second)
    assert [c["argv"] for c in rig.calls() if c["cmd"] == "crio"][-1] == [
        "--listen", str(rig.socket), "--log-level", "info"]
    assert rig.state("crio.json")["pid"] == second

    with open(rig.bin / "crio", "a") as f:  # a rebuilt crio
        f.write("# rebuilt\n")
    res = rig.doit("run_pod")
    assert "a crio binary that has changed now: restarting it" in res.text
    assert not alive(second) and alive(rig.state("crio.json")["pid"])
    assert len(rig.cri()["pods"]) == 1  # the old pod removed through the new crio

    rig.doit("stop_pod")
    proc = rig.start_crio()  # not ours: never restarted
    rig.stack("crio_args: [--log-level, warn]")
    res = rig.doit("run_pod")
    assert "restarting" not in res.text and proc.poll() is None
    assert rig.state("crio.json") is None


def test_our_crio_is_restarted_when_the_crio_config_changes(rig):
    conf = """\
        configs:
          crio:
            path: /etc/crio/crio.conf.d/50-test.conf
            format: toml
            set: {{crio: {{image: {{pause_image: "{image}"}}}}}}
        """
    rig.stack(sections=conf.format(image="k8s.gcr.io/pause:3.6"))
    rig.doit("run_pod")
    (first,) = rig.crio_pids()
    rig.stack(sections=conf.format(image="registry.example/pause:9"))
    res = rig.doit("run_pod")
    assert "config:crio" in res.ran
    assert "a CRI-O file that has changed now: restarting it" in res.text
    assert not alive(first)
    assert [c["args"] for c in rig.calls() if c["cmd"] == "inspecti"][-1] == [
        "registry.example/pause:9"]


# --------------------------------------------------------------------------
# Diagnostics and logs


def test_diagnostics_hold_this_pods_logs_only_and_count_commands_not_notes(rig):
    rig.stack()
    rig.doit("run_pod")  # an earlier pod: its container logged
    first_ctr = rig.state("pod.json")["container_id"]
    logs = rig.workdir / "logs" / "pod"
    (logs / "old-pod.log").write_text("from an earlier template\n")
    assert f"started {first_ctr[:13]}" in (logs / "kata-busybox.log").read_text()

    n = len(rig.calls())
    res = rig.doit("run_pod", expect=1, STANDIN_FAIL="exec")
    folder = diag_path(res.text)
    second_ctr = rig.state("pod.json")["container_id"]
    assert not (folder / "container-old-pod.log").exists()
    log = (folder / "container-kata-busybox.log").read_text()
    assert f"started {second_ctr[:13]}" in log and first_ctr[:13] not in log
    readme = (folder / "README.txt").read_text()
    assert "old-pod.log: unchanged since before this pod" in readme
    commands = (folder / "commands.txt").read_text()
    run_part, diag_part = commands.split("# --- run_pod failed;")
    ran = [line for line in run_part.splitlines() if line.startswith("$ ")]
    notes = [line for line in run_part.splitlines() if line.startswith("# ")]
    probes = [line for line in ran if "# probe: " in line]
    assert len(probes) == 1 and probes[0].endswith(" version    # probe: does CRI-O answer?")
    assert f"the {len(ran)} commands run_pod ran (1 of them probes that only look" in readme
    asked = [line for line in diag_part.splitlines() if line.startswith("$ ")]
    assert len(ran) + len(asked) == len(since(rig.calls(), n))  # one line per command run
    assert notes  # there are notes, and they are not counted
    versions = [line for line in commands.splitlines() if line.startswith("$ ")
                and line.split("    #")[0].endswith(" version")]
    assert len(versions) == 2 and all("# probe: does CRI-O answer?" in v for v in versions)


def test_stop_pod_with_nothing_to_do_still_leaves_its_log(rig):
    rig.stack()
    rig.doit("run_pod")
    rig.doit("stop_pod")
    log = rig.workdir / "logs" / "stop_pod.log"
    assert "stopped the crio run_pod started" in log.read_text()
    res = rig.doit("stop_pod")
    assert "nothing to stop" in res.text
    assert "nothing to stop: no pod of ours" in log.read_text()
    assert "stopped the crio run_pod started" in log.with_name("stop_pod.log.1").read_text()
