"""The example pod's files: the templates crictl is given, the state of the
pod we run, and the diagnostics folder written when run_pod fails."""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ... import run
from ...errors import ConfigError, StackError, closest
from ...state import JsonFile, atomic_write
from ...workspace import Workspace
from . import crio
from .crictl import Crictl, Shell

LABEL = ("kata-passt-stack", "run_pod")  # on every pod we start: finds them without state
TAIL_BYTES = 256 * 1024  # of each log copied into a diagnostics folder

# The field names crictl reads (snake_case protobuf JSON tags, see
# docs/stack-notes.md#pod-and-container-files); it silently drops any other key.
POD_FIELDS = ("metadata", "hostname", "log_directory", "dns_config", "port_mappings",
              "labels", "annotations", "linux", "windows")
CONTAINER_FIELDS = ("metadata", "image", "command", "args", "working_dir", "envs", "mounts",
                    "devices", "labels", "annotations", "log_path", "stdin", "stdin_once",
                    "tty", "linux", "windows")


def pod_state(ws: Workspace) -> JsonFile:
    """The pod and container of ours that run, and their socket."""
    return ws.json("pod")


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
        guess = snake if snake in fields else closest(key, fields)
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


@dataclass(frozen=True)
class Rendered:
    """The files crictl is given, the pod's log folder, and the logs that
    were in it before this pod (name: size, mtime): an earlier pod's."""

    pod_file: Path
    ctr_file: Path
    log_dir: Path
    logs_before: dict[str, tuple[int, int]] = field(default_factory=dict)


def _logs_in(folder: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for path in sorted(folder.glob("*.log")) if folder.is_dir() else []:
        try:
            st = path.stat()
        except OSError:
            continue
        out[path.name] = (st.st_size, st.st_mtime_ns)
    return out


def render(ws: Workspace, pod) -> Rendered:
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
    return Rendered(pod_file, ctr_file, logdir, _logs_in(logdir))


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


def _copy_tail(src: Path, dst: Path, offset: int = 0) -> str:
    try:
        data, size = run.tail_bytes(src, TAIL_BYTES, offset)
    except OSError as err:
        return f"{src}: {err.strerror or err}"
    dst.write_bytes(data)
    cut = f" (last {TAIL_BYTES // 1024} KiB of {size} bytes)" if size > TAIL_BYTES else ""
    since = f" (from byte {offset}: what this pod wrote)" if offset else ""
    return f"{dst.name}: {src}{cut}{since}"


def _pod_logs(rendered: Rendered | None, folder: Path) -> list[str]:
    """Copy what the current pod's containers logged: a log that was there
    before this pod and has not changed is an earlier pod's; one that grew
    is copied from where it was."""
    if rendered is None:
        return []
    index = []
    for name, (size, mtime) in _logs_in(rendered.log_dir).items():
        src = rendered.log_dir / name
        old = rendered.logs_before.get(name)
        if old == (size, mtime):
            index.append(f"({src}: unchanged since before this pod: an earlier pod's, "
                         "not copied)")
            continue
        offset = old[0] if old and size >= old[0] else 0
        index.append(_copy_tail(src, folder / f"container-{name}", offset))
    return index


def diagnostics(ws: Workspace, shell: Shell, socket: str, error: str,
                rendered: Rendered | None = None) -> Path:
    """Everything that helps to see why run_pod failed, in one folder."""
    folder = _new_folder(ws.logs)
    index = []
    ran, probes = shell.commands, shell.probes
    shell.note("--- run_pod failed; what follows was asked for the diagnostics folder ---")
    record = pod_state(ws).read()
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
            (folder / name).write_text(res.out + (f"\n--- stderr\n{res.err}" if res.err else ""),
                                       errors="surrogateescape")  # its bytes as crictl wrote them
            index.append(f"{name}: crictl {' '.join(args)} (exit {res.code})")
    else:
        index.append(f"CRI-O does not answer on {socket}: no crictl queries")
    sources = [("crio.log", ws.logs / "crio.log")]
    files = [rendered.pod_file, rendered.ctr_file] if rendered else \
        sorted((ws.workdir / "pod").glob("*.json"))
    sources += [(p.name, p) for p in files]
    if ws.stack.debug.qemu_log:
        sources += [(n, ws.logs / n) for n in ("qemu-serial.log", "qemu-stderr.log")]
    for name, src in sources:
        index.append(_copy_tail(src, folder / name))
    index += _pod_logs(rendered, folder)
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
        f"commands.txt: the {ran} commands run_pod ran"
        + (f" ({probes} of them probes that only look, marked '# probe')" if probes else "")
        + f", then the {shell.commands - ran} asked for this folder, with exit codes and "
        "output\n" + "\n".join(index) + "\n")
    return folder
