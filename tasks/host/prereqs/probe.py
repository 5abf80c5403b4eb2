"""Finding a prerequisite on this machine.

Finding a requirement (``locate``) runs nothing: a PATH lookup and a stat, a
file or device that exists, a pkg-config ``.pc`` file (whose ``Version:``
line is the version).  Only a program's version needs a process
(``probe_version``, through the runner); steps/check.py caches it by the
program's signature so that a run with nothing to do runs none.

``KPS_CHECK_ROOT``: when set, every file and device probe (libraries,
headers, ``.pc`` files, /dev/kvm, virtiofsd, the sbin folders) looks under
that folder instead of ``/``.  Programs are still found through PATH.  It
exists for the tests, which cannot fake /dev/kvm; do not set it otherwise.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shlex
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ... import run
from ...catalog import _SBIN, CATALOG, Prereq
from ..runtime import host_root

# --------------------------------------------------------------------------
# Finding things (cheap: no subprocess)


@dataclass(frozen=True)
class Found:
    path: str | None  # the program or file found (None: missing)
    missing: tuple[str, ...]  # what was looked for and not found
    sig: str  # changes when what was found changes
    version: str | None = None  # known without running anything (.pc files)


def root_prefix() -> str:
    return host_root()


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
        result = run.query(argv, cwd=Path("/"), env=probe, check=False)
    except run.ProgramMissing:
        return {"error": f"cannot run {program}: No such file or directory", "failed": True}
    except OSError as err:
        return {"error": f"cannot run {program}: {err.strerror}", "failed": True}
    out = result.stdout.decode("utf-8", "replace")
    err = result.err
    first = next((line.strip() for line in (err + "\n" + out).splitlines() if line.strip()), "")
    if result.code != 0:
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
