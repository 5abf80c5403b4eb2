"""The prerequisites catalog: what each requirement id means, what to look
for on a machine and which packages bring it (Debian/Ubuntu and Fedora).
The spec validates ``requires:`` lists against it and the host side probes
and fixes what it names, so it lives in the core, below both.

stack.yaml names requirements in ``requires:`` lists: an id from the catalog,
optionally followed by a version range (``gcc``, ``go >=1.17``,
``rust >=1.54 <1.59``), or ``!id`` for a program that must NOT be installed
(``!archivemount``).  ``parse()`` reads one entry.

Finding a requirement on this machine is ``host/prereqs/probe.py``'s, the
commands that install it ``host/prereqs/fixes.py``'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import closest

# Where distributions put virtiofsd (host/runtime.py looks there too, after
# the stack's own).
DISTRO_VIRTIOFSD = ("/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd", "/usr/lib/virtiofsd",
                    "/usr/lib/virtiofsd/virtiofsd", "/usr/libexec/kata-qemu/virtiofsd")
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
    _tool("sudo", "the merge of installs when not root and installing into the live system",
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
       files=(DISTRO_VIRTIOFSD,),
       executable=True, apt="virtiofsd", dnf="virtiofsd",
       apt_note="Debian 12: qemu-system-common", run=True),
)}

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
        hint = closest(rid.lower(), sorted(CATALOG))
        if hint:
            raise ValueError(f"unknown requirement '{rid}' (did you mean '{hint}'?)")
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
