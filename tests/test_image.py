"""The image task, end to end: real doit, real git, an mbuto stand-in that
behaves like mbuto (its options, its Kata lines on stdout, exit status 1)."""

from __future__ import annotations

import json
import os

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
    image = (kata.workdir / "kata.img").read_text()
    # The agent came from the staged root, not the live system.
    assert f"agent={kata.staged('/usr/libexec/kata-agent')}\n" in image
    assert "echo agent one\n" in image
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
    assert "kernel=5.15.0-test" in (kata.workdir / "kata.img").read_text()


def test_agent_change_rebuilds_the_image(kata):
    doit(kata)
    kata.edit_stack("ref: v1", "ref: v2")  # kata v2 changes the agent only
    res = doit(kata)
    assert sorted(res.ran) == sorted(["fetch:kata", "patch:kata", "build:kata/runtime",
                                      "build:kata/agent", "install:kata/agent", "image"])
    assert "echo agent two\n" in (kata.workdir / "kata.img").read_text()


def test_option_change_and_missing_output_rebuild(kata):
    doit(kata)
    kata.edit_stack("add: [strace]", "add: [strace, ip]")
    assert doit(kata).ran == ["image"]
    assert "add=strace ip\n" in (kata.workdir / "kata.img").read_text()
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
    before = (kata.workdir / "kata.img").read_text()
    kata.edit_stack("profile: kata", "profile: base")
    res = doit(kata, expect=None)
    assert res.code != 0
    assert "did not print the kernel and initrd lines" in res.text
    assert "image.profile (base)" in res.text
    assert (kata.workdir / "kata.img").read_text() == before  # not replaced
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
