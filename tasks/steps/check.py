"""check: every prerequisite of this stack, what was found, what is wanted,
and how to install what is missing.

Which requirements apply (the catalog is tasks/catalog.py):

* ``git``, always (fetch);
* every ``requires`` entry of every part (a component's list is inherited by
  its parts): needed to build, so a problem fails the check;
* with an ``image`` section: mbuto's tools (cpio, kmod, file, bc, make, wget,
  strip, which, the compressor), ``fakeroot`` when not root and
  ``archivemount`` absent when root: required, since plain ``doit`` builds
  the image;
* with a ``pod`` section: runc, conmon, /dev/kvm, /dev/vhost-vsock and a
  virtiofsd;
* ``sudo`` when install commands need it (not root, no destdir).

Run-time requirements (runc, conmon, kvm, vhost-vsock, virtiofsd) are only
warnings, wherever they are listed: ``doit run_pod`` needs them, building
does not.  One that a part of the stack installs (QEMU's virtiofsd) counts
as found.

Speed: the up-to-date key finds every requirement without running anything
(a PATH lookup and a stat, files that exist); versions are probed only when
what was found changed, in parallel, and cached by that signature in
``<workdir>/state/prereqs.json``, which outlives a failed check.
"""

from __future__ import annotations

import os
import re
import time
from collections import ChainMap
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from .. import catalog
from ..action import Done, step, task_id
from ..catalog import CATALOG, Prereq, Range
from ..errors import StackError
from ..host import runtime
from ..host.pod import podhints
from ..host.prereqs import probe
from ..run import is_root, say
from ..state import Check, digest, in_words
from ..threads import Jobs
from ..workspace import Workspace

if TYPE_CHECKING:
    from ..host.prereqs.probe import Found

TASK = task_id("check")
POD_NEEDS = ("runc", "conmon", "kvm", "vhost-vsock", "virtiofsd")
PLAIN_POD_NEEDS = ("runc", "conmon")  # a runc or crun pod: no VM
IMAGE_TOOLS = ("cpio", "kmod", "file", "bc", "make", "wget", "strip", "which")
COMPRESSORS = {"gzip": "gzip", "lz4": "lz4", "lzma": "xz", "lzo": "lzop"}
MUST_NOT = "PRESENT-BUT-MUST-NOT-BE"


@dataclass(frozen=True)
class Need:
    prereq: Prereq
    range: Range
    env: tuple[tuple[str, str], ...]  # a part's PATH and the variables the probe reads
    why: tuple[str, ...]  # who needs it: part ids, "fetch", "image", "pod", "install"
    required: bool  # a problem fails the check (else it is a warning)

    @property
    def name(self) -> str:
        text = ("!" if self.range.absent else "") + self.prereq.id
        if self.env:
            text += " [" + " ".join(f"{k}={v}" for k, v in self.env) + "]"
        return text

    @property
    def label(self) -> str:
        return self.name if not self.range.bounds else f"{self.name} {self.range}"

    def environ(self) -> Mapping[str, str]:
        return ChainMap(dict(self.env), os.environ)


@dataclass(frozen=True)
class Item:
    need: Need
    found: Found | None  # None when the stack itself provides it
    provided: str | None  # "qemu installs /usr/local/libexec/virtiofsd"

    @property
    def sig(self) -> str:
        return f"stack: {self.provided}" if self.provided else self.found.sig

    @property
    def probe_key(self) -> str | None:
        """The version cache's key, when a version probe is needed."""
        p = self.need.prereq
        if self.provided or self.need.range.absent or not p.version or not self.found.path:
            return None
        return digest([p.id, self.found.sig, list(self.need.env)])


@dataclass(frozen=True)
class Result:
    item: Item
    status: str  # ok, MISSING, TOO OLD, TOO NEW, BROKEN, PRESENT-BUT-MUST-NOT-BE, warn
    found: str  # what was found, for people
    problem: str | None  # MISSING, TOO OLD... (also for a warning)

    @property
    def need(self) -> Need:
        return self.item.need


# --------------------------------------------------------------------------
# Which requirements apply


@dataclass(frozen=True)
class Scope:
    parts: frozenset[str] | None  # the parts whose requirements count (None: all)
    image: bool  # whether mbuto's tools count


def in_scope(ws: Workspace) -> Scope:
    """What the requested tasks will run: plain doit (or check, run_pod, a
    whole group) checks everything; named tasks check only the parts they
    and what they need will build, so a missing Rust does not stop
    ``doit install:passt``."""
    stack, parts, image = ws.stack, set(), False

    def need(spec: str) -> None:
        for part in ws.parts_of(spec):
            if part.id not in parts:
                parts.add(part.id)
                for other in ws.component(part.component).needs:
                    need(other)

    def need_image() -> None:
        nonlocal image
        image = True
        for spec in stack.image.needs if stack.image else ():
            need(spec)

    for name in ws.requested:
        kind, _, what = name.partition(":")
        if name in ("image", "image_boot"):
            need_image()
        elif kind in ("fetch", "patch", "update", "reset", "stop_pod"):
            continue  # git, or nothing to build
        elif kind in ("build", "install") and what.partition("/")[0] in stack.components:
            need(what)
        elif kind == "config" and what in stack.configs:
            for spec in stack.configs[what].needs:
                if spec == "image":
                    need_image()
                else:
                    need(spec)
        elif name == "run_pod" and stack.pod and \
                not podhints.is_vm_runtime(stack, stack.pod.runtime):
            for part in podhints.crio_side_parts(stack):  # runc, crun: the CRI-O side
                need(part.id)
        else:  # check, a Kata run_pod, a whole group (build, install...): everything
            return Scope(None, True)
    return Scope(frozenset(parts), image) if ws.requested else Scope(None, True)


def image_needs(image, euid: int) -> list[str]:
    needs = list(IMAGE_TOOLS)
    needs.append("fakeroot" if euid != 0 else "!archivemount")
    if image.compression in COMPRESSORS:
        needs.append(COMPRESSORS[image.compression])
    return needs


def collect(ws: Workspace, euid: int | None = None,
            needs_sudo: bool | None = None) -> list[Need]:
    """The requirements of this stack, one per (id, range, env), in order."""
    euid = os.geteuid() if euid is None else euid
    needs_sudo = ws.needs_sudo() if needs_sudo is None else needs_sudo
    stack = ws.stack
    slots: dict[tuple, dict] = {}

    def add(entry: str, why: str, required: bool, env=()) -> None:
        try:
            rid, rng = catalog.parse(entry)
        except ValueError as err:
            raise StackError(f"{why}: requires: {err}",
                             hint=f"fix the 'requires' list in {stack.path}") from None
        p = CATALOG[rid]
        relevant = tuple((k, v) for k, v in env if k == "PATH" or k in p.env)
        slot = slots.setdefault((rid, str(rng), relevant),
                                {"p": p, "range": rng, "env": relevant, "why": [],
                                 "required": False})
        if why not in slot["why"]:
            slot["why"].append(why)
        slot["required"] = slot["required"] or (required and not p.run)

    scope = in_scope(ws)
    add("git", "fetch", True)
    for c in stack.components.values():
        for part in c.parts:
            if scope.parts is not None and part.id not in scope.parts:
                continue
            for entry in part.requires:
                add(entry, part.id, True, part.env)
    if stack.image is not None and scope.image:
        for entry in image_needs(stack.image, euid):
            add(entry, f"image ({stack.image.builder})", True)
    if stack.pod is not None:
        vm = podhints.is_vm_runtime(stack, stack.pod.runtime)
        for entry in POD_NEEDS if vm else PLAIN_POD_NEEDS:
            add(entry, "pod", False)
    if needs_sudo:
        add("sudo", "install", True)
    return [Need(s["p"], s["range"], s["env"], tuple(s["why"]), s["required"])
            for s in slots.values()]


def provided_by_stack(ws: Workspace) -> dict[str, str]:
    """File names the stack installs -> "PART installs PATH"."""
    out: dict[str, str] = {}
    for c in ws.stack.components.values():
        for part in c.parts:
            for target in part.installs:
                out.setdefault(os.path.basename(target), f"{part.id} installs {target}")
    return out


def snapshot(ws: Workspace, **kw) -> list[Item]:
    """Every requirement, found or not; runs nothing."""
    stack_has = provided_by_stack(ws)
    memo: dict = {}
    items = []
    for need in collect(ws, **kw):
        p = need.prereq
        if p.id == "virtiofsd" and not need.range.absent:
            # the run-time path rule that config:kata's ${detect.virtiofsd} follows
            found = runtime.virtiofsd(ws.stack)
            if found:
                items.append(Item(need, None, str(found)))
                continue
        if p.run and not need.range.absent:
            names = list(p.programs) + [os.path.basename(f) for g in p.files for f in g]
            hit = next((stack_has[n] for n in names if n in stack_has), None)
            if hit:
                items.append(Item(need, None, hit))
                continue
        items.append(Item(need, probe.locate(p, need.environ(), memo), None))
    return items


def make_key(items: list[Item]) -> dict:
    return {"requirements": {
        i.need.label: {"found": i.sig, "for": ", ".join(i.need.why), "required": i.need.required}
        for i in items}}


def check_key(ws: Workspace) -> dict:
    return make_key(snapshot(ws))


def shown(ws: Workspace) -> str | None:
    """Named on the command line, the check shows its last report even when
    up to date (and reruns when that report is gone)."""
    if TASK not in ws.requested:
        return None
    try:
        say(ws.log(TASK).read_text().rstrip("\n") + "\n(up to date: nothing it looks at "
            "changed since this report)")
    except OSError:
        return "named on the command line, and its last report is gone"
    return None


def changed(old: dict, new: dict) -> str:
    """What changed, in words: the requirements first."""
    return ("; ".join(_changes(old.get("requirements", {}), new.get("requirements", {})))
            or in_words(old, new))


def _uptodate(ws: Workspace) -> Check:
    """Stale when a requirement is added or changed in stack.yaml, or when
    what is found for one changes (another program on PATH, a program
    replaced, a file or device appearing or going)."""
    return Check(ws.stamps, TASK, partial(check_key, ws), partial(shown, ws), changed=changed)


def _human(sig: str) -> str:
    words = []
    for word in sig.split():
        if re.match(r"^\w+=", word):
            continue
        word = re.sub(r"#\w+$", "", word)
        words.append("not found" if word == "-" else re.sub(r"^(\S+):-$", r"no \1", word))
    return " ".join(words)


def _changes(old: dict, new: dict) -> list[str]:
    """What changed, in words, for ``doit info check``."""
    out = []
    for label in list(new) + [k for k in old if k not in new]:
        if label not in old:
            out.append(f"{label} is a new requirement")
        elif label not in new:
            out.append(f"{label} is no longer required")
        elif old[label] != new[label]:
            a, b = old[label], new[label]
            if a.get("found") != b.get("found"):
                before, now = _human(a.get("found", "")), _human(b.get("found", ""))
                out.append(f"{label}: {before} -> {now}" if before != now
                           else f"{label}: {now} changed")
            else:
                out.append(f"{label}: now needed for {b.get('for')}")
    return out


# --------------------------------------------------------------------------
# Versions and verdicts


def _cache_file(ws: Workspace):
    return ws.json("prereqs")


def probe_versions(ws: Workspace, items: list[Item]) -> dict[str, dict]:
    """Version probe results by probe key: cached ones, the others probed in
    parallel now.  The cache keeps only what this stack uses."""
    cache = _cache_file(ws).read()
    wanted = {i.probe_key: i for i in items if i.probe_key}
    todo = {k: i for k, i in wanted.items() if k not in cache}
    if todo:
        def version_of(item: Item) -> dict:
            return probe.probe_version(item.need.prereq, item.found.path, item.need.environ())
        jobs = Jobs([(version_of, (item,)) for item in todo.values()], workers=8,
                    name="kps-probe")
        try:
            for k, job in zip(todo, jobs.jobs, strict=True):
                cache[k] = job.result()
        finally:
            jobs.join()
    kept = {k: cache[k] for k in wanted}
    if (todo or len(kept) != len(cache)) and not ws.read_only:
        try:
            _cache_file(ws).write(kept, indent=0)
        except OSError:
            pass  # only a cache
    return kept


def judge(item: Item, probe: dict | None) -> Result:
    need, found = item.need, item.found
    rng = need.range
    problem = None
    if item.provided:
        text = item.provided
    elif rng.absent:
        text = found.path or "not installed"
        problem = MUST_NOT if found.path else None
    elif found.path is None:
        text = "no " + ", ".join(found.missing)
        problem = "MISSING"
    else:
        version = found.version or (probe or {}).get("version")
        text = f"{found.path} {version}" if version else found.path
        if probe and probe.get("failed"):
            text, problem = f"{found.path}: {probe['error']}", "BROKEN"
        elif rng.bounds and version is None:
            text = f"{found.path}: " + (probe or {}).get("error", "no version")
            problem = "BROKEN"
        elif rng.bounds:
            problem = rng.verdict(version)
    if problem is None:
        return Result(item, "ok", text, None)
    if not need.required:
        return Result(item, "warn", f"{problem.lower()}: {text}", problem)
    return Result(item, problem, text, problem)


def evaluate(ws: Workspace, items: list[Item]) -> list[Result]:
    probes = probe_versions(ws, items)
    return [judge(i, probes.get(i.probe_key) if i.probe_key else None) for i in items]


# --------------------------------------------------------------------------
# The report


def _sudo() -> str:
    return "" if is_root() else "sudo "


def _fix_lines(r: Result, indent: str) -> list[str]:
    from ..host.prereqs.fixes import fixes  # only a failed check says how to fix

    rows = fixes(r.need.prereq, r.need.range, r.need.environ(), _sudo())
    width = max((len(w) for w, _ in rows), default=0) + 1
    return [f"{indent}{(w + ':').ljust(width)} {cmd}" for w, cmd in rows]


def _why(r: Result) -> str:
    text = ", ".join(r.need.why)
    return text + (" (to run pods)" if r.need.prereq.run else "")


def render(results: list[Result], seconds: float) -> list[str]:
    problems = sum(1 for r in results if r.problem and r.need.required)
    warnings = sum(1 for r in results if r.problem and not r.need.required)
    lines = [f"check: {len(results)} prerequisites, {len(results) - problems - warnings} ok, "
             f"{problems} problem(s), {warnings} warning(s) ({seconds:.2f} s)"]
    rows = [("status", "requirement", "found", "wanted", "for")]
    rows += [(r.status, r.need.name, r.found, str(r.need.range), _why(r)) for r in results]
    caps = (len(MUST_NOT), 24, 56, 16)
    widths = [min(cap, max(len(row[n]) for row in rows)) for n, cap in enumerate(caps)]
    indent = "  " + " " * (widths[0] + 2)
    for n, row in enumerate(rows):
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)] + [row[-1]]
        lines.append("  " + "  ".join(cells).rstrip())
        r = results[n - 1] if n else None
        if r is not None and r.problem:
            lines.append(f"{indent}{r.need.prereq.id}: {r.need.prereq.what}")
            lines.extend(_fix_lines(r, indent))
    return lines


def failure(failed: list[Result]) -> StackError:
    lines = [f"{len(failed)} required prerequisite(s) missing or unusable:"]
    for r in failed:
        wanted = "" if str(r.need.range) == "any" else f", wanted {r.need.range}"
        lines.append(f"  {r.need.label}: {r.status} ({r.found}{wanted}; "
                     f"for {', '.join(r.need.why)})")
        lines.extend(_fix_lines(r, "      "))
    missing = [r.need.prereq for r in failed if r.status == "MISSING"]
    hint = "install what is missing and run doit again"
    apt = " ".join(dict.fromkeys(p.apt for p in missing if p.apt))
    dnf = " ".join(dict.fromkeys(p.dnf for p in missing if p.dnf))
    if len(missing) > 1 and (apt or dnf):
        hint += "; all the missing packages at once:"
        if apt:
            hint += f"\n  Debian/Ubuntu: {_sudo()}apt-get install {apt}"
        if dnf:
            hint += f"\n  Fedora:        {_sudo()}dnf install {dnf}"
    return StackError("\n".join(lines), hint=hint)


def _check(ws: Workspace) -> Done:
    started = time.monotonic()
    items = snapshot(ws)
    key = make_key(items)
    results = evaluate(ws, items)
    report = "\n".join(render(results, time.monotonic() - started))
    log = ws.log(TASK)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(report + "\n")
    say(report)
    failed = [r for r in results if r.problem and r.need.required]
    if failed:
        raise failure(failed)
    # What each part's requirements were found at, for the build cache's key.
    probes, versions = probe_versions(ws, items), {}  # probes: cached by now
    for r in results:
        probed = probes.get(r.item.probe_key) or {} if r.item.probe_key else {}
        version = (r.item.found.version if r.item.found else None) or probed.get("version")
        for who in r.need.why:
            versions.setdefault(who, {})[r.need.label] = version or "present"
    return Done(key, {"versions": versions})


def task(ws: Workspace) -> dict:
    return {
        "doc": "check the tools, libraries and devices the stack needs "
               "(found, wanted, how to install)",
        "actions": [step(ws, TASK, lambda: _check(ws))],
        "uptodate": [_uptodate(ws)],
    }
