"""run_pod and stop_pod: the example pod of the manual procedure, with crictl.

``run_pod`` renders the pod and container templates into ``<workdir>/pod/``
(the image and command come from stack.yaml), makes sure CRI-O answers
(crio.py), removes any pod an earlier run left (passt's socket paths are
fixed, so two of our pods cannot run at once), pulls the image unless CRI-O
has it, then ``runp``, ``create``, ``start``, shows ``ip addr show`` from the
container and, with ``ping: true``, sets ``net.ipv4.ping_group_range`` in the
pod's network namespace.  The IDs are kept in ``<workdir>/state/pod.json``.
On any failure it writes a diagnostics folder under ``<workdir>/logs/`` and
names it.  ``stop_pod`` removes our pod and stops the crio run_pod started.
Both run whenever asked: there is nothing to be up to date with.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from . import crio, run
from .action import step
from .errors import CommandFailed, ConfigError, StackError
from .state import atomic_write
from .workspace import Workspace

LABEL = ("kata-passt-stack", "run_pod")  # on every pod we start: finds them without state
PING_RANGE = "0 2147483647"
ID_RE = re.compile(r"^[0-9a-f]{12,64}$")
NETNS_DIRS = ("/var/run/netns", "/run/netns")  # where `ip netns exec NAME` looks
TAIL_BYTES = 256 * 1024  # of each log copied into a diagnostics folder

# The field names crictl reads (snake_case protobuf JSON tags, stack-facts §3);
# it silently drops any other key.
POD_FIELDS = ("metadata", "hostname", "log_directory", "dns_config", "port_mappings",
              "labels", "annotations", "linux", "windows")
CONTAINER_FIELDS = ("metadata", "image", "command", "args", "working_dir", "envs", "mounts",
                    "devices", "labels", "annotations", "log_path", "stdin", "stdin_once",
                    "tty", "linux", "windows")


# --------------------------------------------------------------------------
# Running commands, with a transcript


@dataclass
class Output:
    code: int
    out: str
    err: str


class Shell:
    """Runs the pod's commands through run.py, as root or through sudo, and
    keeps a transcript (command, exit code, output) for the task's log and
    the diagnostics folder."""

    def __init__(self, ws: Workspace, task: str):
        self.log = ws.log(task)
        self.label = f"{task}: "
        self.transcript: list[str] = []
        self.sudo = False
        if os.geteuid() != 0:
            if ws.settings.sudo != "auto":
                raise StackError(
                    f"{task} needs root: CRI-O, its socket and the pod's network namespace "
                    "belong to root",
                    hint="run it as root, or set settings.sudo: auto to let it use sudo")
            if shutil.which("sudo") is None:
                raise StackError(f"{task} needs root, and sudo is not installed",
                                 hint="run it as root")
            self.sudo = True
            run.capture_result(["sudo", "-v"])  # ask for the password once, up front

    def argv(self, argv: list[str]) -> list[str]:
        return ["sudo", "--", *argv] if self.sudo else list(argv)

    def note(self, text: str) -> None:
        self._write(f"# {text}\n")

    def _write(self, text: str) -> None:
        self.transcript.append(text)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a", encoding="utf-8", errors="replace") as f:
            f.write(text)

    def query(self, argv: list[str], *, check: bool = True, quiet: bool = False,
              record: bool = True, hint: str | None = None) -> Output:
        full = self.argv(argv)
        shown = shlex.join(full)
        if not quiet:
            run.say(f"  {self.label}$ {shown}")
        started = time.monotonic()
        try:
            res = run.capture_result(full)
            out = Output(res.returncode, res.stdout.decode(errors="replace"),
                         res.stderr.decode(errors="replace"))
        except FileNotFoundError:
            self._write(f"$ {shown}\n# {full[0]}: command not found\n\n")
            raise StackError(f"{full[0]}: command not found (wanted for: {shown})",
                             hint=hint or f"install {full[0]} (doit install), and make sure "
                                          "the folder it is installed in is on PATH") from None
        if record:
            text = f"$ {shown}\n# exit {out.code} after {time.monotonic() - started:.1f} s\n"
            for name, value in (("stdout", out.out), ("stderr", out.err)):
                if value:
                    text += f"--- {name}\n{value.rstrip(chr(10))}\n"
            self._write(text + "\n")
        if check and out.code != 0:
            raise CommandFailed(shown, out.code, (out.err or out.out).strip(), str(self.log),
                                hint)
        return out

    def start(self, argv: list[str], log: Path):
        self.note(f"started in the background: {shlex.join(self.argv(argv))} >> {log}")
        try:
            return run.start(argv, log=log, sudo=self.sudo, label=self.label)
        except FileNotFoundError:
            raise StackError(f"{argv[0]}: command not found",
                             hint=f"install {argv[0]} (doit install), and make sure the "
                                  "folder it is installed in is on PATH") from None

    def kill(self, pid: int, sig) -> None:
        self.note(f"kill -{sig.name} {pid}")
        if self.sudo:
            self.query(["kill", f"-{sig.name[3:]}", str(pid)], check=False)
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class Crictl:
    def __init__(self, shell: Shell, socket: str, timeout: int):
        self.shell = shell
        self.base = crio.crictl(socket, timeout)

    def __call__(self, *args: str, check: bool = True, quiet: bool = False,
                 hint: str | None = None) -> Output:
        return self.shell.query(self.base + list(args), check=check, quiet=quiet, hint=hint)

    def id(self, what: str, *args: str, hint: str | None = None) -> str:
        """Run a command that prints an ID; the ID, checked."""
        res = self(*args, hint=hint)
        lines = [line.strip() for line in res.out.splitlines() if line.strip()]
        if not lines or not ID_RE.match(lines[-1]):
            raise StackError(f"crictl {args[0]} printed no {what} ID:\n"
                             + (res.out + res.err).strip()[-2000:],
                             hint=f"see {self.shell.log}")
        return lines[-1]

    def pods(self, *flags: str) -> list[str]:
        return [line.strip() for line in self("pods", "-q", *flags, quiet=True).out.splitlines()
                if line.strip()]


# --------------------------------------------------------------------------
# What we remember


class PodState:
    def __init__(self, ws: Workspace):
        self.file = ws.state / "pod.json"

    def read(self) -> dict:
        try:
            data = json.loads(self.file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def update(self, **values) -> dict:
        data = {**self.read(), **values}
        atomic_write(self.file, json.dumps(data, indent=1, sort_keys=True))
        return data

    def clear(self) -> None:
        try:
            self.file.unlink()
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------------
# The templates


def _load_template(path: Path, fields: tuple[str, ...], kind: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"cannot read the {kind} template {path}: {err}") from None
    except ValueError as err:
        raise ConfigError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the {kind} must be a JSON object")
    problems = []
    for key in data:
        if key in fields:
            continue
        snake = re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower()
        guess = snake if snake in fields else next(
            iter(difflib.get_close_matches(key, fields, n=1)), None)
        problems.append(f"{path}: '{key}' is not a {kind} field: crictl would drop it silently"
                        + (f" (did you mean '{guess}'?)" if guess else ""))
    meta = data.get("metadata")
    wanted = ("name", "namespace", "uid") if kind == "pod config" else ("name",)
    if not isinstance(meta, dict) or any(not meta.get(k) for k in wanted):
        problems.append(f"{path}: metadata needs {', '.join(wanted)}")
    if problems:
        raise ConfigError("\n".join(problems),
                          hint="crictl reads the snake_case CRI field names "
                               f"({', '.join(fields)})")
    return data


def render(ws: Workspace, pod) -> tuple[Path, Path]:
    """Write the pod and container configs crictl is given, under
    ``<workdir>/pod/``: the container's image and command from stack.yaml,
    our label on the pod, ``log_directory`` made absolute (a relative or
    empty one is under the workdir) and created."""
    out = ws.workdir / "pod"
    pod_cfg = _load_template(pod.pod_config, POD_FIELDS, "pod config")
    ctr_cfg = _load_template(pod.container_config, CONTAINER_FIELDS, "container config")
    logdir = Path(os.path.expanduser(str(pod_cfg.get("log_directory") or "logs/pod")))
    logdir = logdir if logdir.is_absolute() else ws.workdir / logdir
    logdir.mkdir(parents=True, exist_ok=True)
    pod_cfg["log_directory"] = str(logdir)
    labels = pod_cfg.get("labels") if isinstance(pod_cfg.get("labels"), dict) else {}
    pod_cfg["labels"] = {**labels, LABEL[0]: LABEL[1]}
    image = ctr_cfg.get("image") if isinstance(ctr_cfg.get("image"), dict) else {}
    ctr_cfg["image"] = {**image, "image": pod.image}
    ctr_cfg["command"] = list(pod.command)
    pod_file = out / pod.pod_config.name
    ctr_file = out / pod.container_config.name
    if pod_file == ctr_file:
        ctr_file = out / f"container-{ctr_file.name}"
    for path, data in ((pod_file, pod_cfg), (ctr_file, ctr_cfg)):
        atomic_write(path, json.dumps(data, indent=2) + "\n")
    return pod_file, ctr_file


# --------------------------------------------------------------------------
# run_pod


def netns_path(inspect: dict) -> str | None:
    """The pod's network namespace path in ``crictl inspectp`` output
    (``info.runtimeSpec.linux.namespaces[type=network].path`` from CRI-O)."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "network" and isinstance(node.get("path"), str):
                found.append(node["path"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(inspect)
    return next((p for p in found if p), None)


def _remove_earlier(cri: Crictl, state: PodState) -> None:
    """Stop and remove every pod of ours: the recorded one, and any carrying
    our label (a state file lost, or another workdir's pod)."""
    recorded = state.read().get("pod_id")
    existing = set(cri.pods())
    targets = cri.pods("--label", f"{LABEL[0]}={LABEL[1]}")
    if recorded and recorded in existing and recorded not in targets:
        targets.insert(0, recorded)
    elif recorded and recorded not in existing:
        run.say(f"the pod recorded by an earlier run_pod ({recorded[:13]}) is gone")
    for pod_id in targets:
        run.say(f"removing the pod left by an earlier run_pod: {pod_id[:13]}")
        cri("stopp", pod_id)
        cri("rmp", pod_id)
    state.clear()


def _runp_hint(pod) -> str:
    return (f"CRI-O must know the runtime handler '{pod.runtime}' "
            f"([crio.runtime.runtimes.{pod.runtime}] in its config: doit config:crio), and "
            "runp waits for a CNI config in CRI-O's network_dir (doit config:cni); "
            "see the diagnostics folder")


def run_pod(ws: Workspace) -> None:
    pod = ws.stack.pod
    shell = Shell(ws, "run_pod")
    state = PodState(ws)
    cri = Crictl(shell, pod.socket, pod.start_timeout)
    try:
        if ws.settings.destdir:
            run.say(f"note: destdir is {ws.settings.destdir}: crio and crictl come from PATH, "
                    "not from the staged install")
        if not shell.sudo and shutil.which("crictl") is None:  # before starting anything
            raise StackError("crictl: command not found",
                             hint="install it (doit install:cri-tools), and make sure the "
                                  "folder it is installed in is on PATH")
        pod_file, ctr_file = render(ws, pod)
        shell.note(f"rendered {pod_file} and {ctr_file}")
        crio.ensure(ws, shell, pod)
        _remove_earlier(cri, state)
        if cri("images", "-q", pod.image).out.strip():
            run.say(f"image {pod.image} is present: not pulling it")
        else:
            cri("pull", pod.image, hint="check the image name (fully qualified, e.g. "
                "docker.io/library/busybox:latest), registry access and "
                "/etc/containers/policy.json (doit config:policy)")
        pod_id = cri.id("pod", "runp", f"--runtime={pod.runtime}", str(pod_file),
                        hint=_runp_hint(pod))
        state.update(pod_id=pod_id, socket=pod.socket, runtime=pod.runtime, image=pod.image,
                     started=time.strftime("%Y-%m-%d %H:%M:%S"))
        ctr_id = cri.id("container", "create", pod_id, str(ctr_file), str(pod_file))
        state.update(container_id=ctr_id)
        cri("start", ctr_id)
        addr = cri("exec", "-s", ctr_id, "ip", "addr", "show").out
        if pod.ping:
            _ping(shell, cri, state, pod_id)
    except (StackError, OSError) as err:
        message, hint = (err.message, err.hint) if isinstance(err, StackError) else (
            str(err), None)
        where = diagnostics(ws, shell, pod.socket, message)
        left = state.read().get("pod_id")
        if left:
            hint = (hint + "; " if hint else "") + \
                f"the pod {left[:13]} is left for inspection: doit stop_pod removes it"
        raise StackError(f"{message}\n--- diagnostics: {where}", hint) from None
    run.say(f"pod       {pod_id}  (runtime {pod.runtime})")
    run.say(f"container {ctr_id}  ({pod.image}: {shlex.join(pod.command)})")
    run.say("ip addr show, in the container:\n" + addr.rstrip("\n"))
    run.say("stop it with: doit stop_pod")


def _ping(shell: Shell, cri: Crictl, state: PodState, pod_id: str) -> None:
    """Let passt (which drops to nobody) use ping sockets in the pod's netns:
    the sysctl is per network namespace (stack-facts §6)."""
    res = cri("inspectp", "-o", "json", pod_id)
    try:
        info = json.loads(res.out)
    except ValueError:
        raise StackError("crictl inspectp did not print JSON", hint=f"see {shell.log}") from None
    path = netns_path(info)
    if not path:
        raise StackError(f"no network namespace path in crictl inspectp {pod_id[:13]}",
                         hint="set pod.ping: false to skip the ping_group_range sysctl")
    if os.path.dirname(path) not in NETNS_DIRS:
        raise StackError(f"the pod's network namespace {path} is not under /var/run/netns, "
                         "where 'ip netns exec' looks",
                         hint=f"run: nsenter --net={path} sysctl -w "
                              f"net.ipv4.ping_group_range=\"{PING_RANGE}\"; or set pod.ping: "
                              "false")
    name = os.path.basename(path)
    shell.query(["ip", "netns", "exec", name,
                 "sysctl", "-w", f"net.ipv4.ping_group_range={PING_RANGE}"])
    state.update(netns=path)
    run.say(f"net.ipv4.ping_group_range = {PING_RANGE} in the pod's netns {name}")


# --------------------------------------------------------------------------
# Diagnostics


def _new_folder(logs: Path) -> Path:
    base = logs / time.strftime("diag-%Y%m%d-%H%M%S")
    path, n = base, 1
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            n += 1
            path = base.with_name(f"{base.name}-{n}")


def _copy_tail(src: Path, dst: Path) -> str:
    try:
        with open(src, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - TAIL_BYTES))
            data = f.read()
    except OSError as err:
        return f"{src}: {err.strerror or err}"
    dst.write_bytes(data)
    cut = f" (last {TAIL_BYTES // 1024} KiB of {size} bytes)" if size > TAIL_BYTES else ""
    return f"{dst.name}: {src}{cut}"


def diagnostics(ws: Workspace, shell: Shell, socket: str, error: str) -> Path:
    """Everything that helps to see why run_pod failed, in one folder."""
    folder = _new_folder(ws.logs)
    index = []
    ran = len(shell.transcript)
    record = PodState(ws).read()
    try:
        up = crio.answers(shell, socket, record=True)
    except StackError:  # crictl is missing: already in the transcript
        up = False
    if up:
        cri = Crictl(shell, socket, 10)
        for name, args in (("pods.txt", ("pods",)), ("containers.txt", ("ps", "-a")),
                           ("inspectp.json", ("inspectp", "-o", "json", record.get("pod_id"))),
                           ("inspect.json", ("inspect", "-o", "json",
                                             record.get("container_id")))):
            if None in args:
                continue
            res = cri(*args, check=False, quiet=True)
            (folder / name).write_text(res.out + (f"\n--- stderr\n{res.err}" if res.err else ""))
            index.append(f"{name}: crictl {' '.join(args)} (exit {res.code})")
    else:
        index.append(f"CRI-O does not answer on {socket}: no crictl queries")
    sources = [("crio.log", ws.logs / "crio.log")]
    sources += [(p.name, p) for p in sorted((ws.workdir / "pod").glob("*.json"))]
    if ws.stack.debug.qemu_log:
        sources += [(n, ws.logs / n) for n in ("qemu-serial.log", "qemu-stderr.log")]
    for name, src in sources:
        index.append(_copy_tail(src, folder / name))
    for log in sorted((ws.workdir / "logs" / "pod").glob("*.log")):
        index.append(_copy_tail(log, folder / f"container-{log.name}"))
    if ws.stack.debug.agent_debug_console and record.get("pod_id"):
        vm = Path("/run/vc/vm") / record["pod_id"]
        listing = sorted(p.name for p in vm.iterdir()) if vm.is_dir() else []
        (folder / "console.txt").write_text(
            f"Kata VM folder {vm}: {', '.join(listing) or 'missing'}\n"
            f"Reach the agent's debug console with: kata-runtime exec {record['pod_id']}\n")
        index.append("console.txt: where the VM console is and how to reach it")
    (folder / "commands.txt").write_text("".join(shell.transcript))
    (folder / "README.txt").write_text(
        f"run_pod failed at {time.strftime('%Y-%m-%d %H:%M:%S')}\n\n{error}\n\n"
        f"stack: {ws.stack.path}\npod: {json.dumps(record, sort_keys=True)}\n\n"
        f"commands.txt: the {ran} commands run_pod ran (then the queries for this folder), "
        "with exit codes and output\n" + "\n".join(index) + "\n")
    return folder


# --------------------------------------------------------------------------
# stop_pod


def stop_pod(ws: Workspace) -> None:
    state = PodState(ws)
    record = state.read()
    socket = record.get("socket") or (ws.stack.pod.socket if ws.stack.pod else
                                      crio.DEFAULT_SOCKET)
    shell = Shell(ws, "stop_pod")
    done = False
    if crio.answers(shell, socket, record=True):
        cri = Crictl(shell, socket, ws.stack.pod.start_timeout if ws.stack.pod else 60)
        recorded = record.get("pod_id")
        targets = cri.pods("--label", f"{LABEL[0]}={LABEL[1]}")
        if recorded and recorded not in targets and recorded in cri.pods():
            targets.insert(0, recorded)
        for pod_id in targets:
            cri("stopp", pod_id)
            cri("rmp", pod_id)
            run.say(f"removed the pod {pod_id[:13]}")
            done = True
        state.clear()
    elif record.get("pod_id"):
        run.say(f"CRI-O does not answer on {socket}: the pod {record['pod_id'][:13]} cannot be "
                "removed now (run_pod or stop_pod removes it once CRI-O runs again)")
    stopped = crio.stop_ours(ws, shell)
    if stopped:
        run.say(stopped)
        done = done or stopped.startswith("stopped")
    elif crio.answers(shell, socket):
        run.say(f"CRI-O on {socket} was not started by run_pod: left running")
    if not done:
        run.say("nothing to stop: no pod of ours, and no crio started by run_pod")


# --------------------------------------------------------------------------
# doit


def _no_pod():
    raise StackError("stack.yaml has no 'pod' section",
                     hint="add one: 'pod: {}' runs busybox with the kata runtime")


def run_task(ws: Workspace) -> dict:
    stack = ws.stack
    if stack.pod is None:
        return {"doc": "run the example pod (stack.yaml has no 'pod' section)",
                "actions": [step(ws, "run_pod", _no_pod)], "verbosity": 2}
    deps = [f"install:{p.id}" for c in stack.components.values() for p in c.parts]
    if stack.image is not None:
        deps.append("image")
    deps += [f"config:{name}" for name in stack.configs]
    return {
        "doc": f"run the example pod ({stack.pod.image} with runtime {stack.pod.runtime}); "
               "starts CRI-O if it does not answer",
        "actions": [step(ws, "run_pod", lambda: run_pod(ws))],
        "task_dep": deps,
        "verbosity": 2,
    }


def stop_task(ws: Workspace) -> dict:
    return {
        "doc": "remove the example pod, and stop CRI-O if run_pod started it",
        "actions": [step(ws, "stop_pod", lambda: stop_pod(ws))],
        "verbosity": 2,
    }
