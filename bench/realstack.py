#!/usr/bin/env python3
"""The real-stack check (issue 13): build the real components through the
tool, run what they built, and optionally run a runc pod end to end.

    python3 bench/realstack.py --mirrors mirrors.json [--pod] [--workdir DIR]
    python3 bench/realstack.py --network [--components passt,cri-o] [--pod]

It writes a scratch stack file (WORKDIR/stack.yaml) derived from the
project's stack.yaml: the chosen components' definitions are copied as they
are written (git, ref, patches, env, build and install commands), plus the
components their patches or ``needs`` refer to; everything is staged under
WORKDIR/destdir and the tool's state lives in WORKDIR/build.  Then, through
``./stack.sh stack=WORKDIR/stack.yaml``:

1. ``check``;
2. per component, ``patch:NAME`` (fetch and patch, timed) and
   ``install:NAME`` (build and install, timed);
3. each staged binary's version (``crio --version``, ``crictl --version``,
   a CNI plugin's about line, ``kata-runtime --version``,
   ``containerd-shim-kata-v2 --version``, ``passt --version``);
4. with ``--pod`` (root, runc, conmon, skopeo and a static busybox needed):
   a pause image and a busybox image are made locally (no registry), copied
   into a CRI-O storage root of its own (vfs driver), ``config:crio``,
   ``config:cni`` and ``config:policy`` write the staged configuration
   (cgroupfs, its own socket and run folders, the runc runtime), then
   ``run_pod``, ``ip addr show`` in the container, and ``stop_pod``.

``--mirrors FILE`` maps upstream git URLs to local repositories, applied as
git's ``url.<local>.insteadOf = <upstream>`` through GIT_CONFIG_COUNT /
GIT_CONFIG_KEY_n / GIT_CONFIG_VALUE_n, so the stack keeps its real URLs.
The file is JSON (``{"https://github.com/cri-o/cri-o.git": "/srv/cri-o.git"}``)
or INI (a ``[mirrors]`` section of ``URL = PATH`` lines); relative paths are
taken from the file's folder.  ``--network`` uses the upstreams themselves.

Standard library only; the tool is driven through ./stack.sh as a user
would.  Not part of CI.  Exit status: 0 when every step passed.
docs/realstack.md has the figures of a run and how the mirrors were made.
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import io
import json
import os
import platform
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
STACK_SH = PROJECT / "stack.sh"
DEFAULT_COMPONENTS = ("passt", "cri-tools", "cni-plugins", "cri-o", "kata-containers/runtime")
# Not built by default: no Rust 1.54-1.58 toolchain, no QEMU build deps, and
# the image needs the agent.  Named explicitly they are tried like any other.
NOT_BY_DEFAULT = {"kata-containers/agent": "needs a Rust 1.54-1.58 toolchain",
                  "qemu": "needs QEMU's build dependencies",
                  "mbuto": "nothing to install (the image needs the agent)"}

# What each install is checked with: (label, path under destdir, args, env).
# "$PREFIX" is the stack's prefix; Kata's runtime Makefile ignores it
# (stack.yaml: binaries in /usr/local/bin whatever the prefix).
VERSION_CMDS = {
    # passt got --version later in 2022: at the pinned commit the binary
    # prints its usage instead, and the commit from stack.lock is shown.
    "passt": [("passt --version", "$PREFIX/bin/passt", ["--version"], {})],
    "cri-tools": [("crictl --version", "$PREFIX/bin/crictl", ["--version"], {})],
    # A CNI plugin run without CNI_COMMAND prints its "about" line.
    "cni-plugins": [("bridge (about)", "/opt/cni/bin/bridge", [], {}),
                    ("bridge CNI_COMMAND=VERSION", "/opt/cni/bin/bridge", [],
                     {"CNI_COMMAND": "VERSION"})],
    "cri-o": [("crio --version", "$PREFIX/bin/crio", ["--version"], {})],
    "kata-containers/runtime": [
        ("kata-runtime --version", "/usr/local/bin/kata-runtime", ["--version"], {}),
        ("containerd-shim-kata-v2 --version", "/usr/local/bin/containerd-shim-kata-v2",
         ["--version"], {})],
}
POD_NEEDS = ("cri-o", "cri-tools", "cni-plugins")  # the runc pod's side of the stack
POD_LABEL = "kata-passt-stack=run_pod"  # run_pod labels its pods (README)
PAUSE_IMAGE = "localhost/kata-passt-stack/pause:realstack"
BRIDGE = "kps-realstack0"
SUBNET = "10.199.0.0/24"

PAUSE_C = r"""
/* pause: the infra container's process (what Kubernetes' pause does):
 * wait for a signal, reap children, exit on SIGINT/SIGTERM. */
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) ; }
int main(void)
{
    signal(SIGINT, quit);
    signal(SIGTERM, quit);
    signal(SIGCHLD, reap);
    for (;;)
        pause();
}
"""


# --------------------------------------------------------------------------
# Output


class Out:
    """Everything printed goes to stdout and to WORKDIR/realstack.log."""

    def __init__(self):
        self.log = None

    def open(self, path: Path) -> None:
        self.log = open(path, "a", encoding="utf-8", errors="replace")

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        if self.log:
            self.log.write(text + "\n")
            self.log.flush()


say = Out()


def fail(message: str) -> None:
    say(f"realstack: error: {message}")
    sys.exit(2)


@dataclass
class Result:
    name: str
    fetch_s: float | None = None
    build_s: float | None = None
    ok: bool = False
    error: str = ""
    load: str = ""  # the 1, 5 and 15 min load averages when the build ended
    versions: list[tuple[str, str]] = field(default_factory=list)


def run_logged(argv: list[str], env: dict | None = None, cwd: Path | None = None,
               quiet: bool = False) -> tuple[int, str, float]:
    """Run a command, streaming its output (stdout and stderr merged);
    return (exit code, output, seconds)."""
    say(f"$ {shlex.join(argv)}")
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, cwd=cwd)
    chunks = []
    for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip("\n")
        chunks.append(line)
        if not quiet:
            say(f"  | {line}")
    code = proc.wait()
    took = time.monotonic() - started
    say(f"  (exit {code}, {took:.1f} s)")
    return code, "\n".join(chunks), took


def capture(argv: list[str], env: dict | None = None, timeout: int = 60) -> tuple[int, str]:
    try:
        res = subprocess.run(argv, capture_output=True, env=env, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return 127, f"{argv[0]}: not found"
    except subprocess.TimeoutExpired:
        return 124, f"{argv[0]}: timed out after {timeout} s"
    text = (res.stdout + res.stderr).decode(errors="replace").strip()
    return res.returncode, text


# --------------------------------------------------------------------------
# Mirrors


def read_mirrors(path: Path) -> dict[str, str]:
    """URL -> local repository, from JSON or INI ([mirrors] URL = PATH)."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except ValueError:
        ini = configparser.ConfigParser(delimiters=("=",), interpolation=None)
        ini.optionxform = str  # keep the URLs' case
        try:
            ini.read_string(text, source=str(path))
        except configparser.Error as err:
            fail(f"{path}: neither JSON nor INI: {err}")
        if not ini.has_section("mirrors"):
            fail(f"{path}: an INI mirrors file needs a [mirrors] section of URL = PATH lines")
        data = dict(ini.items("mirrors"))
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        fail(f"{path}: expected an object of upstream URL -> local path")
    out = {}
    for url, local in data.items():
        local_path = Path(os.path.expanduser(local))
        if not local_path.is_absolute():
            local_path = (path.parent / local_path).resolve()
        if not local_path.exists():
            fail(f"{path}: mirror of {url} not found: {local_path}")
        out[url] = str(local_path)
    return out


def insteadof_env(mirrors: dict[str, str], base: dict) -> dict:
    """git's url.<local>.insteadOf=<upstream>, through GIT_CONFIG_COUNT (added
    after any the environment already has)."""
    env = dict(base)
    n = int(env.get("GIT_CONFIG_COUNT", "0") or 0)
    for url, local in mirrors.items():
        env[f"GIT_CONFIG_KEY_{n}"] = f"url.{local}.insteadOf"
        env[f"GIT_CONFIG_VALUE_{n}"] = url
        n += 1
    env["GIT_CONFIG_COUNT"] = str(n)
    return env


# --------------------------------------------------------------------------
# The scratch stack file


KEY_RE = re.compile(r"^( *)([A-Za-z0-9_][A-Za-z0-9._-]*):(\s|$)")


def blocks(lines: list[str], indent: int) -> list[tuple[str | None, list[str]]]:
    """Split ``lines`` into the mappings keys at ``indent`` spaces, each with
    its lines (the comments at that indent just above a key go with it)."""
    out: list[tuple[str | None, list[str]]] = [(None, [])]
    pending: list[str] = []
    for line in lines:
        stripped = line.lstrip(" ")
        depth = len(line) - len(stripped)
        m = KEY_RE.match(line)
        if m and depth == indent:
            out.append((m.group(2), pending + [line]))
            pending = []
        elif stripped.startswith("#") and depth == indent:
            pending.append(line)
        elif not stripped:
            (pending if pending else out[-1][1]).append(line)
        else:
            out[-1][1].extend(pending + [line])
            pending = []
    out[-1][1].extend(pending)
    return out


def body(block: list[str]) -> list[str]:
    """A block's lines after its key line."""
    for i, line in enumerate(block):
        if KEY_RE.match(line):
            return block[i + 1:]
    return []


def field_of(block: list[str], indent: int, key: str) -> str | None:
    """A scalar ``key: value`` at ``indent`` in a block (comments dropped)."""
    for line in block:
        m = re.match(rf"^ {{{indent}}}{re.escape(key)}:\s*(.*)$", line)
        if m:
            value = re.sub(r"\s+#.*$", "", m.group(1)).strip()
            return value.strip("\"'")
    return None


def flow_list(value: str | None) -> list[str]:
    if not value or not value.startswith("["):
        return []
    return [v.strip().strip("\"'") for v in value.strip("[]").split(",") if v.strip()]


@dataclass
class SourceStack:
    """What the scratch stack needs from the project's stack.yaml, read as
    text so that each component is copied exactly as written."""
    version: list[str]
    prefix: str
    components: dict[str, list[str]]  # name -> its block of lines (indent 2)

    @classmethod
    def read(cls, path: Path) -> SourceStack:
        top = dict(blocks(path.read_text(encoding="utf-8").splitlines(), 0))
        if "components" not in top or "version" not in top:
            fail(f"{path}: no 'version' or 'components' at the top level")
        prefix = field_of(top.get("settings", []), 2, "prefix") or "/usr/local"
        comps = {name: lines for name, lines in blocks(body(top["components"]), 2) if name}
        return cls(version=[line for line in top["version"] if KEY_RE.match(line)],
                   prefix=prefix, components=comps)

    def git(self, name: str) -> str:
        return field_of(self.components[name], 4, "git") or ""

    def parts(self, name: str) -> list[str]:
        return [p for p, _ in self._part_blocks(name) if p]

    def _part_blocks(self, name: str):
        lines = self.components[name]
        for i, line in enumerate(lines):
            if re.match(r"^    parts:\s*(#.*)?$", line):
                end = i + 1
                while end < len(lines) and (not lines[end].strip() or
                                            lines[end].startswith("      ")):
                    end += 1
                return blocks(lines[i + 1:end], 6)
        return []

    def refers_to(self, name: str) -> set[str]:
        """Components this one's patches or needs name."""
        text = "\n".join(self.components[name])
        found = set(re.findall(r"component:\s*([a-z0-9][a-z0-9._-]*)", text))
        found |= set(flow_list(field_of(self.components[name], 4, "needs")))
        return found & set(self.components)

    def component_text(self, name: str, parts: set[str] | None) -> list[str]:
        """The component's lines, keeping only ``parts`` (None: all)."""
        lines = self.components[name]
        if parts is None:
            return lines
        for i, line in enumerate(lines):
            if re.match(r"^    parts:\s*(#.*)?$", line):
                end = i + 1
                while end < len(lines) and (not lines[end].strip() or
                                            lines[end].startswith("      ")):
                    end += 1
                kept = [ln for p, blk in blocks(lines[i + 1:end], 6)
                        if p is None or p in parts for ln in blk]
                return lines[:i + 1] + kept + lines[end:]
        return lines


def y(value) -> str:
    """A YAML flow value (JSON is valid YAML flow style)."""
    return json.dumps(value)


@dataclass
class Plan:
    work: Path
    stack: Path
    destdir: Path
    prefix: str
    targets: list[str]  # install targets: NAME or NAME/PART
    components: list[str]  # in the scratch stack
    pod: bool
    drop_infra: bool

    @property
    def state(self) -> Path:
        return self.work / "build"

    @property
    def socket(self) -> Path:
        return self.work / "run" / "crio.sock"

    @property
    def storage_root(self) -> Path:
        return self.work / "storage" / "root"

    @property
    def storage_runroot(self) -> Path:
        return self.work / "run" / "storage"

    def staged(self, path: str) -> Path:
        return self.destdir / path.replace("$PREFIX", self.prefix).lstrip("/")


def select(src: SourceStack, wanted: list[str]) -> tuple[list[str], list[str], dict]:
    """The install targets, the components of the scratch stack, and the
    parts to keep per component (None: all)."""
    targets, parts = [], {}
    for item in wanted:
        name, _, part = item.partition("/")
        if name not in src.components:
            fail(f"--components: no component '{name}' in stack.yaml "
                 f"(it has: {', '.join(src.components)})")
        have = src.parts(name)
        if part and part not in have:
            fail(f"--components: {name} has no part '{part}' (parts: {', '.join(have) or 'none'})")
        if have and not part:
            parts[name] = None
        elif part:
            if parts.get(name, set()) is not None:
                parts.setdefault(name, set()).add(part)
        else:
            parts[name] = None
        targets.append(item)
    comps = list(parts)
    todo = list(comps)
    while todo:  # what patches and needs refer to must be in the file too
        for other in src.refers_to(todo.pop()):
            if other not in parts:
                parts[other] = None
                comps.append(other)
                todo.append(other)
    order = [c for c in src.components if c in parts]
    return targets, order, parts


def write_stack(plan: Plan, src: SourceStack, parts: dict) -> None:
    """WORKDIR/stack.yaml; patches/ and configs/ of the project are linked
    beside it, so relative patch and template paths resolve."""
    w = plan.work
    lines = [
        "# Written by bench/realstack.py from the project's stack.yaml: the components",
        "# below are copied from it as written; settings, configs and pod are this",
        "# check's own (staged install, a CRI-O of its own, the runc runtime).",
        *src.version,
        "settings:",
        f"  workdir: {y(str(plan.state))}",
        f"  destdir: {y(str(plan.destdir))}",
        f"  prefix: {y(plan.prefix)}",
        "  sudo: never",
        "  jobs: 0",
        "components:",
    ]
    for name in plan.components:
        lines += src.component_text(name, parts.get(name))
    if plan.pod:
        lines += pod_sections(plan)
    plan.stack.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for sub in ("patches", "configs"):
        link = w / sub
        if (PROJECT / sub).is_dir() and not link.exists():
            link.symlink_to(PROJECT / sub)


def pod_sections(plan: Plan) -> list[str]:
    w = plan.work
    run_dir = w / "run"
    crio_conf = {
        "crio": {
            "root": str(plan.storage_root),
            "runroot": str(plan.storage_runroot),
            "storage_driver": "vfs",
            "log_dir": str(w / "logs" / "crio-pods"),
            "version_file": str(run_dir / "crio" / "version"),
            "version_file_persist": str(w / "lib" / "crio" / "version"),
            "clean_shutdown_file": str(w / "lib" / "crio" / "clean.shutdown"),
            "api": {"listen": str(plan.socket)},
            "runtime": {
                "default_runtime": "runc",
                "cgroup_manager": "cgroupfs",
                "conmon_cgroup": "pod",
                "conmon": shutil.which("conmon") or "conmon",
                "pinns_path": str(plan.staged("$PREFIX/bin/pinns")),
                "container_exits_dir": str(run_dir / "crio" / "exits"),
                "container_attach_socket_dir": str(run_dir / "crio"),
                "hooks_dir": [str(w / "hooks.d")],
                "drop_infra_ctr": True,
                "runtimes": {"runc": {"runtime_path": shutil.which("runc") or "runc",
                                      "runtime_type": "oci",
                                      "runtime_root": str(run_dir / "runc")}},
            },
            "image": {
                "pause_image": PAUSE_IMAGE,
                "pause_command": "/pause",
                "signature_policy": str(plan.staged("/etc/containers/policy.json")),
            },
            "network": {
                "network_dir": str(plan.staged("/etc/cni/net.d")),
                "plugin_dirs": [str(plan.staged("/opt/cni/bin"))],
            },
        },
    }
    cni = {
        "cniVersion": "0.4.0", "name": "kps-realstack", "type": "bridge", "bridge": BRIDGE,
        # no isGateway/ipMasq: they would turn on IP forwarding and NAT on this host
        "isGateway": False, "ipMasq": False,
        "ipam": {"type": "host-local", "subnet": SUBNET, "dataDir": str(w / "lib" / "cni"),
                 "routes": [{"dst": "0.0.0.0/0"}]},
    }
    pod = {
        "runtime": "runc",
        "crio_args": ["--config", str(plan.staged("/etc/crio/crio.conf")),
                      "--config-dir", str(w / "crio.conf.d"), "--log-level", "debug"],
        "socket": str(plan.socket),
        "start_timeout": 120,
    }
    if plan.drop_infra:
        pod["pod_config"] = str(w / "pod-config.json")
        pod["container_config"] = str(w / "container-busybox.json")
    return [
        "configs:",
        "  crio:",
        "    path: /etc/crio/crio.conf",
        "    format: toml",
        "    needs: [cri-o]",
        f"    set: {y(crio_conf)}",
        "  cni:",
        "    path: /etc/cni/net.d/50-realstack.conf",
        "    format: json",
        "    needs: [cni-plugins]",
        f"    set: {y(cni)}",
        "  policy:",
        "    path: /etc/containers/policy.json",
        "    format: json",
        "    create_only: true",
        f"    set: {y({'default': [{'type': 'insecureAcceptAnything'}]})}",
        "pod:",
        *(f"  {k}: {y(v)}" for k, v in pod.items()),
    ]


# --------------------------------------------------------------------------
# Local images (no registry here)


def is_static_elf(path: Path) -> bool:
    """An ELF executable without a program interpreter (PT_INTERP)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:
                return False
            end = "<" if head[5] == 1 else ">"
            phoff, = struct.unpack(end + "Q", head[32:40])
            phentsize, phnum = struct.unpack(end + "HH", head[54:58])
            for i in range(phnum):
                f.seek(phoff + i * phentsize)
                if struct.unpack(end + "I", f.read(4))[0] == 3:  # PT_INTERP
                    return False
            return True
    except OSError:
        return False


def find_busybox(given: str | None) -> Path | None:
    cands = [Path(given)] if given else [
        Path(p) for p in ("/bin/busybox", "/usr/bin/busybox", "/usr/lib/busybox/busybox")]
    for c in cands:
        if c.is_file() and is_static_elf(c):
            return c
    return None


class Layer:
    """An uncompressed layer tar, written deterministically."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)
        self.dirs = set()

    def _info(self, name: str, kind, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, 0, 0, 0
        return info

    def dir(self, name: str, mode: int = 0o755) -> None:
        parts = name.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d and d not in self.dirs:
                self.dirs.add(d)
                self.tar.addfile(self._info(d, tarfile.DIRTYPE, mode))

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self.dir(os.path.dirname(name))
        info = self._info(name, tarfile.REGTYPE, mode)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))

    def link(self, name: str, target: str) -> None:
        self.dir(os.path.dirname(name))
        info = self._info(name, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.tar.addfile(info)

    def bytes(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()


def write_oci(dest: Path, layer: bytes, cfg: dict, tag: str, what: str) -> None:
    """A one-layer OCI image layout at ``dest`` (ref name ``tag``)."""
    if dest.exists():
        shutil.rmtree(dest)
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes, media: str) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media, "digest": f"sha256:{digest}", "size": len(data)}

    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    layer_desc = blob(layer, "application/vnd.oci.image.layer.v1.tar")
    config = {"architecture": arch, "os": "linux", "config": cfg,
              "created": "1970-01-01T00:00:00Z",
              "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
              "history": [{"created": "1970-01-01T00:00:00Z",
                           "created_by": f"bench/realstack.py: {what}"}]}
    cfg_desc = blob(json.dumps(config, sort_keys=True).encode(),
                    "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": cfg_desc, "layers": [layer_desc]}
    man_desc = blob(json.dumps(manifest, sort_keys=True).encode(),
                    "application/vnd.oci.image.manifest.v1+json")
    man_desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (dest / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2,
                                                 "manifests": [man_desc]}))


def busybox_layer(busybox: Path) -> bytes:
    layer = Layer()
    layer.file("bin/busybox", busybox.read_bytes(), 0o755)
    code, listing = capture([str(busybox), "--list-full"])
    if code != 0:
        fail(f"{busybox} --list-full failed: {listing}")
    for applet in sorted(set(listing.split())):
        if applet != "bin/busybox":
            layer.link(applet, "/bin/busybox")
    layer.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
    layer.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    for d in ("root", "tmp", "proc", "sys", "dev", "etc", "var", "run"):
        layer.dir(d, 0o1777 if d == "tmp" else 0o755)
    return layer.bytes()


def make_images(plan: Plan, busybox: Path, image: str) -> list[str]:
    """The pause image and the busybox image, in CRI-O's storage; returns
    problems (empty when both are there)."""
    images = plan.work / "images"
    images.mkdir(parents=True, exist_ok=True)
    src = images / "pause.c"
    src.write_text(PAUSE_C)
    pause_bin = images / "pause.bin"
    code, out = capture(["gcc", "-static", "-O2", "-o", str(pause_bin), str(src)])
    if code != 0:
        return [f"gcc -static pause.c failed: {out}"]
    pl = Layer()
    pl.file("pause", pause_bin.read_bytes(), 0o755)
    write_oci(images / "oci-pause", pl.bytes(), {"Entrypoint": ["/pause"]}, "realstack",
              "a static pause (C, built with gcc -static)")
    write_oci(images / "oci-busybox", busybox_layer(busybox),
              {"Cmd": ["sh"], "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}, "realstack",
              f"a static busybox ({busybox})")
    store = f"containers-storage:[vfs@{plan.storage_root}+{plan.storage_runroot}]"
    problems = []
    for name, ref in (("pause", PAUSE_IMAGE), ("busybox", image)):
        code, _, _ = run_logged(["skopeo", "--insecure-policy", "copy", "--quiet",
                                 f"oci:{images / ('oci-' + name)}:realstack", store + ref])
        if code != 0:
            problems.append(f"skopeo copy of the {name} image failed (exit {code})")
    return problems


# --------------------------------------------------------------------------
# The steps


def stack_sh(plan: Plan, env: dict, *tasks: str, opts: tuple = (), quiet: bool = False):
    """./stack.sh [doit options] stack=SCRATCH TASK..."""
    return run_logged([str(STACK_SH), *opts, f"stack={plan.stack}", *tasks], env=env,
                      quiet=quiet)


def versions(plan: Plan, target: str) -> list[tuple[str, str]]:
    """(label, output) per version command; output 'FAILED ...' on failure."""
    out = []
    for label, path, args, extra in VERSION_CMDS.get(target, []):
        argv = [str(plan.staged(path)), *args]
        code, text = capture(argv, env={**os.environ, **extra}, timeout=30)
        say("$ " + "".join(f"{k}={v} " for k, v in extra.items()) + shlex.join(argv))
        for line in text.splitlines():
            say(f"  | {line}")
        say(f"  (exit {code})")
        # a CNI plugin's about line comes with exit 1 (no CNI_COMMAND)
        good = code == 0 or (not args and not extra and text and code == 1)
        if not good and args == ["--version"] and "unrecognized option" in text \
                and "Usage:" in text:  # it runs, it just has no --version yet
            commit = lock_commits(plan).get(target.split("/")[0], "")
            out.append((label, f"no --version at commit {commit[:12] or '?'} "
                               "(it runs: prints its usage)"))
            continue
        out.append((label, text if good else f"FAILED (exit {code}): {text}"))
    return out


def oom_adj_allowed() -> bool:
    """Whether a process here may lower its oom_score_adj to -998, as runc
    does for CRI-O's infra container (needs CAP_SYS_RESOURCE)."""
    code, _ = capture([sys.executable, "-c",
                       "import os; fd = os.open('/proc/self/oom_score_adj', os.O_WRONLY); "
                       "os.write(fd, b'-998')"])
    return code == 0


def deps_of(plan: Plan, env: dict, task: str) -> list[str] | None:
    """The task_dep of a task, from `doit info`."""
    res = subprocess.run([str(STACK_SH), "info", f"stack={plan.stack}", task], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         stdin=subprocess.DEVNULL)
    text = res.stdout.decode(errors="replace")  # exit 1 only says the task would run
    if not re.search(r"^\s*status\s*:", text, re.M):
        return None
    deps, inside = [], False
    for line in text.splitlines():
        if re.match(r"^\s*task_dep\s*:", line):
            inside = True
            continue
        if inside:
            m = re.match(r"^\s+-\s+(\S+)", line)
            if m:
                deps.append(m.group(1))
            elif line.strip():
                break
    return deps


def lock_commits(plan: Plan) -> dict[str, str]:
    path = plan.stack.with_suffix(".lock")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    found = {}

    def walk(node, name=None):
        if isinstance(node, dict):
            if isinstance(node.get("commit"), str) and name:
                found[name] = node["commit"]
            for k, v in node.items():
                walk(v, k if isinstance(v, dict) else name)
        elif isinstance(node, list):
            for v in node:
                walk(v, name)
    walk(data)
    return found


def pod_config_drop_infra(plan: Plan) -> None:
    """The project's pod and container templates with a per-container PID
    namespace (CONTAINER, 1): with CRI-O's drop_infra_ctr (on by default in
    1.23) the pod then has no infra container, whose oom_score_adj of -998
    runc cannot set without CAP_SYS_RESOURCE.  Both files need it: CRI-O
    refuses a container asking for the pod's PID namespace in a pod without
    an infra container."""
    for name in ("pod-config.json", "container-busybox.json"):
        data = json.loads((PROJECT / "configs" / name).read_text())
        data.setdefault("linux", {}).setdefault("security_context", {}) \
            .setdefault("namespace_options", {})["pid"] = 1  # CONTAINER
        (plan.work / name).write_text(json.dumps(data, indent=2) + "\n")


def pod_image(src_stack: Path) -> str:
    for line in src_stack.read_text().splitlines():
        m = re.match(r"^  image:\s*(\S+)", line)
        if m:
            return m.group(1).strip("\"'")
    return "docker.io/library/busybox:latest"


def run_pod(plan: Plan, env: dict, done: set[str], busybox: Path) -> tuple[bool, str, list]:
    """Images, configs, run_pod, ip addr, stop_pod; returns (ok, ip addr, notes)."""
    notes = []
    image = pod_image(PROJECT / "stack.yaml")
    for d in (plan.work / "crio.conf.d", plan.work / "hooks.d", plan.work / "run"):
        d.mkdir(parents=True, exist_ok=True)
    say("\n== pod: local images (pause and busybox) into CRI-O's storage "
        f"(vfs, {plan.storage_root}) ==")
    problems = make_images(plan, busybox, image)
    if problems:
        return False, "", problems
    say("\n== pod: the staged configuration (config:crio, config:cni, config:policy) ==")
    code, _, _ = stack_sh(plan, env, "config:crio", "config:cni", "config:policy")
    if code != 0:
        return False, "", ["the config tasks failed"]
    done |= {"config:crio", "config:cni", "config:policy"}
    deps = deps_of(plan, env, "run_pod")
    missing = [d for d in deps or [] if d not in done and not d.startswith("check")]
    single = deps is None or bool(missing)
    if single:
        notes.append("run_pod depends on tasks this check does not run ("
                     + (", ".join(missing) if deps is not None else "doit info failed")
                     + "): ran `-s run_pod` (only the CRI-O side is built)")
    else:
        notes.append("run_pod's dependencies are all built here "
                     f"({', '.join(deps) or 'none'}): ran plain run_pod")
    pod_env = dict(env)
    # run_pod uses crio and crictl from PATH: the staged ones first
    pod_env["PATH"] = os.pathsep.join([str(plan.staged("$PREFIX/bin")), env.get("PATH", "")])
    bridge_before = Path(f"/sys/class/net/{BRIDGE}").exists()
    say("\n== pod: run_pod ==")
    started = time.monotonic()
    code, out, _ = stack_sh(plan, pod_env, "run_pod", opts=("-s",) if single else ())
    notes.append(f"run_pod took {time.monotonic() - started:.1f} s")
    ok = code == 0
    addr = ""
    if ok:
        crictl = [str(plan.staged("$PREFIX/bin/crictl")), "--runtime-endpoint",
                  f"unix://{plan.socket}", "--timeout=30s"]
        _, pods = capture(crictl + ["pods", "-q", "--label", POD_LABEL], env=pod_env)
        pod_ids = pods.split()
        _, ctrs = capture(crictl + ["ps", "-q", "--pod", pod_ids[0]], env=pod_env) \
            if pod_ids else (1, "")
        if not ctrs.split():
            ok = False
            notes.append("run_pod passed but no running container of its pod was found")
        else:
            ctr = ctrs.split()[0]
            say(f"\n== pod: ip addr show in container {ctr[:13]} (crictl exec) ==")
            code, addr, _ = run_logged(crictl + ["exec", "-s", ctr, "ip", "addr", "show"],
                                       env=pod_env)
            addr = addr.rstrip()
            ok = code == 0 and "inet " in addr
            if not ok:
                notes.append("crictl exec ip addr show failed or showed no address")
            # what runc runs: the container, and the pod's infra container unless dropped
            _, listed = capture([shutil.which("runc") or "runc", "--root",
                                 str(plan.work / "run" / "runc"), "list", "-q"])
            ran = listed.split()
            if ctr not in ran:
                ok = False
                notes.append(f"runc does not list the container {ctr[:13]}")
            notes.append(f"pod {pod_ids[0][:13]}, container {ctr[:13]}; runc runs "
                         f"{len(ran)} container(s): the container"
                         + (" and the infra container" if pod_ids[0] in ran else
                            ", no infra container"))
    say("\n== pod: stop_pod ==")
    scode, _, _ = stack_sh(plan, pod_env, "stop_pod")
    if scode != 0:
        ok = False
        notes.append("stop_pod failed")
    if not bridge_before and Path(f"/sys/class/net/{BRIDGE}").exists():
        capture(["ip", "link", "del", BRIDGE])
        notes.append(f"removed the bridge {BRIDGE} the pod's network made")
    return ok, addr, notes


def mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    return [ln.split()[1] for ln in lines if len(ln.split()) > 1 and
            (ln.split()[1] + "/").startswith(prefix)]


# --------------------------------------------------------------------------


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--mirrors", type=Path, metavar="FILE",
                     help="JSON or INI: upstream git URL -> local repository (insteadOf)")
    src.add_argument("--network", action="store_true", help="fetch from the upstreams")
    ap.add_argument("--workdir", type=Path, help="where the scratch stack, its state, the "
                    "staged install and CRI-O's storage go (default: a new temporary "
                    "folder, removed at the end if the check passed, unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary workdir")
    ap.add_argument("--components", action="append", metavar="LIST",
                    help="install targets, comma-separated (repeatable); default: "
                         + ",".join(DEFAULT_COMPONENTS))
    ap.add_argument("--pod", action="store_true",
                    help="run the runc pod end to end (root, runc, conmon, skopeo)")
    ap.add_argument("--infra", choices=("auto", "keep", "drop"), default="auto",
                    help="the pod's infra container: keep it, drop it (CRI-O's "
                         "drop_infra_ctr with a per-container PID namespace), or auto: drop "
                         "it when runc could not set its oom_score_adj (no CAP_SYS_RESOURCE)")
    ap.add_argument("--busybox", metavar="PATH",
                    help="a static busybox for the pod's image (default: /bin/busybox, "
                         "/usr/bin/busybox if static; Debian: busybox-static)")
    ap.add_argument("--go-cache", metavar="DIR",
                    help="GOCACHE for the Go builds (default: WORKDIR/go-cache, so the "
                         "times are of cold builds)")
    ap.add_argument("--stack", type=Path, default=PROJECT / "stack.yaml",
                    help="the stack file the components are taken from")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    wanted = [c.strip() for arg in (args.components or [",".join(DEFAULT_COMPONENTS)])
              for c in arg.split(",") if c.strip()]
    src = SourceStack.read(args.stack)
    targets, comps, parts = select(src, wanted)

    # preconditions, all before anything slow
    problems = []
    busybox = None
    if args.pod:
        if os.geteuid() != 0:
            problems.append("--pod needs root (CRI-O, its storage and the pod's netns)")
        for prog in ("runc", "conmon", "skopeo", "gcc", "ip"):
            if shutil.which(prog) is None:
                problems.append(f"--pod needs {prog} on PATH (Debian: apt-get install "
                                f"{'iproute2' if prog == 'ip' else prog})")
        busybox = find_busybox(args.busybox)
        if busybox is None:
            problems.append("--pod needs a static busybox: apt-get install busybox-static, or "
                            "`apt-get download busybox-static; dpkg-deb -x busybox-static_*.deb "
                            "DIR` and --busybox DIR/bin/busybox")
        missing = [c for c in POD_NEEDS if c not in targets]
        if missing:
            problems.append(f"--pod needs these components built: {', '.join(missing)}")
    mirrors = read_mirrors(args.mirrors) if args.mirrors else {}
    if mirrors:
        for name in comps:
            url = src.git(name)
            if not any(url.startswith(u) for u in mirrors):
                problems.append(f"{args.mirrors}: no mirror for {name} ({url}): "
                                "it would be fetched from the network")
    if problems:
        for p in problems:
            say(f"realstack: {p}")
        return 2

    temp = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="realstack-")) if temp else args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    drop_infra = False
    if args.pod:
        drop_infra = args.infra == "drop" or (args.infra == "auto" and not oom_adj_allowed())
    plan = Plan(work=work, stack=work / "stack.yaml", destdir=work / "destdir",
                prefix=src.prefix, targets=targets, components=comps, pod=args.pod,
                drop_infra=drop_infra)
    say.open(work / "realstack.log")
    env = insteadof_env(mirrors, os.environ)
    env["GOCACHE"] = str(Path(args.go_cache).resolve()) if args.go_cache else \
        str(work / "go-cache")

    started_at = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.gmtime()).replace("GMT", "UTC")
    say(f"realstack: {started_at}, {platform.node()}, Linux {platform.release()}, "
        f"{os.cpu_count()} CPUs, load average "
        + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    code, head = capture(["git", "-C", str(PROJECT), "describe", "--always", "--dirty"])
    say(f"project: {PROJECT} at {head if code == 0 else '?'}")
    for prog in (["go", "version"], ["gcc", "--version"], ["git", "--version"]) + (
            (["runc", "--version"], ["conmon", "--version"], ["skopeo", "--version"])
            if args.pod else ()):
        code, text = capture(prog)
        say(f"  {prog[0]}: {text.splitlines()[0] if text else '?'}")
    say(f"workdir: {work}{' (temporary)' if temp else ''}")
    say(f"install targets: {', '.join(targets)}; scratch stack components: {', '.join(comps)}")
    for name in comps:
        url = src.git(name)
        local = next((v for u, v in mirrors.items() if url.startswith(u)), None)
        say(f"  {name}: {url}" + (f" -> {local} (insteadOf)" if local else ""))
    say(f"GOCACHE={env['GOCACHE']}" + ("" if args.go_cache else " (new: cold Go builds)"))
    if args.pod:
        say(f"pod: runc, CRI-O socket {plan.socket}, storage {plan.storage_root} (vfs), "
            f"infra container {'dropped' if drop_infra else 'kept'}"
            + (" (this process may not lower oom_score_adj: no CAP_SYS_RESOURCE)"
               if drop_infra and args.infra == "auto" else ""))
        if drop_infra:
            pod_config_drop_infra(plan)
    write_stack(plan, src, parts)
    say(f"scratch stack: {plan.stack}")

    results: list[Result] = []
    failed = False
    code, _, _ = stack_sh(plan, env, "list")
    if code != 0:
        say("realstack: the scratch stack is not valid (see above)")
        return 1
    say("\n== check ==")
    code, _, _ = stack_sh(plan, env, "check")
    if code != 0:
        say("realstack: check failed: nothing is built")
        return 1

    done: set[str] = {"check"}
    patched: dict[str, float] = {}
    for target in targets:
        name = target.split("/")[0]
        res = Result(target)
        results.append(res)
        say(f"\n== {target} ==")
        if name not in patched:
            code, _, took = stack_sh(plan, env, f"patch:{name}")
            patched[name] = took
            res.fetch_s = took
            if code != 0:
                res.error = f"patch:{name} failed"
                failed = True
                continue
        code, _, took = stack_sh(plan, env, f"install:{target}")
        res.build_s = took
        res.load = " ".join(f"{v:.1f}" for v in os.getloadavg())
        if code != 0:
            res.error = f"install:{target} failed"
            failed = True
            continue
        done.add(f"install:{target}")
        if target == name:
            done |= {f"install:{name}/{p}" for p in src.parts(name)}
        res.versions = versions(plan, target)
        res.ok = not any(v.startswith("FAILED") for _, v in res.versions)
        failed = failed or not res.ok

    pod_ok, addr, notes = None, "", []
    if args.pod:
        built = {r.name for r in results if r.ok}
        if all(c in built for c in POD_NEEDS):
            pod_ok, addr, notes = run_pod(plan, env, done, busybox)
        else:
            pod_ok, notes = False, ["not run: a component it needs failed"]
        failed = failed or not pod_ok

    commits = lock_commits(plan)
    say("\n== summary ==")
    say(f"date: {started_at}; workdir {work}")
    say(f"{'component':<24} {'fetch+patch s':>13} {'build+install s':>15} "
        f"{'load after':>14}  version")
    for r in results:
        fs = f"{r.fetch_s:.1f}" if r.fetch_s is not None else "-"
        bs = f"{r.build_s:.1f}" if r.build_s is not None else "-"
        first = r.error or (r.versions[0][1].splitlines()[0] if r.versions and
                            r.versions[0][1] else "?")
        say(f"{r.name:<24} {fs:>13} {bs:>15} {r.load:>14}  {first}")
        for label, text in r.versions[1:]:
            say(f"{'':<71}{label}: {text.splitlines()[0] if text else '?'}")
    if commits:
        say("commits (scratch stack.lock): " + ", ".join(
            f"{k} {v[:12]}" for k, v in commits.items()))
    if args.pod:
        say(f"pod: {'ok' if pod_ok else 'FAILED'}")
        for n in notes:
            say(f"  {n}")
        if addr:
            say("ip addr show, in the container:")
            for line in addr.splitlines():
                say(f"  {line}")
    say(f"realstack: {'FAILED' if failed else 'passed'}")

    if temp and not args.keep and not failed:
        left = mounts_under(work)
        if left:
            say(f"realstack: not removing {work}: still mounted there: {', '.join(left)}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    elif temp:
        say(f"realstack: the workdir is kept: {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
