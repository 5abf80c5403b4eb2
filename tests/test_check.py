"""doit check: the prerequisites report, through doit and at the function level.

Programs are faked by small shell scripts in tmp_path put on a PATH that
holds nothing else but links to the few real tools the fixture builds use;
files and devices (libc.a, .pc files, /dev/kvm) live under a fake root named
by KPS_CHECK_ROOT.  Nothing on the real system is read for a verdict.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tasks.catalog import Range
from tasks.host.prereqs import fixes
from tasks.spec import load_stack
from tasks.steps import check
from tasks.workspace import Workspace

# Real programs the fixture builds need (make recipes, git, the shell).
BASE_TOOLS = ("git", "make", "sh", "mkdir", "sed", "chmod", "install", "cat", "cp", "rm")

GO = "go version go1.19.8 linux/amd64"
RUSTC = "rustc 1.58.1 (db9d1b20b 2022-01-20)"
CARGO = "cargo 1.58.0 (f01b232bc 2022-01-19)"


class Tools:
    """Fake programs, a PATH made of them, and a fake root for files."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.base = tmp_path / "base-bin"
        self.base.mkdir()
        for name in BASE_TOOLS:
            real = shutil.which(name)
            assert real, f"the tests need {name}"
            (self.base / name).symlink_to(real)
        self.root = tmp_path / "sysroot"
        self.root.mkdir()

    def bin(self, folder: str, **programs: str) -> Path:
        """A folder of fake programs: name=output (``_`` in a name is ``-``)."""
        path = self.tmp / folder
        path.mkdir(exist_ok=True)
        for name, output in programs.items():
            self.fake(path / name.replace("_", "-"), output)
        return path

    @staticmethod
    def fake(path: Path, output: str, log: Path | None = None) -> None:
        script = "#!/bin/sh\n"
        if log:
            script += f"echo run >> '{log}'\n"
        script += f"cat <<'EOF'\n{output}\nEOF\n"
        path.write_text(script)
        path.chmod(0o755)

    def file(self, path: str, text: str = "") -> Path:
        target = Path(str(self.root) + path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return target

    def env(self, *folders: Path) -> dict[str, str]:
        return {"PATH": os.pathsep.join([*(str(f) for f in folders), str(self.base)]),
                "KPS_CHECK_ROOT": str(self.root)}


@pytest.fixture
def tools(tmp_path) -> Tools:
    return Tools(tmp_path)


STACK = """\
alpha:
  git: {alpha}
  ref: v1
  requires: [gcc, go >=1.16, libc-static]
  build: make
  artifacts: [bin/alpha]
  install: make install
  installs: [$PREFIX/bin/alpha]
gamma:
  git: {gamma}
  ref: v1
  requires: [make]
  parts:
    one:
      requires: [rust >=1.54 <1.59]
      build: make one
      artifacts: [one.out]
    two:
      requires: [runc, kvm]
      build: make two
      artifacts: [two.out]
"""


@pytest.fixture
def stack(project, tools) -> tuple:
    """alpha + gamma (two parts) declaring requires; everything present."""
    project.write_stack(STACK.format(alpha=project.up.alpha(), gamma=project.up.gamma()))
    tools.file("/usr/lib64/libc.a")
    tools.file("/dev/kvm")
    good = tools.bin("good", go=GO, gcc="12.2.0", rustc=RUSTC, cargo=CARGO, runc="runc 1.1.5")
    return project, tools, good


def after(text: str, marker: str) -> str:
    assert marker in text, text
    return text[text.index(marker):]


# --------------------------------------------------------------------------
# Through doit


def test_all_present_passes_builds_after_it_and_is_then_up_to_date(stack):
    project, tools, good = stack
    res = project.doit(env=tools.env(good))
    assert res.ran[0] == "check"
    assert {"build:alpha", "build:gamma/one", "build:gamma/two"} <= set(res.ran)
    assert "0 problem(s), 0 warning(s)" in res.err
    lines = res.err.splitlines()
    go = next(line for line in lines if " go " in line)
    assert go.split()[0] == "ok" and "1.19.8" in go and ">=1.16" in go and "alpha" in go
    rust = next(line for line in lines if " rust " in line)
    assert rust.split()[0] == "ok" and "1.58.1" in rust and ">=1.54 <1.59" in rust
    assert "gamma/one" in rust
    assert any(line.split()[:2] == ["ok", "kvm"] for line in lines)
    assert any(line.split()[:2] == ["ok", "libc-static"] for line in lines)

    again = project.doit(env=tools.env(good))
    assert again.ran == []
    assert "check" in again.uptodate


def test_missing_tool_fails_before_any_build_and_says_how_to_install(stack):
    project, tools, _ = stack
    partial = tools.bin("partial", gcc="12.2.0", rustc=RUSTC, cargo=CARGO, runc="runc 1.1.5")
    res = project.doit(env=tools.env(partial), expect=None)
    assert res.code != 0
    assert "check" in res.ran
    assert not [t for t in res.ran if t.startswith(("build:", "install:"))]
    assert not (project.src("alpha") / "bin").exists()
    # The report, with both install commands under the missing line ...
    report = after(res.err, "MISSING  go")
    assert "apt-get install golang-go" in report and "dnf install golang" in report
    # ... and the failure at the end of doit's output names it again.
    failed = after(res.out, "TaskFailed")
    assert "go >=1.16: MISSING" in failed and "for alpha" in failed
    assert "Debian/Ubuntu: apt-get install golang-go" in failed
    assert "Fedora:        dnf install golang" in failed
    assert "gcc" not in failed  # what is there is not listed as a problem

    # Asked for one build, doit checks first (build:* depends on check).
    res = project.doit("build:alpha", env=tools.env(partial), expect=None)
    assert res.code != 0 and res.ran == ["check"]


def test_too_old_and_too_new_versions_fail(stack):
    project, tools, _ = stack
    old_new = tools.bin("old-new", go="go version go1.15.2 linux/amd64", gcc="12.2.0",
                        rustc="rustc 1.60.0 (7737e0b5c 2022-04-04)", cargo=CARGO, runc="x")
    res = project.doit("check", env=tools.env(old_new), expect=None)
    assert res.code != 0
    failed = after(res.out, "TaskFailed")
    assert "go >=1.16: TOO OLD" in failed and "1.15.2" in failed
    assert "rust >=1.54 <1.59: TOO NEW" in failed and "1.60.0" in failed
    assert "rustup toolchain install 1.58" in failed
    assert "apt-get install golang-go" in failed


def test_replacing_a_program_reruns_the_check(stack):
    project, tools, good = stack
    project.doit("check", env=tools.env(good))
    assert "check" in project.doit("check", env=tools.env(good)).uptodate
    tools.fake(good / "go", "go version go1.15 linux/amd64")  # an older go, same path
    res = project.doit("check", env=tools.env(good), expect=None)
    assert res.code != 0 and "check" in res.ran
    assert "go >=1.16: TOO OLD" in after(res.out, "TaskFailed")
    assert "/go 1.15, wanted >=1.16" in after(res.out, "TaskFailed")


def test_warning_only_item_does_not_fail_and_a_path_change_reruns_check(stack):
    project, tools, _ = stack
    no_runc = tools.bin("no-runc", go=GO, gcc="12.2.0", rustc=RUSTC, cargo=CARGO)
    res = project.doit("check", env=tools.env(no_runc))
    runc = next(line for line in res.err.splitlines() if " runc " in line)
    assert runc.split()[0] == "warn" and "missing" in runc and "to run pods" in runc
    assert "apt-get install runc" in after(res.err, runc)
    assert "1 warning(s)" in res.err
    assert "check" in project.doit("check", env=tools.env(no_runc)).uptodate

    extra = tools.bin("extra", runc="runc version 1.1.5")
    res = project.doit("check", env=tools.env(extra, no_runc))
    assert "check" in res.ran
    runc = next(line for line in res.err.splitlines() if " runc " in line)
    assert runc.split()[0] == "ok" and str(extra / "runc") in runc


def test_a_file_appearing_reruns_check(stack):
    project, tools, good = stack
    (tools.root / "usr/lib64/libc.a").unlink()
    res = project.doit("check", env=tools.env(good), expect=None)
    failed = after(res.out, "TaskFailed")
    assert "libc-static: MISSING" in failed
    assert "apt-get install libc6-dev" in failed and "dnf install glibc-static" in failed
    tools.file("/usr/lib64/libc.a")
    res = project.doit("check", env=tools.env(good))
    assert "check" in res.ran and "0 problem(s)" in res.err


@pytest.mark.skipif(os.geteuid() != 0, reason="archivemount matters only when run as root")
def test_program_that_must_be_absent(project, tools):
    gamma = project.up.gamma()
    project.write_stack(f"mbuto:\n  git: {gamma}\n  ref: v1\n")
    with open(project.stack_file, "a") as f:
        f.write("image:\n  builder: mbuto\n  compression: lz4\n")
    image_tools = tools.bin("image-tools", cpio="cpio (GNU cpio) 2.13",
                            modprobe="kmod version 30", depmod="kmod version 30", file="",
                            bc="", wget="", strip="", which="", lz4="v1.9.4")
    bad = tools.bin("bad", archivemount="archivemount version 0.9.1")
    res = project.doit("check", env=tools.env(bad, image_tools), expect=None)
    assert res.code != 0
    line = next(x for x in res.err.splitlines() if "archivemount" in x)
    assert line.split()[0] == "PRESENT-BUT-MUST-NOT-BE" and "absent" in line
    failed = after(res.out, "TaskFailed")
    assert "!archivemount: PRESENT-BUT-MUST-NOT-BE" in failed
    assert "apt-get remove archivemount" in failed and "dnf remove archivemount" in failed

    res = project.doit("check", env=tools.env(image_tools))
    assert "check" in res.ran and "0 problem(s)" in res.err


def test_unknown_requirement_is_an_error(project, tools):
    project.write_stack(f"gamma:\n  git: {project.up.gamma()}\n  ref: v1\n"
                        "  requires: [gcc-dev]\n")
    res = project.doit("check", env=tools.env(), expect=None)
    assert res.code != 0
    assert "unknown requirement 'gcc-dev'" in res.text


# --------------------------------------------------------------------------
# Function level


def workspace(project, components: str, sections: str = "") -> Workspace:
    project.write_stack(components)
    if sections:
        with open(project.stack_file, "a") as f:
            f.write(sections)
    return Workspace(load_stack(project.stack_file, project=project.root))


def results(ws: Workspace, **kw) -> dict[str, check.Result]:
    return {r.need.label: r for r in check.evaluate(ws, check.snapshot(ws, **kw))}


def test_pkg_config_module_version_comes_from_its_pc_file(project, tools, monkeypatch):
    monkeypatch.setenv("KPS_CHECK_ROOT", str(tools.root))
    monkeypatch.delenv("PKG_CONFIG_PATH", raising=False)
    monkeypatch.delenv("PKG_CONFIG_LIBDIR", raising=False)
    ws = workspace(project, "qemu:\n  git: ./q\n  ref: v1\n"
                            "  requires: [glib-dev >=2.56, pixman-dev]\n")
    tools.file("/usr/lib/x86_64-linux-gnu/pkgconfig/glib-2.0.pc",
               "prefix=/usr\nmajor=2\nName: GLib\nVersion: ${major}.50.3\n")
    got = results(ws)
    assert got["glib-dev >=2.56"].status == "TOO OLD"
    assert got["glib-dev >=2.56"].found.endswith("glib-2.0.pc 2.50.3")
    assert got["pixman-dev"].status == "MISSING"
    assert got["pixman-dev"].found == "no pixman-1.pc"


def test_devices_and_files_are_looked_up_under_the_check_root(project, tools, monkeypatch):
    monkeypatch.setenv("KPS_CHECK_ROOT", str(tools.root))
    ws = workspace(project, "k:\n  git: ./k\n  ref: v1\n"
                            "  requires: [kvm, vhost-vsock, uapi-headers]\n")
    tools.file("/dev/kvm")
    tools.file("/usr/include/linux/audit.h")
    got = results(ws)
    assert got["kvm"].status == "ok" and got["kvm"].found == str(tools.root) + "/dev/kvm"
    # Run-time items are warnings, not failures.
    assert got["vhost-vsock"].status == "warn" and got["vhost-vsock"].problem == "MISSING"
    assert not got["vhost-vsock"].need.required
    assert got["uapi-headers"].status == "MISSING"
    assert "asm/unistd.h" in got["uapi-headers"].found
    tools.file("/usr/include/x86_64-linux-gnu/asm/unistd.h")
    assert results(ws)["uapi-headers"].status == "ok"


def test_which_requirements_apply(project, tools, monkeypatch):
    monkeypatch.setenv("KPS_CHECK_ROOT", str(tools.root))
    (project.root / "pod.json").write_text("{}")
    ws = workspace(project, "mbuto:\n  git: ./m\n  ref: v1\n",
                   "image:\n  builder: mbuto\n  compression: lzma\n"
                   "pod:\n  pod_config: pod.json\n  container_config: pod.json\n")

    def table(**kw):
        return {n.label: (n.required, n.why) for n in check.collect(ws, **kw)}

    as_root = table(euid=0, needs_sudo=False)
    assert as_root["git"] == (True, ("fetch",))
    for tool in ("cpio", "kmod", "file", "bc", "make", "wget", "strip", "xz", "!archivemount"):
        assert as_root[tool] == (True, ("image (mbuto)",)), tool
    assert "fakeroot" not in as_root and "sudo" not in as_root
    for tool in ("runc", "conmon", "kvm", "vhost-vsock", "virtiofsd"):
        assert as_root[tool] == (False, ("pod",)), tool

    as_user = table(euid=1000, needs_sudo=True)
    assert as_user["fakeroot"][0] and "!archivemount" not in as_user
    assert as_user["sudo"] == (True, ("install",))


def test_requirements_are_grouped_and_keep_the_parts_env(project):
    ws = workspace(project, """\
        a:
          git: ./a
          ref: v1
          requires: [go >=1.16, make]
        b:
          git: ./b
          ref: v1
          requires: [go >=1.16, go >=1.17]
          env: {GOTOOLCHAIN: local}
        """)
    needs = {n.label: n.why for n in check.collect(ws, euid=0, needs_sudo=False)}
    assert needs == {"git": ("fetch",), "go >=1.16": ("a",), "make": ("a",),
                     "go [GOTOOLCHAIN=local] >=1.16": ("b",),
                     "go [GOTOOLCHAIN=local] >=1.17": ("b",)}


def test_a_run_time_program_the_stack_installs_counts_as_found(project, tools, monkeypatch):
    monkeypatch.setenv("KPS_CHECK_ROOT", str(tools.root))
    ws = workspace(project, """\
        qemu:
          git: ./q
          ref: v1
          installs: [$PREFIX/libexec/virtiofsd]
        kata:
          git: ./k
          ref: v1
          requires: [virtiofsd]
        """)
    got = results(ws)["virtiofsd"]
    assert got.status == "ok" and got.found == "qemu installs /usr/local/libexec/virtiofsd"


def test_versions_are_probed_once_and_again_when_the_program_changes(project, tools,
                                                                     monkeypatch):
    calls = tools.tmp / "calls"
    bin_ = tools.tmp / "counting"
    bin_.mkdir()
    tools.fake(bin_ / "go", GO, log=calls)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{tools.base}")
    ws = workspace(project, "a:\n  git: ./a\n  ref: v1\n  requires: [go >=1.16]\n")

    key = check.check_key(ws)  # doit's up-to-date test runs nothing
    assert not calls.exists()
    assert results(ws)["go >=1.16"].found == f"{bin_}/go 1.19.8"
    assert calls.read_text() == "run\n"
    assert results(ws)["go >=1.16"].status == "ok"
    assert calls.read_text() == "run\n"  # cached by the program's signature
    assert check.check_key(ws) == key

    tools.fake(bin_ / "go", "go version go1.15 linux/amd64", log=calls)
    assert check.check_key(ws) != key
    assert results(ws)["go >=1.16"].status == "TOO OLD"
    assert calls.read_text() == "run\nrun\n"


def test_rustup_proxy_is_not_asked_for_a_toolchain_that_is_not_installed(project, tools,
                                                                        monkeypatch):
    calls = tools.tmp / "calls"
    bin_ = tools.tmp / "cargo-bin"
    bin_.mkdir()
    tools.fake(bin_ / "rustup", RUSTC, log=calls)
    (bin_ / "rustc").symlink_to("rustup")
    (bin_ / "cargo").symlink_to("rustup")
    home = tools.tmp / "rustup-home"
    (home / "toolchains" / "stable-x86_64-unknown-linux-gnu").mkdir(parents=True)
    monkeypatch.setenv("RUSTUP_HOME", str(home))
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{tools.base}")
    ws = workspace(project, "k:\n  git: ./k\n  ref: v1\n  requires: [rust >=1.54 <1.59]\n"
                            "  env: {RUSTUP_TOOLCHAIN: 1.58.1}\n")
    label = "rust [RUSTUP_TOOLCHAIN=1.58.1] >=1.54 <1.59"
    got = results(ws)[label]
    assert got.status == "BROKEN" and "toolchain '1.58.1' is not installed" in got.found
    assert not calls.exists()
    rows = dict(fixes.fixes(got.need.prereq, got.need.range, got.need.environ()))
    assert rows["rustup"] == "rustup toolchain install 1.58.1"

    (home / "toolchains" / "1.58.1-x86_64-unknown-linux-gnu").mkdir()
    got = results(ws)[label]  # the toolchains folder changed: probe again
    assert got.status == "ok" and got.found.endswith("1.58.1")
    assert calls.read_text() == "run\n"


@pytest.mark.parametrize("bounds, toolchain", [
    (((">=", "1.54"), ("<", "1.59")), "1.58"),
    (((">=", "1.54"), ("<=", "1.58.1")), "1.58.1"),
    (((">=", "1.54"),), "1.54"),
    ((), "stable"),
])
def test_rustup_hint_picks_a_toolchain_in_range(bounds, toolchain):
    assert fixes.rustup_toolchain(Range(bounds), {}) == toolchain
