"""image: the guest image (an initramfs) that Kata boots, built by mbuto.

mbuto runs from the builder component's checkout (``<checkout>/mbuto -p
PROFILE -f OUTPUT -c COMPRESSION -k KERNEL -m MODULES_ROOT ADD...``).  It
finds the programs it puts in the image with ``which`` on
``PATH:/usr/libexec:/sbin:/usr/sbin``; in a staged install the staged
folders come first on PATH, so the image gets the kata-agent we built, not
one from the live system.

mbuto exits 1 even when it succeeds, so success is judged by what it prints
(``kernel = "..."`` and ``initrd = "..."``, the values the Kata
configuration needs) and by the image file it writes.  It writes to a
temporary name that replaces the old image only once complete: a failed
build leaves the previous image in place.  The two values are recorded
with the image's stamp, where the config tasks that use them read them.
"""

from __future__ import annotations

import os
import re
import shlex

from ..action import Done, installs_of, step, task_id
from ..checkout import SourceCheck, content_of, installed_of, recording_outputs
from ..errors import StackError
from ..run import run, say, tail
from ..workspace import Workspace

TASK = task_id("image")

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
    }


class ImageCheck(SourceCheck):
    """Stale when the builder's checkout, the installed files of the
    components it needs, the kernel or any option changes, or when the
    image file is missing."""

    def __init__(self, ws: Workspace):
        super().__init__(ws.stamps, TASK)
        self.ws, self.component = ws, ws.stack.image.builder

    def key(self) -> dict:
        return image_key(self.ws)

    def missing(self) -> str | None:
        output = self.ws.stack.image.output
        if not output.is_file():
            return f"the image {output} is missing"
        return None


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
        run(command, cwd=checkout, log=log, label="image: ",
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
    os.replace(partial, output)
    initrd = found["initrd"]
    if os.path.realpath(initrd) == os.path.realpath(partial):
        initrd = os.path.realpath(output)
    say(f"  image: {output} built: kernel = \"{found['kernel']}\", initrd = \"{initrd}\"")
    return Done(key, {"kernel": found["kernel"], "initrd": initrd, "content": content})


def tasks(ws: Workspace):
    """The ``image`` task, when stack.yaml has an image section."""
    img = ws.stack.image
    if img is None:
        return
    needs = [t for name in img.needs for t in installs_of(ws, name)]
    yield {
        "basename": TASK,
        "doc": f"build the guest image {img.output} with {img.builder} -p {img.profile}",
        "actions": [step(ws, TASK, lambda: _build(ws))],
        "task_dep": [task_id("check"), task_id("patch", img.builder)] + needs,
        "uptodate": [ImageCheck(ws)],
    }
