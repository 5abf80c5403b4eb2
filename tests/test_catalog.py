"""tasks/catalog.py: the prerequisites catalog, the requirement entries of
stack.yaml (``gcc``, ``go >=1.17``, ``!archivemount``) and version ranges."""

from __future__ import annotations

import pytest

from tasks import catalog
from tasks.catalog import Range, parse


@pytest.mark.parametrize("entry, rid, text", [
    ("gcc", "gcc", "any"),
    ("go >=1.16", "go", ">=1.16"),
    ("go>=1.16", "go", ">=1.16"),
    ("rust >=1.54 <1.59", "rust", ">=1.54 <1.59"),
    ("rust >= 1.54, < 1.59", "rust", ">=1.54 <1.59"),
    ("python3 ==3.11", "python3", "==3.11"),
    ("glib-dev >=2.56", "glib-dev", ">=2.56"),
    ("!archivemount", "archivemount", "absent"),
])
def test_parse_valid(entry, rid, text):
    got, rng = parse(entry)
    assert got == rid and str(rng) == text


@pytest.mark.parametrize("entry, message", [
    ("libseccomp", "unknown requirement 'libseccomp' (did you mean 'libseccomp-dev'?)"),
    ("Go >=1.16", "unknown requirement 'Go' (did you mean 'go'?)"),
    ("frobnicator", "unknown requirement 'frobnicator'; known: archivemount, bc,"),
    ("go 1.16", "'1.16' is not a version bound"),
    ("go >=1.x", "'>=1.x' is not a version bound"),
    ("kvm >=1", "'kvm' has no version to compare"),
    ("!kvm", "only a program can be required to be absent"),
    ("!archivemount >=1", "has no version range"),
    ("", "empty requirement"),
])
def test_parse_invalid(entry, message):
    with pytest.raises(ValueError) as info:
        parse(entry)
    assert message in str(info.value)
    assert catalog.problems(["gcc", entry]) == [(1, str(info.value))]


@pytest.mark.parametrize("bounds, version, verdict", [
    ((">=", "1.16"), "1.19.8", None),
    ((">=", "1.16"), "1.16", None),
    ((">=", "1.16.10"), "1.16", "TOO OLD"),
    ((">=", "1.16"), "1.15.15", "TOO OLD"),
    (("<", "1.59"), "1.58.1", None),
    (("<", "1.59"), "1.59.0", "TOO NEW"),
    (("<", "1.59"), "1.100.0", "TOO NEW"),  # numeric, not text
    (("<=", "1.58"), "1.58.0", None),
    (("==", "1.58"), "1.58.1", None),
    (("==", "1.58"), "1.57.9", "TOO OLD"),
    ((">", "2"), "2.0.1", None),
])
def test_range_compares_numerically(bounds, version, verdict):
    assert Range((bounds,)).verdict(version) == verdict


def test_catalog_has_install_commands_for_every_package_requirement():
    for p in catalog.CATALOG.values():
        assert p.what
        if p.id in ("kvm", "vhost-vsock"):
            assert p.hint and "modprobe" in p.hint
        else:
            assert p.apt and p.dnf, p.id
    assert {"git", "make", "gcc", "libc-static", "go", "rust", "pkg-config", "ninja", "meson",
            "python3", "glib-dev", "pixman-dev", "libcap-ng-dev", "libseccomp-dev",
            "libattr-dev", "uapi-headers", "cpio", "kmod", "file", "bc", "fakeroot", "wget",
            "strip", "runc", "conmon", "kvm", "vhost-vsock", "virtiofsd", "sudo",
            "archivemount", "lz4"} <= set(catalog.CATALOG)
