"""What the example pod needs from the stack and the host, and what CRI-O's
refusals mean.

Three things, all read from the stack (no process is run here):

* **The CRI-O side of the stack**, what a pod with a runtime other than Kata
  (runc, crun) needs: the configs CRI-O, CNI, crictl and the containers
  library read (a path under ``/etc/crio/``, ``/etc/cni/``,
  ``/etc/containers/``, or ``/etc/crictl.yaml``), and the parts that install
  crio, crictl or a CNI plugin (``/opt/cni/bin/``), a file one of those
  configs names (CRI-O refuses to start when a runtime's ``runtime_path`` is
  missing, so the Kata shim the drop-in names counts), and what those configs
  ``need`` (``NAME``: every part; ``NAME/PART``: that part).
* **The Kata pre-flight**: the devices (``/dev/kvm``, ``/dev/vhost-vsock``),
  the syslog socket (``/dev/log``) and the paths in the Kata configuration
  (QEMU, kernel, initrd or image, virtiofsd), checked before CRI-O is asked,
  by host/runtime.py's rule for run-time paths.
* **Hints**: CRI-O's answer to a failed ``runp``, ``create``, ``start`` or
  ``pull``, sorted into the failures seen on real hosts (``RULES``), each
  with what to do; ``generic()`` for what is left.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ...action import task_id
from ...model import Config, Part, Stack
from .. import runtime

DEFAULT_PAUSE_IMAGE = "k8s.gcr.io/pause:3.6"  # CRI-O 1.23's [crio.image] pause_image
CRIO_CONF = "/etc/crio/crio.conf"
KATA_CONFIG = "/etc/kata-containers/configuration.toml"  # the first file Kata reads
KATA_DEFAULTS = "/usr/share/defaults/kata-containers/configuration.toml"
CRIO_SIDE_DIRS = ("/etc/crio/", "/etc/cni/", "/etc/containers/")
CRIO_SIDE_FILES = ("/etc/crictl.yaml",)
CRIO_PROGRAMS = ("crio", "crictl")
CNI_BIN = "/opt/cni/bin/"


# --------------------------------------------------------------------------
# The CRI-O side of the stack


def crio_side_configs(stack: Stack) -> list[Config]:
    return [c for c in stack.configs.values()
            if c.path in CRIO_SIDE_FILES or c.path.startswith(CRIO_SIDE_DIRS)]


def crio_configs(stack: Stack) -> list[Config]:
    """The stack's CRI-O configuration files, in the order CRI-O reads them
    (crio.conf, then the drop-ins by name: a later value wins)."""
    confs = [c for c in stack.configs.values()
             if c.format == "toml" and c.path.startswith("/etc/crio/")]
    return sorted(confs, key=lambda c: (c.path != CRIO_CONF, c.path))


def _named_paths(cfg: Config) -> set[str]:
    """The absolute paths a config's values (and its base) name."""
    found = {cfg.base} if cfg.base else set()

    def walk(value):
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif isinstance(value, str) and value.startswith("/") and "${" not in value:
            found.add(value.rstrip("/") or "/")
    walk(cfg.set)
    return found


def _runs_crio_side(part: Part) -> bool:
    return any(p.rsplit("/", 1)[-1] in CRIO_PROGRAMS or p.startswith(CNI_BIN)
               for p in part.installs)


def crio_side_parts(stack: Stack) -> list[Part]:
    """The parts a pod without Kata needs installed (the rule above), in
    stack order."""
    configs = crio_side_configs(stack)
    named = set().union(*(_named_paths(c) for c in configs)) if configs else set()
    chosen = set()
    for c in stack.components.values():
        for part in c.parts:
            if _runs_crio_side(part) or named.intersection(part.installs):
                chosen.add(part.id)
    for cfg in configs:
        for need in cfg.needs:  # NAME (every part) or NAME/PART
            name, _, only = need.partition("/")
            comp = stack.components.get(name)
            if comp is not None:  # not "image"
                chosen.update(p.id for p in comp.parts if not only or p.name == only)
    return [p for c in stack.components.values() for p in c.parts if p.id in chosen]


def _get(data, *keys):
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _crio_values(stack: Stack, *keys):
    """The value CRI-O reads for ``keys`` from the stack's CRI-O files (the
    file as written, else the stack's ``set``), the last file winning."""
    value = None
    for cfg in crio_configs(stack):
        data = None
        try:
            data = tomllib.loads(stack.target(cfg.path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = cfg.set
        found = _get(data, *keys)
        if found is not None:
            value = found
    return value


def runtime_entry(stack: Stack, handler: str) -> dict:
    entry = _crio_values(stack, "crio", "runtime", "runtimes", handler)
    return entry if isinstance(entry, dict) else {}


def is_vm_runtime(stack: Stack, handler: str) -> bool:
    """Whether pods of this handler run in a Kata VM: a kata* handler, or
    one the stack's CRI-O config declares with runtime_type "vm"."""
    return handler.startswith("kata") or runtime_entry(stack, handler).get("runtime_type") == "vm"


def pause_image(stack: Stack, crio_args: tuple[str, ...] = ()) -> str:
    """The pause image CRI-O pulls for every pod: ``--pause-image`` in
    crio_args, else the stack's CRI-O files' pause_image, else CRI-O 1.23's
    default."""
    args = list(crio_args)
    for i, arg in enumerate(args):
        if arg == "--pause-image" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--pause-image="):
            return arg.split("=", 1)[1]
    value = _crio_values(stack, "crio", "image", "pause_image")
    return value if isinstance(value, str) and value else DEFAULT_PAUSE_IMAGE


def crio_config_name(stack: Stack) -> str | None:
    """The stack's CRI-O file a hint names: the last drop-in (it wins)."""
    confs = crio_configs(stack)
    pick = [c for c in confs if c.path != CRIO_CONF] or confs
    return pick[-1].name if pick else None


def _cni_config_name(stack: Stack) -> str | None:
    return next((c.name for c in stack.configs.values() if c.path.startswith("/etc/cni/")),
                None)


def _cni_installer(stack: Stack) -> str | None:
    return next((p.id for c in stack.components.values() for p in c.parts
                 if any(i.startswith(CNI_BIN) for i in p.installs)), None)


# --------------------------------------------------------------------------
# Hints


@dataclass(frozen=True)
class Context:
    """What a hint may name: the failed step (runp, create, start, pull),
    the runtime handler, the pause image, the pod's timeout, and the
    stack's CRI-O drop-in, CNI config and CNI plugins' part."""

    step: str
    handler: str
    pause: str
    timeout: int
    vm: bool = False
    crio_config: str | None = None
    cni_config: str | None = None
    cni_installer: str | None = None

    @classmethod
    def of(cls, stack: Stack, step: str) -> Context:
        pod = stack.pod
        return cls(step, pod.runtime, pause_image(stack, pod.crio_args), pod.start_timeout,
                   is_vm_runtime(stack, pod.runtime), crio_config_name(stack),
                   _cni_config_name(stack), _cni_installer(stack))

    def doit_config(self, name: str | None, what: str) -> str:
        return f"doit {task_id('config', name)}" if name else what


SYSLOG_HINT = ("Kata's shim logs to syslog and fails when nothing listens at /dev/log: start a "
               "syslog daemon (rsyslog, or systemd-journald with its /dev/log socket: "
               "systemctl start systemd-journald-dev-log.socket), or give it a /dev/log socket "
               "(e.g. socat -u UNIX-RECV:/dev/log,mode=666 STDOUT >> /var/log/kata.log &)")
VSOCK_HINT = ("Kata talks to its agent over vsock: load the module with: modprobe vhost_vsock "
              "(then /dev/vhost-vsock exists).  Some VMs cannot have it (a guest kernel without "
              "vhost_vsock, a container without the device: --device /dev/vhost-vsock); Kata "
              "cannot run there, but pod.runtime: runc still checks the CRI-O side")
KVM_HINT = ("Kata's QEMU needs KVM: modprobe kvm_intel (or kvm_amd); enable virtualization in "
            "the firmware, or nested virtualization when this is a VM")


def _offline(image: str, what: str) -> str:
    return (f"provide it offline: load it into CRI-O's storage (with network elsewhere: "
            f"skopeo copy docker://{image} oci-archive:img.tar; here: skopeo copy "
            f"oci-archive:img.tar containers-storage:{image}, or podman load -i img.tar), "
            f"or {what}")


def pause_offline(image: str, ctx: Context) -> str:
    where = (f"configs.{ctx.crio_config}.set.crio.image.pause_image in stack.yaml, then "
             f"doit {task_id('config', ctx.crio_config)}") if ctx.crio_config else \
        "[crio.image] pause_image in CRI-O's config"
    return (f"CRI-O needs its pause image {image} for every pod (the pod's infra "
            "container); " + _offline(image, f"point pause_image at an image CRI-O has "
                                      f"(crictl images): {where}; run_pod restarts the crio "
                                      "it started when that file changes"))


def _pause(m, ctx: Context) -> str:
    image, why = m.group("image"), m.group("why")
    reg = re.search(r"pinging container registry ([^\s:]+)", why)
    cannot = f"cannot reach {reg.group(1)}" if reg else "cannot pull it"
    if image == ctx.pause or ctx.step == "runp":
        return f"CRI-O {cannot} for the pause image {image} (offline?): " + \
            pause_offline(image, ctx)
    return (f"CRI-O {cannot} for {image} (offline?): "
            + _offline(image, "point pod.image at an image CRI-O has (crictl images)"))


def _oom(m, ctx: Context) -> str:
    return ("runc could not lower the pod's infra process oom_score_adj to -998 (CRI-O 1.23 "
            "asks for it for the infra container): that needs CAP_SYS_RESOURCE, which root "
            "lacks here, as inside a VM sandbox or a container that withholds it (see CapEff "
            "in /proc/self/status, or capsh --print).  Run CRI-O where root has "
            "CAP_SYS_RESOURCE (a container: --cap-add=SYS_RESOURCE or --privileged; else a "
            "host or a full VM), or start crio from a process whose oom_score_adj is already "
            "-998 or lower (systemd: OOMScoreAdjust=-999).  For a runc pod, CRI-O can also "
            "drop the infra container (drop_infra_ctr, on by default in 1.23) when the pod and "
            "the container both ask for a PID namespace of their own: "
            "\"linux\": {\"security_context\": {\"namespace_options\": {\"pid\": 1}}} in "
            "both templates (pod.pod_config and pod.container_config)")


def _syslog(m, ctx: Context) -> str:
    return SYSLOG_HINT


def _vsock(m, ctx: Context) -> str:
    return "the host has no /dev/vhost-vsock. " + VSOCK_HINT


def _handler(m, ctx: Context) -> str:
    known = [k.split(":", 1)[0] for k in (m.group("known") or "").split() if k]
    handler = m.group("handler") or ctx.handler
    return (f"CRI-O does not know the runtime handler '{handler}'"
            + (f" (it knows: {', '.join(known)})" if known else "")
            + f": it needs [crio.runtime.runtimes.{handler}] in its config ("
            + ctx.doit_config(ctx.crio_config, "CRI-O's drop-in")
            + "; run_pod restarts the crio it started when that file changes), or set "
              "pod.runtime to one it knows")


def _cni(m, ctx: Context) -> str:
    plugins = f" (doit {task_id('install', ctx.cni_installer)})" if ctx.cni_installer else ""
    return ("CRI-O's network is not ready: runp waits until CRI-O finds a CNI config in its "
            "network_dir, /etc/cni/net.d (" + ctx.doit_config(ctx.cni_config, "write one")
            + "), whose plugins are in its plugin_dirs, /opt/cni/bin" + plugins
            + "; crictl info shows the NetworkReady condition")


# message pattern -> hint, first match wins.  Patterns as text: re compiles
# (and caches) them the first time a failure is classified, not on every
# no-op that imports this module for the check's key.
RULES = [
    ("pause-image", r"initializing source docker://(?P<image>\S+?): (?P<why>.*)", 0, _pause),
    ("oom-score-adj", r"oom_score_adj: (?:Permission denied|Operation not permitted)"
                      r"|failed to update /proc/self/oom_score_adj", 0, _oom),
    ("syslog", r"syslog delivery error", re.I, _syslog),
    ("vhost-vsock", r"doesn't support vsock|/dev/vhost-vsock", 0, _vsock),
    ("runtime-handler", r"failed to find runtime handler (?P<handler>\S*) from "
                        r"runtime list(?: map\[(?P<known>[^\]]*)\])?", 0, _handler),
    ("cni", r"no CNI configuration file|CNI plugin not ready|NetworkPluginNotReady|"
            r"before (?:the )?(?:CNI plugin|network) was ready", re.I, _cni),
]
DEADLINE = r"DeadlineExceeded|context deadline exceeded"


def classify(output: str, ctx: Context) -> tuple[str, str] | None:
    """(kind, hint) for CRI-O's answer, or None when no rule knows it."""
    for kind, pattern, flags, hint in RULES:
        m = re.search(pattern, output, flags)
        if m:
            return kind, hint(m, ctx)
    return None


def deadline_exceeded(output: str) -> bool:
    """crictl gave up waiting (CRI-O still working, or stuck)."""
    return re.search(DEADLINE, output) is not None


def network_not_ready(info: str) -> str | None:
    """The NetworkReady condition's message from ``crictl info`` when it is
    false, else None."""
    try:
        conditions = json.loads(info).get("status", {}).get("conditions", [])
    except (ValueError, AttributeError):
        return None
    for cond in conditions if isinstance(conditions, list) else []:
        if isinstance(cond, dict) and cond.get("type") == "NetworkReady" \
                and cond.get("status") is False:
            return str(cond.get("message") or cond.get("reason") or "NetworkReady is false")
    return None


def cni_hint(message: str, ctx: Context) -> str:
    return f"{_cni(None, ctx)} (now: {message})"


def timeout_hint(ctx: Context) -> str:
    return (f"CRI-O did not answer within pod.start_timeout ({ctx.timeout} s): booting a VM on "
            "a slow or nested host can take longer; raise pod.start_timeout, and see what "
            "crio.log in the diagnostics folder says CRI-O was doing")


def generic(ctx: Context) -> str:
    return (f"CRI-O refused the {ctx.step}: its reason is above; crio.log and commands.txt in "
            "the diagnostics folder have the rest" +
            ("; with debug.qemu_log: true the guest console and QEMU's errors are logged too"
             if ctx.vm else ""))


# --------------------------------------------------------------------------
# Kata pre-flight


def _kata_file(stack: Stack, handler: str) -> tuple[Path | None, str, list[str]]:
    """The Kata configuration CRI-O's handler reads: (where it is read,
    what it is called, problems)."""
    named = runtime_entry(stack, handler).get("runtime_config_path")
    paths = [named] if isinstance(named, str) and named else [KATA_CONFIG, KATA_DEFAULTS]
    for path in paths:
        cfg = next((c for c in stack.configs.values() if c.path == path), None)
        if cfg is not None:
            where = stack.target(path)
            if where.is_file():
                return where, path, []
            return None, path, [f"the Kata configuration {where} is missing: "
                                f"doit {task_id('config', cfg.name)} writes it"]
        if runtime.host_path(path).is_file():
            return runtime.host_path(path), path, []
    looked = ", ".join(str(runtime.host_path(p)) for p in paths)
    return None, paths[0], [f"no Kata configuration (looked at {looked}): add a config with "
                            f"path {paths[0]} to stack.yaml"]


def _check_path(stack: Stack, key: str, value, executable: bool, where: str,
                what: str) -> list[str]:
    if not isinstance(value, str) or not value:
        return [f"{key} is not set in {where}: {what}"]
    image = stack.image.output if stack.image else None
    if image is not None and value == str(image):
        return [] if image.is_file() else [f"{key} = {value} in {where}: the image is not "
                                           "built: doit image"]
    if runtime.find(stack, value, executable=executable):
        return []
    return [f"{key} = {value} in {where} is not there (looked at "
            f"{runtime.looked_at(stack, [value])}): {what}"]


def kata_preflight(stack: Stack, handler: str) -> list[str]:
    """What a Kata pod needs and is missing, one sentence each."""
    problems = []
    for dev, hint in (("/dev/kvm", KVM_HINT), ("/dev/vhost-vsock", VSOCK_HINT)):
        if not runtime.host_path(dev).exists():
            problems.append(f"{runtime.host_path(dev)} is missing: {hint}")
    if not runtime.host_path("/dev/log").exists():
        problems.append(f"no syslog socket at {runtime.host_path('/dev/log')}: {SYSLOG_HINT}")
    file, name, found = _kata_file(stack, handler)
    problems += found
    if file is None:
        return problems
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return problems + [f"cannot read the Kata configuration {file}: {err}"]
    hyper = _get(data, "hypervisor") or {}
    table = "qemu" if "qemu" in hyper else next(iter(hyper), None)
    q = hyper.get(table) if isinstance(hyper.get(table), dict) else {}
    where = f"{name}" + (f" ({file})" if str(file) != name else "")
    pre = f"hypervisor.{table or 'qemu'}"
    problems += _check_path(stack, f"{pre}.path", q.get("path"), True, where,
                            "install the qemu component, or your distribution's QEMU")
    problems += _check_path(stack, f"{pre}.kernel", q.get("kernel"), False, where,
                            "the guest kernel: the image's (mbuto names /boot/vmlinuz-VERSION)")
    key = "initrd" if q.get("initrd") or not q.get("image") else "image"
    problems += _check_path(stack, f"{pre}.{key}", q.get(key), False, where,
                            "the guest image: doit image")
    if str(q.get("shared_fs", "virtio-fs")).startswith("virtio-fs"):
        problems += _check_path(stack, f"{pre}.virtio_fs_daemon", q.get("virtio_fs_daemon"),
                                True, where, "install virtiofsd (Debian 12 has no virtiofsd "
                                "package: qemu-system-common ships /usr/lib/qemu/virtiofsd), "
                                "or the qemu component, which builds one")
    return problems
