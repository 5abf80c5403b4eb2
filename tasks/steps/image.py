"""image and image_boot: the guest image (an initramfs) that Kata boots,
built by mbuto, checked before it is accepted, and booted on demand.

mbuto runs from the builder component's checkout (``<checkout>/mbuto -p
PROFILE -f OUTPUT -c COMPRESSION -k KERNEL -m MODULES_ROOT ADD...``).  It
finds the programs it puts in the image with ``which`` on
``PATH:/usr/libexec:/sbin:/usr/sbin``; in a staged install the staged
folders come first on PATH, so the image gets the kata-agent we built, not
one from the live system.  The key holds the content of every program the
last image took from PATH (the agent, the shell...), however it got there.

mbuto exits 1 even when it succeeds, so success is judged by what it prints
(``kernel = "..."`` and ``initrd = "..."``, the values the Kata
configuration needs) and by the image it writes, which is then read and
checked (``host/image/imagecheck.py``): /init, the program it ends with, and the
interpreter and libraries of every program must be inside the image, and
nothing may sit at its staged path.  It writes to a temporary name that
replaces the old image only once accepted: a failed or refused build
leaves the previous image in place.  The two values are recorded with the
image's stamp, where the config tasks that use them read them.

``image_boot`` boots a copy of the image whose agent is a stand-in, with the
stack's kernel under QEMU (``host/image/qemuboot.py``).
"""

from __future__ import annotations

import os
import re
import shlex
from functools import partial
from pathlib import Path

from .. import run
from ..action import Done, installs_of, step, task_id
from ..checkout import content_of, installed_of, recording_outputs, source_check
from ..errors import StackError
from ..run import say, tail
from ..state import Check
from ..workspace import Workspace

TASK = task_id("image")
BOOT = task_id("image_boot")
AGENT = "/usr/bin/kata-agent"  # where the image holds the agent, as a live install gives it
MBUTO_PATH = ":/usr/libexec:/sbin:/usr/sbin"  # what mbuto appends to PATH for `which`

# Where a staged install puts programs, searched before the live system.
STAGED_BIN_DIRS = ("/usr/libexec", "{prefix}/bin", "{prefix}/sbin", "{prefix}/libexec",
                   "/usr/local/bin", "/usr/bin", "/usr/sbin", "/bin", "/sbin")
_LINE_RE = re.compile(r'^\s*(kernel|initrd)\s*=\s*"([^"]*)"\s*$', re.M)


def kernel_version(ws: Workspace) -> str:
    """``image.kernel``, with ``auto`` meaning the running kernel (``uname -r``)."""
    kernel = ws.stack.image.kernel
    return os.uname().release if kernel == "auto" else kernel


def image_key(ws: Workspace, fresh: bool = False) -> dict:
    img = ws.stack.image
    source = ws.source_state(img.builder, fresh=fresh)
    needs = {}
    for name in img.needs:
        needs.update(installed_of(ws, name))
    return {
        "builder": img.builder,
        "source": source,
        "needs": needs,
        "kernel": kernel_version(ws),
        "options": {
            "profile": img.profile,
            "output": str(img.output),
            "compression": img.compression,
            "modules_root": img.modules_root,
            "add": list(img.add),
        },
        "destdir": ws.settings.destdir,
        "prefix": ws.settings.prefix,
        "programs": programs_key(ws, ws.stamps.produced(TASK, "programs") or []),
    }


def programs_key(ws: Workspace, names: list[str]) -> dict[str, str]:
    """The content of the file mbuto's ``which`` finds for each name now."""
    found_on = search_path(ws) + MBUTO_PATH
    cache = ws.hashes(ws.stack.image.builder)
    out = {}
    for name in names:
        path = run.which(name, path=found_on)
        out[name] = f"{path}={cache.fingerprint(Path(path))}" if path else "-"
    cache.save()
    return out


def agent_path(ws: Workspace) -> str | None:
    """The agent the image must hold: Kata's profiles run one."""
    return AGENT if ws.stack.image.profile.startswith("kata") else None


def image_missing(ws: Workspace) -> str | None:
    output = ws.stack.image.output
    if not output.is_file():
        return f"the image {output} is missing"
    return None


def _uptodate(ws: Workspace) -> Check:
    """Stale when the builder's checkout, the installed files of the
    components it needs, a program the image took from PATH, the kernel or
    any option changes, or when the image file is missing."""
    return source_check(ws, TASK, ws.stack.image.builder, partial(image_key, ws),
                        partial(image_missing, ws))


def search_path(ws: Workspace) -> str:
    """PATH for mbuto: the staged folders first when destdir is set."""
    current = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    if not ws.settings.destdir:
        return current
    staged = []
    for folder in STAGED_BIN_DIRS:
        path = str(ws.stack.target(folder.format(prefix=ws.settings.prefix)))
        if path not in staged and os.path.isdir(path):
            staged.append(path)
    return ":".join(staged + [current])


def _build(ws: Workspace) -> dict:
    img = ws.stack.image
    key = image_key(ws, fresh=True)
    content = content_of(ws, img.builder, key["source"])
    checkout = ws.checkout(img.builder)
    script = checkout / "mbuto"
    if not script.is_file():
        raise StackError(f"{script} not found",
                         hint=f"image.builder names '{img.builder}': its checkout must hold "
                              "the mbuto script")
    output = img.output
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".kps-new")
    partial.unlink(missing_ok=True)
    captured = ws.state / "image" / "mbuto.stdout"
    captured.parent.mkdir(parents=True, exist_ok=True)
    captured.unlink(missing_ok=True)
    argv = ["./mbuto", "-p", img.profile, "-f", str(partial), "-c", img.compression,
            "-k", key["kernel"], "-m", img.modules_root, *img.add]
    command = (shlex.join(argv) + ' >"$KPS_MBUTO_STDOUT" || echo "(mbuto exited with status $?;'
               ' success is judged by its output)"')
    log = ws.log(TASK)
    with recording_outputs(ws, img.builder, before=key["source"]["edits"]):
        run.run(command, cwd=checkout, log=log, label=f"{TASK}: ",
            env={"PATH": search_path(ws), "KPS_MBUTO_STDOUT": str(captured)})
    printed = captured.read_text(errors="replace") if captured.exists() else ""
    with open(log, "a", encoding="utf-8", errors="replace") as f:
        f.write("### mbuto's standard output:\n" + printed)
    found = dict(m.groups() for m in _LINE_RE.finditer(printed))
    problem = None
    if "kernel" not in found or "initrd" not in found:
        problem = "it did not print the kernel and initrd lines"
    elif not partial.is_file() or partial.stat().st_size == 0:
        problem = f"it did not write the image {partial}"
    if problem:
        partial.unlink(missing_ok=True)
        raise StackError(
            f"mbuto did not build the image: {problem}\n"
            f"--- its standard output ---\n{printed.rstrip() or '(nothing)'}\n"
            f"--- last lines of its log ---\n{tail(log)}",
            hint=f"check image.profile ({img.profile}) and that what the image needs "
                 f"(kata-agent) is installed; full log: {log}")
    names = _accept(ws, partial, log)
    key["programs"] = programs_key(ws, names)
    os.replace(partial, output)
    initrd = found["initrd"]
    if os.path.realpath(initrd) == os.path.realpath(partial):
        initrd = os.path.realpath(output)
    say(f"  {TASK}: {output} built: kernel = \"{found['kernel']}\", initrd = \"{initrd}\"")
    return Done(key, {"kernel": found["kernel"], "initrd": initrd, "content": content,
                      "programs": names})


def _accept(ws: Workspace, partial: Path, log: Path) -> list[str]:
    """Read and check the image mbuto wrote; the programs it holds.  An
    image that cannot boot is refused (and removed: the old one stays)."""
    from ..host.image import imagefile  # the image reader only when an image was built
    try:
        image = imagefile.load(partial)
        found = imagefile.problems(image, agent_path(ws), ws.settings.destdir)
    except StackError as err:
        partial.unlink(missing_ok=True)
        raise StackError(f"the image mbuto wrote cannot be read: {err.message}",
                         err.hint) from None
    if found:
        partial.unlink(missing_ok=True)
        shown = "\n".join(f"  image: {line}" for line in found)
        with open(log, "a", encoding="utf-8") as f:
            f.write("### the image was refused:\n" + shown + "\n")
        raise StackError(
            f"the image mbuto built cannot boot, so it was refused (the previous image, if "
            f"any, is kept):\n{shown}",
            hint="a program or library mbuto should have copied is missing: check the mbuto "
                 f"patches in stack.yaml and its log ({log})")
    say(f"  {TASK}: checked: {len(image.entries)} files; /init, the agent and every "
        "program's interpreter and libraries are in the image")
    return imagefile.programs(image)


# --------------------------------------------------------------------------
# image_boot


def _boot(ws: Workspace, accel: str, limit_all: int | None = None) -> None:
    """Boot the image once; ``limit_all``: seconds for the whole boot
    (default: ``timeout=`` on the command line, else qemuboot's)."""
    # Only a boot needs these: a no-op does not pay for their import.
    from ..host import runtime
    from ..host.image import imagefile, qemuboot

    if accel not in qemuboot.ACCELS:
        raise StackError(f"accel={accel}: use one of {', '.join(qemuboot.ACCELS)}")
    if limit_all is None:
        limit_all = ws.run.seconds("timeout", qemuboot.BOOT_TIMEOUT)
    img = ws.stack.image
    named = ws.stamps.produced(TASK, "kernel")
    if not named or not img.output.is_file():
        raise StackError("the image is not built yet", hint="run doit image")
    kernel = str(runtime.host_path(named))
    if not os.path.isfile(kernel):
        raise StackError(f"the kernel mbuto named, {named}, does not exist",
                         hint="install the kernel package of image.kernel (its /boot/vmlinuz-*)")
    image = imagefile.load(img.output)
    agent = image.resolve(agent_path(ws) or AGENT)
    if agent is None:
        raise StackError(f"the image has no {AGENT} to stand in for")
    template = (ws.stack.project or Path(__file__).resolve().parents[2]) / "configs" / \
        "boot-test-agent.sh"
    stand_in = template.read_text().replace("@MARKER@", qemuboot.MARKER).encode()
    copy = ws.state / "image_boot" / "initrd.cpio"
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_bytes(imagefile.boot_copy(image, agent, stand_in))
    log = ws.log(BOOT)
    tries = qemuboot.accels(accel, str(runtime.host_path("/dev/kvm")))
    verdict = None
    for n, how in enumerate(tries):
        limit = min(qemuboot.KVM_TIMEOUT, limit_all) if how == "kvm" and len(tries) > 1 \
            else limit_all
        say(f"  {BOOT}: booting {kernel} with {copy} under {how.upper()} "
            f"(at most {limit} s; console in {log})")
        start = log.stat().st_size if log.exists() else 0
        try:
            run.run(qemuboot.command(kernel, copy, how, limit), cwd=ws.workdir, log=log,
                    label=f"{BOOT}: ")
        except StackError:
            pass  # QEMU's status says little (timeout, or killed): the console decides
        console = log.read_bytes()[start:].decode("utf-8", "replace")
        verdict = qemuboot.judge(console)
        if verdict.passed or "panicked" in verdict.why or n == len(tries) - 1:
            break
        say(f"  {BOOT}: no result under KVM ({verdict.why}): trying TCG")
    if not verdict.passed:
        raise StackError(f"the image did not boot: {verdict.why}\n--- last lines of the "
                         f"console ---\n{verdict.last_lines}\n--- full console: {log}",
                         hint="the console shows how far the kernel got; doit image checks "
                              "what the image holds")
    say(f"  {BOOT}: passed: {verdict.why}\n{verdict.last_lines}")


def boot(ws: Workspace, seconds: int | None = None) -> None:
    """Boot the image once, as image_boot does: the smoke's image_boot check
    (dodo.py hands it to tasks/steps/smoke.py)."""
    _boot(ws, str(ws.run.var("accel") or "auto"), seconds)


def tasks(ws: Workspace):
    """The ``image`` task (one that says there is nothing to build when
    stack.yaml has no image section: plain doit does not run it then)."""
    img = ws.stack.image
    if img is None:
        yield _no_image(ws, TASK)
        return
    needs = [t for name in img.needs for t in installs_of(ws, name)]
    built = {k: ws.stamps.produced(TASK, k) for k in ("kernel", "initrd")}
    yield {
        "basename": TASK,
        "doc": f"build the guest image {img.output} with {img.builder} -p {img.profile}; "
               f"reruns when {img.builder}'s checkout, "
               + (f"the installed content of {', '.join(img.needs)}, " if img.needs else "")
               + "the kernel or an option changes, or the image is missing",
        "actions": [step(ws, TASK, lambda: _build(ws))],
        "task_dep": [task_id("check"), task_id("patch", img.builder)] + needs,
        "uptodate": [_uptodate(ws)],
        "meta": {k: v for k, v in built.items() if v},  # shown by doit info image
    }


def _no_image(ws: Workspace, name: str) -> dict:
    def fail():
        raise StackError("stack.yaml has no 'image' section: there is no guest image",
                         hint="add one ('image: {}' builds mbuto's kata image from the host's "
                              "kernel)")
    return {"basename": name, "doc": f"{name} (stack.yaml has no 'image' section)",
            "actions": [step(ws, name, fail)]}


def boot_tasks(ws: Workspace, accel=None):
    """``image_boot``: boot the image under QEMU with a stand-in agent."""
    choice = str(accel or "auto")
    if ws.stack.image is None:
        yield _no_image(ws, BOOT)
        return
    yield {
        "basename": BOOT,
        "doc": "boot the guest image under QEMU with a stand-in agent (accel=auto|kvm|tcg, "
               "timeout=SECONDS); the console goes to " + str(ws.log(BOOT)),
        "actions": [step(ws, BOOT, lambda: _boot(ws, choice))],
        "task_dep": [TASK],
    }
