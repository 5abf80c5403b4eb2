"""The image task, end to end: real doit, real git, an mbuto stand-in that
behaves like mbuto (its options, its Kata lines on stdout, exit status 1,
a real newc image holding the host's shell and its libraries)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from conftest import image_of, text_in

STANDINS = Path(__file__).parent / "standins"

BUILD_ALL = ["check", "fetch:kata", "fetch:qemu", "fetch:mbuto", "patch:kata", "patch:qemu",
             "patch:mbuto", "build:kata/runtime", "build:kata/agent", "build:qemu",
             "build:mbuto", "install:kata/runtime", "install:kata/agent", "install:qemu",
             "install:mbuto", "image"]


def doit(project, *args, **kw):
    """Plain doit (check included), with stand-ins for mbuto's host tools."""
    return project.doit(*args, env=project.tool_env, **kw)


def stamp(project, task="image"):
    name = task.replace(":", "@").replace("/", "@")
    return json.loads((project.workdir / "state/stamps" / f"{name}.json").read_text())


def test_image_is_built_from_the_staged_agent_with_the_options(kata):
    res = doit(kata)
    assert sorted(res.ran) == sorted(BUILD_ALL)
    image = text_in(kata, "/etc/mbuto.txt")
    # The agent came from the staged root, not the live system.
    assert f"agent={kata.staged('/usr/libexec/kata-agent')}\n" in image
    assert "echo agent one\n" in text_in(kata, "/usr/bin/kata-agent")
    assert "profile=kata compression=lz4 kernel=5.10.0-test add=strace\n" in image
    values = stamp(kata)
    assert values["kernel"] == "/boot/vmlinuz-5.10.0-test"
    assert values["initrd"] == os.path.realpath(kata.workdir / "kata.img")
    assert 'kernel = "/boot/vmlinuz-5.10.0-test"' in res.err  # said what it built
    assert not (kata.workdir / "kata.img.kps-new").exists()

    again = doit(kata)
    assert again.ran == [] and "image" in again.uptodate


def test_kernel_change_rebuilds_the_image_only(kata):
    doit(kata)
    kata.edit_stack("kernel: 5.10.0-test", "kernel: 5.15.0-test")
    res = doit(kata)
    assert res.ran == ["image"]
    assert stamp(kata)["kernel"] == "/boot/vmlinuz-5.15.0-test"
    assert "kernel=5.15.0-test" in text_in(kata, "/etc/mbuto.txt")


def test_agent_change_rebuilds_the_image(kata):
    doit(kata)
    kata.edit_stack("ref: v1", "ref: v2")  # kata v2 changes the agent only
    res = doit(kata)
    assert sorted(res.ran) == sorted(["fetch:kata", "patch:kata", "build:kata/runtime",
                                      "build:kata/agent", "install:kata/agent", "image"])
    assert "echo agent two\n" in text_in(kata, "/usr/bin/kata-agent")


def test_option_change_and_missing_output_rebuild(kata):
    doit(kata)
    kata.edit_stack("add: [strace]", "add: [strace, ip]")
    assert doit(kata).ran == ["image"]
    assert "add=strace ip\n" in text_in(kata, "/etc/mbuto.txt")
    (kata.workdir / "kata.img").unlink()
    res = kata.doit("info", "image", expect=None)
    assert "kata.img is missing" in res.text
    assert doit(kata).ran == ["image"]


def test_edit_in_the_builder_checkout_rebuilds(kata):
    doit(kata)
    script = kata.src("mbuto") / "mbuto"
    script.write_text(script.read_text().replace("Size:", "Size (edited):"))
    assert doit(kata).ran == ["build:mbuto", "image"]


def test_mbuto_without_kata_lines_fails_and_keeps_the_old_image(kata):
    doit(kata)
    before = (kata.workdir / "kata.img").read_bytes()
    kata.edit_stack("profile: kata", "profile: base")
    res = doit(kata, expect=None)
    assert res.code != 0
    assert "did not print the kernel and initrd lines" in res.text
    assert "image.profile (base)" in res.text
    assert (kata.workdir / "kata.img").read_bytes() == before  # not replaced
    assert not (kata.workdir / "kata.img.kps-new").exists()
    # The failure is not remembered as done: back to kata, it builds again.
    kata.edit_stack("profile: base", "profile: kata")
    assert doit(kata).ran == ["image"]


def test_missing_kernel_modules_fail_with_mbutos_words(kata):
    kata.edit_stack("kernel: 5.10.0-test", "kernel: 9.9.9-none")
    res = doit(kata, expect=None)
    assert res.code != 0
    assert "no lib/modules/9.9.9-none" in res.text  # mbuto's own message, from the log
    assert not (kata.workdir / "kata.img").exists()


# --------------------------------------------------------------------------
# The image check: what the kernel and the dynamic linker will need


def set_switch(project, name: str) -> None:
    """Turn on one of the mbuto stand-in's bug switches, in its checkout."""
    script = project.src("mbuto") / "mbuto"
    script.write_text(script.read_text().replace(f"{name}=no", f"{name}=yes", 1))


def test_an_image_without_the_dynamic_linker_is_refused_and_the_old_one_kept(kata):
    doit(kata)
    before = (kata.workdir / "kata.img").read_bytes()
    set_switch(kata, "SKIP_LINKER")  # mbuto's IFS bug
    res = doit(kata, expect=None)
    assert res.code != 0
    shell = os.path.realpath("/bin/sh")
    assert f"image: {shell} needs /lib64/ld-linux-x86-64.so.2, which is not in the image" \
        in res.text
    assert "was refused" in res.text
    assert (kata.workdir / "kata.img").read_bytes() == before
    assert not (kata.workdir / "kata.img.kps-new").exists()
    # Refused is not done: the next run tries again.
    assert "image" in doit(kata, expect=None).ran


def test_an_agent_kept_at_its_staged_path_is_refused(kata):
    doit(kata, "patch:mbuto")
    set_switch(kata, "KEEP_STAGED_PATH")  # mbuto without our third patch
    res = doit(kata, expect=None)
    assert res.code != 0
    staged = kata.staged("/usr/libexec/kata-agent")
    assert f"image: {staged} is kept at its staged path" in res.text
    assert not (kata.workdir / "kata.img").exists()


def test_the_image_holds_the_agent_at_its_own_path_whatever_the_destdir(kata):
    doit(kata)
    first = image_of(kata)
    assert first.entry("/usr/bin/kata-agent").is_executable
    kata.edit_stack("destdir: stage", "destdir: elsewhere")
    res = doit(kata)
    assert "image" in res.ran
    second = image_of(kata)
    files = sorted(p for p in first.entries if p != "/etc/mbuto.txt")
    assert files == sorted(p for p in second.entries if p != "/etc/mbuto.txt")
    assert not any(str(kata.root) in p for p in second.entries)


def test_an_agent_changed_by_hand_in_the_staged_root_rebuilds_the_image(kata):
    doit(kata)
    agent = kata.staged("/usr/libexec/kata-agent")
    agent.write_text("#!/bin/sh\necho agent by hand\n")
    info = kata.doit("info", "image", expect=None)
    assert "programs.kata-agent" in info.text
    res = doit(kata)
    assert res.ran == ["image"]
    assert "agent by hand" in text_in(kata, "/usr/bin/kata-agent")
    assert doit(kata).ran == []


def test_doit_info_image_shows_the_kernel_and_initrd(kata):
    doit(kata)
    res = kata.doit("info", "image")
    assert "/boot/vmlinuz-5.10.0-test" in res.out
    assert os.path.realpath(kata.workdir / "kata.img") in res.out


# --------------------------------------------------------------------------
# image_boot, with a QEMU stand-in that replays the real kernel's console


class Boot:
    """A qemu-system-x86_64 stand-in first on PATH, and a host root whose
    /boot holds the kernel mbuto named (KPS_CHECK_ROOT)."""

    def __init__(self, kata, tmp_path, mode="boot", kvm=False):
        self.dir = tmp_path / "standin"
        bin_dir = self.dir / "bin"
        bin_dir.mkdir(parents=True)
        exe = bin_dir / "qemu-system-x86_64"
        exe.write_text(f"#!{sys.executable}\n" + (STANDINS / "qemu.py").read_text())
        exe.chmod(0o755)
        root = tmp_path / "hostroot"
        (root / "boot").mkdir(parents=True)
        (root / "boot/vmlinuz-5.10.0-test").write_text("a kernel\n")
        if kvm:
            (root / "dev").mkdir()
            (root / "dev/kvm").write_text("")  # opens like the device
        self.env = {**kata.tool_env, "STANDIN_DIR": str(self.dir), "KPS_CHECK_ROOT": str(root),
                    "STANDIN_QEMU_MODE": mode,
                    "PATH": f"{bin_dir}:{kata.tool_env['PATH']}"}

    def calls(self):
        lines = (self.dir / "calls.jsonl").read_text().splitlines()
        return [json.loads(line)["argv"] for line in lines]


def test_image_boot_passes_when_init_reaches_the_agent(kata, tmp_path):
    boot = Boot(kata, tmp_path)
    doit(kata)
    res = kata.doit("image_boot", env=boot.env)
    assert "passed: /init ran to its last step" in res.err
    console = (kata.workdir / "logs/image_boot.log").read_text()
    assert "kata-passt-stack: image_boot: /init ran the agent" in console
    (argv,) = boot.calls()
    assert argv[argv.index("-kernel") + 1] == str(tmp_path / "hostroot/boot/vmlinuz-5.10.0-test")
    assert "accel=tcg" in argv  # no usable /dev/kvm
    # The image itself is untouched: the boot copy has the stand-in agent.
    assert "echo agent one" in text_in(kata, "/usr/bin/kata-agent")
    assert kata.doit("image_boot", env=boot.env).ran == ["image_boot"]  # runs when asked


def test_image_boot_is_not_part_of_plain_doit(kata, tmp_path):
    boot = Boot(kata, tmp_path)
    res = kata.doit(env=boot.env)
    assert "image_boot" not in res.ran
    assert not (boot.dir / "calls.jsonl").exists()


def test_image_boot_fails_on_a_panic_and_shows_the_console(kata, tmp_path):
    boot = Boot(kata, tmp_path, mode="panic")
    doit(kata)
    res = kata.doit("image_boot", env=boot.env, expect=None)
    assert res.code != 0
    assert "the image did not boot: the kernel panicked: " in res.text
    assert "No working init found" in res.text
    assert str(kata.workdir / "logs/image_boot.log") in res.text


def test_image_boot_falls_back_to_tcg_when_kvm_hangs(kata, tmp_path):
    boot = Boot(kata, tmp_path, mode="kvm-hang", kvm=True)
    doit(kata)
    res = kata.doit("image_boot", "timeout=3", env=boot.env)
    assert "trying TCG" in res.err and "passed" in res.err
    assert [next(a for a in argv if a.startswith("accel=")) for argv in boot.calls()] == \
        ["accel=kvm", "accel=tcg"]


def test_image_boot_without_the_kernel_says_so(kata, tmp_path):
    boot = Boot(kata, tmp_path)
    (tmp_path / "hostroot/boot/vmlinuz-5.10.0-test").unlink()
    doit(kata)
    res = kata.doit("image_boot", env=boot.env, expect=None)
    assert res.code != 0
    assert "the kernel mbuto named, /boot/vmlinuz-5.10.0-test, does not exist" in res.text
