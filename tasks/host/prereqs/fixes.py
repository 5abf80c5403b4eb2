"""How to install a prerequisite on this host: the package commands for
Debian/Ubuntu and Fedora, a rustup toolchain that fits a version range, or
a fix that is not a package (modprobe), from the catalog's entries."""

from __future__ import annotations

from collections.abc import Mapping

from ...catalog import Prereq, Range, version_tuple


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
