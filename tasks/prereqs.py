"""The prerequisites catalog: what each requirement id means, how to find it
on this machine, and how to install it on Debian/Ubuntu and Fedora.

stack.yaml names requirements in ``requires:`` lists: an id from the catalog,
optionally followed by a version range (``gcc``, ``go >=1.17``,
``rust >=1.54 <1.59``), or ``!id`` for a program that must NOT be installed
(``!archivemount``).  ``parse()`` reads one entry; ``KNOWN`` holds the ids.

Finding a requirement (``locate``) runs nothing: a PATH lookup and a stat, a
file or device that exists, a pkg-config ``.pc`` file (whose ``Version:``
line is the version).  Only a program's version needs a subprocess
(``probe_version``); tasks/check.py caches it by the program's signature so
that a run with nothing to do runs none.

``KPS_CHECK_ROOT``: when set, every file and device probe (libraries,
headers, ``.pc`` files, /dev/kvm, virtiofsd, the sbin folders) looks under
that folder instead of ``/``.  Programs are still found through PATH.  It
exists for the tests, which cannot fake /dev/kvm; do not set it otherwise.
"""

from __future__ import annotations

import difflib
import glob
import hashlib
import os
import re
import shlex
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from . import run

ROOT_ENV = "KPS_CHECK_ROOT"
_VERSION = r"(\d+(?:\.\d+)+)"
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


@dataclass(frozen=True)
class Prereq:
    id: str
    what: str  # what it is, what needs it
    programs: tuple[str, ...] = ()  # all needed, looked up on PATH; the first is versioned
    files: tuple[tuple[str, ...], ...] = ()  # each: alternatives (globs), one must exist
    pc: str = ""  # a pkg-config module, found by its .pc file
    version: tuple[str, ...] = ()  # arguments that make programs[0] print its version
    pattern: str = _VERSION  # the version in that output (group 1)
    env: tuple[str, ...] = ()  # variables that change which version the probe reports
    probe_env: tuple[tuple[str, str], ...] = ()  # set for the version probe only
    watch: tuple[str, ...] = ()  # more paths whose change means "probe again"
    sbin: bool = False  # also look in the sbin folders (not on a user's PATH)
    executable: bool = False  # the files must be executable
    apt: str = ""  # Debian/Ubuntu packages
    dnf: str = ""  # Fedora packages
    apt_note: str = ""
    dnf_note: str = ""
    hint: str = ""  # a fix that is not a package (modprobe)
    rustup: bool = False  # a toolchain version comes from rustup
    run: bool = False  # needed to run pods, not to build: only ever a warning

    @property
    def versioned(self) -> bool:
        return bool(self.version) or bool(self.pc)


def _p(id, what, **kw) -> Prereq:
    return Prereq(id, what, **kw)


def _tool(id, what, program=None, version=("--version",), pkg=None, **kw) -> Prereq:
    """A program whose Debian and Fedora packages share its name."""
    kw.setdefault("apt", pkg or id)
    kw.setdefault("dnf", pkg or id)
    return Prereq(id, what, programs=(program or id,), version=version, **kw)


_MODPROBE = "load the module now: modprobe {mod}; at every boot: echo {mod} > " \
            "/etc/modules-load.d/{mod}.conf"

CATALOG: dict[str, Prereq] = {p.id: p for p in (
    # -- building ---------------------------------------------------------------
    _tool("git", "fetching the sources"),
    _tool("make", "the components' Makefiles", pattern=r"Make (\d+(?:\.\d+)*)"),
    _tool("gcc", "the C compiler (cgo, CRI-O's pinns, passt, QEMU, the Rust linker)",
          version=("-dumpfullversion",), pattern=r"(\d+(?:\.\d+)*)"),
    _p("libc-static", "the static C library libc.a (CRI-O's pinns links with -static)",
       files=(("/usr/lib/*-linux-gnu*/libc.a", "/usr/lib64/libc.a", "/usr/lib/libc.a"),),
       apt="libc6-dev", dnf="glibc-static"),
    _p("uapi-headers", "the Linux kernel UAPI headers (passt's seccomp.sh)",
       files=(("/usr/include/linux/audit.h",),
              ("/usr/include/asm/unistd.h", "/usr/include/*-linux-gnu*/asm/unistd.h")),
       apt="linux-libc-dev", dnf="kernel-headers"),
    _tool("go", "the Go toolchain", version=("version",), pattern=r"go(\d+\.\d+(?:\.\d+)?)",
          env=("GOTOOLCHAIN", "GOROOT"), apt="golang-go", dnf="golang"),
    _p("rust", "the Rust toolchain (rustc and cargo)", programs=("rustc", "cargo"),
       version=("--version",), pattern=r"rustc (\d+\.\d+\.\d+)",
       env=("RUSTUP_TOOLCHAIN", "RUSTUP_HOME"), probe_env=(("RUSTUP_AUTO_INSTALL", "0"),),
       watch=("{RUSTUP_HOME}/toolchains", "{RUSTUP_HOME}/settings.toml"),
       apt="rustup", dnf="rustup", rustup=True,
       apt_note="Debian 13, Ubuntu 24.04; elsewhere see https://rustup.rs",
       dnf_note="then run rustup-init"),
    _tool("pkg-config", "finding C libraries (QEMU's configure)", dnf="pkgconf-pkg-config"),
    _tool("ninja", "QEMU's build", pkg="ninja-build"),
    _tool("meson", "meson builds (QEMU brings its own copy)"),
    _tool("python3", "QEMU's configure and build scripts", pattern=r"Python (\d+(?:\.\d+)+)"),
    _p("glib-dev", "GLib development files (QEMU)", pc="glib-2.0",
       apt="libglib2.0-dev", dnf="glib2-devel"),
    _p("pixman-dev", "pixman development files (QEMU)", pc="pixman-1",
       apt="libpixman-1-dev", dnf="pixman-devel"),
    _p("libcap-ng-dev", "libcap-ng development files (QEMU's virtfs and virtiofsd)",
       pc="libcap-ng", apt="libcap-ng-dev", dnf="libcap-ng-devel"),
    _p("libseccomp-dev", "libseccomp development files (QEMU's virtiofsd; the agent with "
       "SECCOMP=yes)", pc="libseccomp", apt="libseccomp-dev", dnf="libseccomp-devel"),
    _p("libattr-dev", "libattr development files (only where glibc lacks xattr support)",
       files=(("/usr/include/attr/libattr.h",),), apt="libattr1-dev", dnf="libattr-devel"),
    # -- building the VM image (mbuto's TOOLS) ------------------------------------
    _tool("cpio", "packing the image (mbuto)"),
    _p("kmod", "modprobe and depmod (mbuto adds kernel modules)", programs=("modprobe", "depmod"),
       version=("--version",), pattern=r"version (\d+(?:\.\d+)*)", sbin=True,
       apt="kmod", dnf="kmod"),
    _tool("file", "mbuto's tool check", version=()),
    _tool("bc", "mbuto's tool check", version=()),
    _tool("wget", "mbuto's tool check", version=()),
    _tool("strip", "stripping binaries in the image (mbuto)", version=(), pkg="binutils"),
    _tool("which", "mbuto finds the programs it adds with which", version=(),
          apt="debianutils"),
    _tool("fakeroot", "mbuto re-runs itself under fakeroot when not root", version=()),
    _tool("archivemount", "mbuto keeps a gzip'd cpio FUSE-mounted when run as root with it",
          version=()),
    _tool("lz4", "image compression lz4", version=("-V",), pattern=r"v(\d+(?:\.\d+)+)"),
    _tool("gzip", "image compression gzip", version=()),
    _tool("xz", "image compression lzma", version=(), apt="xz-utils"),
    _tool("lzop", "image compression lzo", version=()),
    # -- installing -----------------------------------------------------------------
    _tool("sudo", "install commands when not root and installing into the live system",
          version=()),
    # -- running pods ----------------------------------------------------------------
    _tool("runc", "CRI-O's default runtime: crio will not start without it", run=True),
    _tool("conmon", "CRI-O's container monitor: crio will not start without it", run=True),
    _p("kvm", "/dev/kvm: hardware virtualization for the Kata VMs", files=(("/dev/kvm",),),
       hint="load the module: modprobe kvm_intel (or kvm_amd); enable virtualization in "
            "the firmware, or nested virtualization when this is a VM", run=True),
    _p("vhost-vsock", "/dev/vhost-vsock: the Kata agent's channel to the VM",
       files=(("/dev/vhost-vsock",),), hint=_MODPROBE.format(mod="vhost_vsock"), run=True),
    _p("virtiofsd", "shares the container's files with the Kata VM",
       files=(("/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd", "/usr/lib/virtiofsd",
               "/usr/lib/virtiofsd/virtiofsd", "/usr/libexec/kata-qemu/virtiofsd"),),
       executable=True, apt="virtiofsd", dnf="virtiofsd",
       apt_note="Debian 12: qemu-system-common", run=True),
)}

KNOWN = frozenset(CATALOG)


# --------------------------------------------------------------------------
# Entries and version ranges

_ENTRY_RE = re.compile(r"^(!?)([A-Za-z0-9][A-Za-z0-9._+-]*)\s*(.*)$")
_BOUND_RE = re.compile(r"^(>=|<=|==|>|<)(\d+(?:\.\d+)*)$")


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def _pad(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    n = max(len(a), len(b))
    return a + (0,) * (n - len(a)), b + (0,) * (n - len(b))


@dataclass(frozen=True)
class Range:
    """Version bounds, all of which must hold; or "must be absent"."""

    bounds: tuple[tuple[str, str], ...] = ()  # (operator, version as written)
    absent: bool = False

    def __str__(self) -> str:
        if self.absent:
            return "absent"
        return " ".join(op + v for op, v in self.bounds) or "any"

    def verdict(self, version: str) -> str | None:
        """None when ``version`` fits, else ``TOO OLD`` or ``TOO NEW``."""
        found = version_tuple(version)
        for op, text in self.bounds:
            want = version_tuple(text)
            if op == "==":
                if found[:len(want)] != want:
                    return "TOO OLD" if found < want else "TOO NEW"
                continue
            a, b = _pad(found, want)
            ok = {">=": a >= b, ">": a > b, "<=": a <= b, "<": a < b}[op]
            if not ok:
                return "TOO OLD" if op in (">=", ">") else "TOO NEW"
        return None

    def upper(self) -> tuple[str, str] | None:
        return next(((op, v) for op, v in self.bounds if op in ("<", "<=", "==")), None)

    def lower(self) -> tuple[str, str] | None:
        return next(((op, v) for op, v in self.bounds if op in (">=", ">", "==")), None)


def parse(entry) -> tuple[str, Range]:
    """``"rust >=1.54 <1.59"`` -> ``("rust", Range(...))``; ValueError saying
    what is wrong otherwise."""
    if not isinstance(entry, str) or not entry.strip():
        raise ValueError("empty requirement: write an id such as 'gcc' or 'go >=1.17'")
    m = _ENTRY_RE.match(entry.strip())
    if not m:
        raise ValueError(f"not a requirement: {entry!r} (write an id such as 'gcc' or "
                         "'go >=1.17')")
    bang, rid, rest = m.groups()
    if rid not in CATALOG:
        hint = difflib.get_close_matches(rid.lower(), sorted(CATALOG), n=1, cutoff=0.6)
        if hint:
            raise ValueError(f"unknown requirement '{rid}' (did you mean '{hint[0]}'?)")
        raise ValueError(f"unknown requirement '{rid}'; known: {', '.join(sorted(CATALOG))}")
    p = CATALOG[rid]
    rest = re.sub(r"(>=|<=|==|>|<)\s+", r"\1", rest)
    bounds = []
    for token in (t for t in re.split(r"[\s,]+", rest) if t):
        b = _BOUND_RE.match(token)
        if not b:
            raise ValueError(f"{rid}: '{token}' is not a version bound "
                             "(write e.g. >=1.16, <1.59 or ==1.58)")
        bounds.append((b.group(1), b.group(2)))
    if bang:
        if not p.programs:
            raise ValueError(f"'!{rid}': only a program can be required to be absent")
        if bounds:
            raise ValueError(f"'!{rid}': a program that must be absent has no version range")
        return rid, Range(absent=True)
    if bounds and not p.versioned:
        raise ValueError(f"'{rid}' has no version to compare (drop '{rest.strip()}')")
    return rid, Range(tuple(bounds))


def problems(entries) -> list[tuple[int, str]]:
    """(index, message) for each entry of a ``requires`` list that is wrong."""
    out = []
    for i, entry in enumerate(entries):
        try:
            parse(entry)
        except ValueError as err:
            out.append((i, str(err)))
    return out


# --------------------------------------------------------------------------
# Finding things (cheap: no subprocess)


@dataclass(frozen=True)
class Found:
    path: str | None  # the program or file found (None: missing)
    missing: tuple[str, ...]  # what was looked for and not found
    sig: str  # changes when what was found changes
    version: str | None = None  # known without running anything (.pc files)


def root_prefix() -> str:
    return os.environ.get(ROOT_ENV, "").rstrip("/")


def _stat_sig(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "-"
    raw = f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    return hashlib.blake2b(raw.encode(), digest_size=4).hexdigest()


def _watch_sig(path: str) -> str:
    """A folder by its entries (rustup's toolchains: exact, whatever the
    timestamp granularity), a file by its stat."""
    try:
        names = sorted(os.listdir(path))
    except NotADirectoryError:
        return _stat_sig(path)
    except OSError:
        return "-"
    return hashlib.blake2b("/".join(names).encode(), digest_size=4).hexdigest()


def _expand(pattern: str, memo: dict) -> list[str]:
    """The paths a glob matches (memoized for one snapshot)."""
    if not glob.has_magic(pattern):
        return [pattern] if os.path.lexists(pattern) else []
    key = ("glob", pattern)
    if key not in memo:
        memo[key] = sorted(glob.glob(pattern))
    return memo[key]


def _first(patterns, root: str, memo: dict, executable: bool = False) -> str | None:
    for pattern in patterns:
        for path in _expand(root + pattern, memo):
            if not executable or (os.path.isfile(path) and os.access(path, os.X_OK)):
                return path
    return None


def _which(name: str, path: str, memo: dict) -> str | None:
    """shutil.which(), with one stat per folder (it is on the no-op path)."""
    key = ("which", name, path)
    if key not in memo:
        memo[key] = None
        for folder in path.split(os.pathsep):
            candidate = os.path.join(folder or ".", name)
            try:
                st = os.stat(candidate)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and os.access(candidate, os.X_OK):
                memo[key] = candidate
                break
    return memo[key]


def _pc_dirs(env: Mapping[str, str]) -> list[str]:
    dirs = [d for d in env.get("PKG_CONFIG_PATH", "").split(":") if d]
    libdir = env.get("PKG_CONFIG_LIBDIR")
    if libdir is not None:
        dirs += [d for d in libdir.split(":") if d]
    else:
        dirs += ["/usr/local/lib/*-linux-gnu*/pkgconfig", "/usr/local/lib64/pkgconfig",
                 "/usr/local/lib/pkgconfig", "/usr/local/share/pkgconfig",
                 "/usr/lib/*-linux-gnu*/pkgconfig", "/usr/lib64/pkgconfig", "/usr/lib/pkgconfig",
                 "/usr/share/pkgconfig"]
    return dirs


def pc_version(path: str) -> str | None:
    """The ``Version:`` of a .pc file, its ``${variables}`` expanded."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return None
    variables: dict[str, str] = {}

    def expand(value: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: variables.get(m.group(1), ""), value)

    for line in text.splitlines():
        line = line.strip()
        if re.match(r"^\w+=", line):
            name, _, value = line.partition("=")
            variables[name] = expand(value.strip())
        elif line.startswith("Version:"):
            m = re.search(r"\d+(?:\.\d+)*", expand(line[len("Version:"):]))
            return m.group(0) if m else None
    return None


def expand_watch(p: Prereq, env: Mapping[str, str]) -> list[str]:
    values = {"RUSTUP_HOME": env.get("RUSTUP_HOME")
              or os.path.join(env.get("HOME", os.path.expanduser("~")), ".rustup")}
    return [w.format(**values) for w in p.watch]


def locate(p: Prereq, env: Mapping[str, str], memo: dict | None = None) -> Found:
    """Find ``p`` with the PATH and variables of ``env``; runs nothing.
    ``memo`` shares PATH lookups and folder listings between calls."""
    memo = {} if memo is None else memo
    root = root_prefix()
    sig: list[str] = []
    missing: list[str] = []
    first: str | None = None
    version = None
    if p.programs:
        path = env.get("PATH", os.defpath)
        if p.sbin:
            path = os.pathsep.join([path] + [root + d for d in _SBIN])
        for name in p.programs:
            where = _which(name, path, memo)
            if where is None:
                missing.append(name)
                sig.append(f"{name}:-")
            else:
                first = first or where
                sig.append(f"{where}#{_stat_sig(where)}")
    for group in p.files:
        where = _first(group, root, memo, p.executable)
        if where is None:
            missing.append(" or ".join(group))
            sig.append("-")
        else:
            first = first or where
            sig.append(where)
    if p.pc:
        where = _first([f"{d}/{p.pc}.pc" for d in _pc_dirs(env)], root, memo)
        if where is None:
            missing.append(f"{p.pc}.pc")
            sig.append("-")
        else:
            first = where
            version = pc_version(where)
            sig.append(f"{where}#{_stat_sig(where)}")
    for name in p.env:
        if env.get(name):
            sig.append(f"{name}={env[name]}")
    for path in expand_watch(p, env):
        sig.append(f"{path}#{_watch_sig(path)}")
    return Found(first if not missing else None, tuple(missing), " ".join(sig), version)


# --------------------------------------------------------------------------
# Versions (a subprocess: cached by the caller)


def probe_version(p: Prereq, program: str, env: Mapping[str, str]) -> dict:
    """``{"version": "1.19.8"}``, or ``{"error": why, "failed": bool}`` where
    ``failed`` means the program itself failed (not just an unknown format)."""
    argv = [program, *p.version]
    shown = shlex.join([os.path.basename(program), *p.version])
    probe = {k: env[k] for k in p.env if env.get(k)}
    if "PATH" in env:
        probe["PATH"] = env["PATH"]
    probe.update(p.probe_env)
    probe["LC_ALL"] = "C"
    if p.rustup:
        missing = _missing_rustup_toolchain(program, env)
        if missing:
            return {"error": f"rustup toolchain '{missing}' is not installed", "failed": True}
    try:
        result = run.capture_result(argv, cwd=Path("/"), env=probe)
    except OSError as err:
        return {"error": f"cannot run {program}: {err.strerror}", "failed": True}
    out = result.stdout.decode("utf-8", "replace")
    err = result.stderr.decode("utf-8", "replace")
    first = next((line.strip() for line in (err + "\n" + out).splitlines() if line.strip()), "")
    if result.returncode != 0:
        return {"error": f"'{shown}' failed: {first[:120]}", "failed": True}
    m = re.search(p.pattern, out + "\n" + err)
    if not m:
        return {"error": f"no version in the output of '{shown}'", "failed": False}
    return {"version": m.group(1)}


def _missing_rustup_toolchain(program: str, env: Mapping[str, str]) -> str | None:
    """The toolchain RUSTUP_TOOLCHAIN names when ``program`` is a rustup proxy
    and that toolchain is not installed: asked, the proxy could download it."""
    name = env.get("RUSTUP_TOOLCHAIN")
    rustup = os.path.join(os.path.dirname(program), "rustup")
    try:
        if not name or not os.path.samefile(program, rustup):
            return None
    except OSError:
        return None
    home = expand_watch(CATALOG["rust"], env)[0]  # <RUSTUP_HOME>/toolchains
    if "/" in name or glob.glob(os.path.join(glob.escape(home), glob.escape(name))) \
            or glob.glob(os.path.join(glob.escape(home), glob.escape(name) + "-*")):
        return None
    return name


# --------------------------------------------------------------------------
# How to fix it


def rustup_toolchain(rng: Range, env: Mapping[str, str]) -> str:
    """The toolchain to install: RUSTUP_TOOLCHAIN, else one that fits."""
    if env.get("RUSTUP_TOOLCHAIN"):
        return env["RUSTUP_TOOLCHAIN"]
    upper = rng.upper()
    if upper:
        op, text = upper
        v = version_tuple(text)
        if op in ("<=", "=="):
            return text
        if len(v) >= 2 and v[-1] > 0:
            return ".".join(map(str, v[:-1] + (v[-1] - 1,)))
    lower = rng.lower()
    if lower:
        return lower[1]
    return "stable"


def fixes(p: Prereq, rng: Range, env: Mapping[str, str], sudo: str = "") -> list[tuple[str, str]]:
    """(where, command) lines that fix ``p`` for ``rng``."""
    if rng.absent:
        return [("Debian/Ubuntu", f"{sudo}apt-get remove {p.apt}"),
                ("Fedora", f"{sudo}dnf remove {p.dnf}")]
    out = []
    if p.rustup:
        toolchain = rustup_toolchain(rng, env)
        line = f"rustup toolchain install {toolchain}"
        if not env.get("RUSTUP_TOOLCHAIN") and rng.bounds:
            line += f"  # and RUSTUP_TOOLCHAIN: \"{toolchain}\" in the part's env"
        out.append(("rustup", line))
    if p.apt:
        note = f"  # {p.apt_note}" if p.apt_note else ""
        out.append(("Debian/Ubuntu", f"{sudo}apt-get install {p.apt}{note}"))
    if p.dnf:
        note = f"  # {p.dnf_note}" if p.dnf_note else ""
        out.append(("Fedora", f"{sudo}dnf install {p.dnf}{note}"))
    if p.hint:
        out.append(("fix", p.hint))
    return out
