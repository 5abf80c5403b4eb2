"""bisect:NAME good=REF bad=REF [test=smoke|image_boot|CMD]: the commit of
NAME that broke the stack, every other component held at its locked commit.

Everything happens in a workspace of the bisect's own,
``<workdir>/bisect/NAME/``: ``work/`` is the workdir of a stack that is the
user's with three changes (its destdir is ``root/``, its lock is
``stack.lock`` there, its image is written under ``work/``; a build cache is
pulled from but never pushed to), ``bisect.json`` records the session (the
refs, the test, every step and its verdict), ``memo.json`` the verdict of
every tree tested, and ``logs/`` a log per step.  The checkouts there are
repositories that read the user's checkouts' objects (git's alternates):
nothing is cloned or fetched for a commit the user's checkout already has.
The user's checkout, stack.lock, stamps and installs are only read, so they
are exactly as before afterwards, and a bisect killed at any point (Ctrl-C,
``kill -9``) leaves them so by construction; the next ``doit bisect:NAME``
resumes from the steps recorded, and ``doit bisect:NAME abort=1`` drops the
whole workspace.

Each step picks the commit that best halves what is left (``git rev-list
--bisect-all``, as ``git bisect`` does), records it in the bisect's lock and
runs doit on the bisect's stack for the ``smoke`` task, in this process:
fetch, patch, build and install redo only what that commit makes stale, into
``root/``, with their usual logs and progress display; the smoke is the
test: the stack's own ``smoke`` section (``test=smoke``, the default when
there is one), an ``image_boot`` (``test=image_boot``), or a shell command
(``test=CMD``, run in the stack file's folder with the bisect's install first
on PATH).  The verdict: the test passed, good; it failed, bad; a patch series
that does not apply, a build or install that fails, a test still running
after ``timeout=SECONDS`` (default: the smoke section's, else 600), or a
command exiting 125 (``git bisect run``'s "cannot test"), skip.  A commit
whose tree was tested before (in this session or an earlier one, with the
same test, patches and locked components) takes that verdict without a build.
"""

from __future__ import annotations

import contextvars
import dataclasses
import hashlib
import json
import math
import shutil
import time
from pathlib import Path

from .. import git, run
from ..action import step, task_id
from ..errors import StackError
from ..lockfile import LockFile
from ..model import Component, Smoke, SmokeCommand, Stack
from ..state import JsonFile, atomic_write, digest
from ..workspace import Workspace

GOOD, BAD, SKIP = "good", "bad", "skip"
TESTS = ("smoke", "image_boot")  # anything else given as test= is a shell command


class Place:
    """Where the bisect of one component lives: ``<workdir>/bisect/NAME/``."""

    def __init__(self, ws: Workspace, name: str):
        self.root = ws.workdir / "bisect" / name
        self.work = self.root / "work"  # the bisect stack's workdir
        self.dest = self.root / "root"  # its destdir
        self.logs = self.root / "logs"  # one log per step
        self.lock = self.root / "stack.lock"
        self.record = JsonFile(self.root / "bisect.json")  # status reads it too
        self.memo = JsonFile(self.root / "memo.json")

    def checkout(self, name: str) -> Path:
        return self.work / "src" / name

    def smoke_result(self) -> JsonFile:
        """What the smoke of the bisect's stack recorded (steps/smoke.py
        writes ``<workdir>/state/smoke.json``)."""
        return JsonFile(self.work / "state" / "smoke.json")


def _say(name: str, text: str) -> None:
    run.say(f"{task_id('bisect', name)}: {text}")


# --------------------------------------------------------------------------
# The bisect's stack: the user's, with a workdir, destdir and lock of its own


def smoke_for(ws: Workspace, test: str) -> Smoke:
    """The smoke the bisect runs at each step for ``test=``."""
    if test == "smoke":
        if ws.stack.smoke is None:
            raise StackError("test=smoke: stack.yaml has no 'smoke' section",
                             hint="add one (docs/smoke-bisect.md), or give test=image_boot or "
                                  "test='COMMAND' (exit 0: good, 125: skip, else bad)")
        return ws.stack.smoke
    if test == "image_boot":
        if ws.stack.image is None:
            raise StackError("test=image_boot: stack.yaml has no 'image' section to boot")
        return Smoke(image_boot=True)
    return Smoke(commands=(SmokeCommand(test),))


def bisect_stack(ws: Workspace, place: Place, smoke: Smoke) -> Stack:
    s = ws.stack
    cache = s.settings.cache and dataclasses.replace(s.settings.cache, push=False)
    settings = dataclasses.replace(s.settings, workdir=place.work, destdir=str(place.dest),
                                   cache=cache)
    image = s.image and dataclasses.replace(s.image,
                                            output=place.work / "image" / s.image.output.name)
    return dataclasses.replace(s, settings=settings, image=image, smoke=smoke, lock=place.lock)


def _series_digest(ws: Workspace, c: Component) -> list[list[str]]:
    out = []
    for p in c.patches:
        file = p.file if p.component is None else ws.checkout(p.component) / p.path
        try:
            data = file.read_bytes()
        except OSError as err:
            raise StackError(f"{c.name}: cannot read patch {p.path}: {err.strerror}") from None
        out.append([p.path, hashlib.sha256(data).hexdigest()[:24]])
    return out


def locked_others(ws: Workspace, c: Component) -> dict[str, str]:
    """Every other component's locked commit: what the bisect holds fixed."""
    locked, missing = {}, []
    for other in ws.stack.components.values():
        if other.name == c.name:
            continue
        commit = ws.lockfile.commit_for(other.name, other.git, other.ref)
        if commit is None:
            missing.append(other.name)
        else:
            locked[other.name] = commit
    if missing:
        raise StackError(f"bisect:{c.name} holds every other component at the commit stack.lock "
                         f"records, and {', '.join(missing)} has none yet",
                         hint="run doit fetch first (or plain doit)")
    return locked


def _nothing() -> None:
    pass


def run_doit(stack: Stack, argv: list[str]) -> tuple[int, list]:
    """doit (this tool's loader) on ``stack``, in this process: its exit code
    and the summary of the steps that ran (``session.Run.summary``)."""
    from doit.doit_cmd import DoitMain

    from .. import loader as tool

    class Loader(tool.StackLoader):
        """The user's stack file is validated as usual; the tasks are made
        for the bisect's stack, with its own database."""

        def load_doit_config(self):
            config = super().load_doit_config()
            self.stack, self.keep = stack, _nothing
            self.dep_file = config["dep_file"] = str(stack.settings.workdir / ".doit.db")
            return config

    class Main(DoitMain):
        BIN_NAME = "doit"

    nested = Loader(close_at_exit=False)

    def once() -> int:
        try:
            return Main(nested, config_filenames=(), extra_config=tool.doit_config()).run(argv)
        finally:
            nested.close()

    code = contextvars.copy_context().run(once)
    rows = list(nested.runs[-1].summary) if nested.runs else []
    return code or 0, rows


# --------------------------------------------------------------------------
# One bisect


class Bisect:
    def __init__(self, ws: Workspace, c: Component):
        self.ws, self.c = ws, c
        self.name = c.name
        self.place = Place(ws, c.name)
        self.tid = task_id("bisect", c.name)

    @property
    def repo(self) -> Path:
        """The bisect's own repository of NAME: rev-list and commit info."""
        return self.place.checkout(self.name)

    # -- starting, resuming ---------------------------------------------------

    def session(self) -> dict:
        """The record to work on: the one under way (resumed), or a new one."""
        ws, name = self.ws, self.name
        record = self.place.record.read()
        good_ref, bad_ref = ws.run.var("good"), ws.run.var("bad")
        test = ws.run.var("test")
        if record and not (good_ref or bad_ref or test):
            return record  # doit bisect:NAME: the one there, as it was
        if not good_ref or not bad_ref:
            raise StackError(f"bisect:{name} needs the two ends: good=REF (a commit that "
                             "works) and bad=REF (one that does not)",
                             hint=f"doit bisect:{name} good=v1.0 bad=main [test=smoke|"
                                  "image_boot|'COMMAND']")
        test = test or "smoke"
        self.prepare()
        good, bad = self.resolve(good_ref), self.resolve(bad_ref)
        if good == bad:
            raise StackError(f"good={good_ref} and bad={bad_ref} are the same commit "
                             f"({good[:12]})")
        if not git.is_ancestor(self.repo, good, bad):
            raise StackError(f"good={good_ref} ({good[:12]}) is not an ancestor of "
                             f"bad={bad_ref} ({bad[:12]}) in {name}'s history",
                             hint="give an older good commit, or swap them if the newer one "
                                  "is the good one")
        same = record and record.get("good") == [good] and record.get("bad") == bad \
            and record.get("test") == test
        if same:
            return record
        if record and not record.get("result"):
            raise StackError(
                f"a bisect of {name} is under way: good={record.get('good_ref')} "
                f"bad={record.get('bad_ref')} test={record.get('test')}, "
                f"{len(record.get('steps', []))} step(s) done",
                hint=f"doit bisect:{name} resumes it; doit bisect:{name} abort=1 drops it, "
                     "then start the new one")
        return {"name": name, "good_ref": good_ref, "bad_ref": bad_ref, "good": [good],
                "bad": bad, "test": test, "started": time.time(), "steps": [],
                "result": None}

    def prepare(self) -> None:
        """The bisect's checkouts: repositories reading the user's objects."""
        for other in self.ws.stack.components.values():
            mine, theirs = self.place.checkout(other.name), self.ws.checkout(other.name)
            if git.is_repo(theirs) and not git.borrows(mine):
                if mine.exists():  # made by a bisect killed half-way, or fetched before
                    shutil.rmtree(mine)
                mine.parent.mkdir(parents=True, exist_ok=True)
                git.borrowing_repo(mine, theirs)

    def resolve(self, ref: str) -> str:
        """``ref`` of NAME: as the user's checkout names it, else fetched
        from upstream into the bisect's repository."""
        theirs = self.ws.checkout(self.name)
        found = git.commit_named(theirs, ref) if git.is_repo(theirs) else None
        if found:
            return found
        log, label = self.place.logs / "fetch.log", f"{self.tid}: "
        git.ensure_repo(self.repo, self.c.git, log, label)
        found = git.commit_named(self.repo, ref)
        if found:
            return found
        remote = git.ls_remote(self.repo, ref)
        if remote is None and not git.HEXISH.match(ref):
            raise StackError(f"{self.name}: '{ref}' names no commit in its checkout, nor at "
                             f"{self.c.git}", hint="give a tag, branch or commit of "
                                                   f"{self.name}")
        return git.fetch(self.repo, log, label, remote, ref, 0)

    # -- the loop -----------------------------------------------------------------

    def run(self) -> None:
        ws, name, place = self.ws, self.name, self.place
        if self.c.depth:
            raise StackError(f"bisect:{name} needs {name}'s history, and its checkout is "
                             f"shallow (depth: {self.c.depth})",
                             hint=f"set depth: 0 for {name} in stack.yaml, run doit fetch:"
                                  f"{name}, then bisect")
        record = self.session()
        self.prepare()
        # Every candidate is held by the bad end: a step that leaves the
        # checkout at a commit whose series did not apply is then no
        # obstacle to the next step's move.
        git.hold(self.repo, "kps-bisect/bad", record["bad"])
        smoke = smoke_for(ws, record["test"])
        locked = locked_others(ws, self.c)
        context = self.context(smoke, locked)
        if record["steps"] and record.get("context") != context:
            _say(name, f"the stack changed since this bisect started (its test, {name}'s "
                       "patches or definition, or another component): its "
                       f"{len(record['steps'])} step(s) no longer hold; starting over")
            record.update(steps=[], result=None, started=time.time())
        record["context"] = context
        stack = bisect_stack(ws, place, smoke)
        lock = LockFile(place.lock, ws.stack.path.name)
        names = set(ws.stack.components)
        for other, commit in locked.items():
            o = ws.stack.components[other]
            lock.record(other, o.git, o.ref, commit, keep=names)
        steps = record["steps"]
        if steps and not record.get("result"):
            _say(name, f"resuming the bisect started {_when(record['started'])}: "
                       f"{len(steps)} step(s) done (doit bisect:{name} abort=1 drops it)")
        self.save(record)
        for s in steps:
            self.show(s)
        if not record.get("result"):
            self.loop(record, stack, lock, context, names)
        self.conclude(record)

    def context(self, smoke: Smoke, locked: dict[str, str]) -> str:
        """What a verdict depends on besides NAME's tree: the test, NAME's
        patches and definition (not its pin), the other components as
        defined and locked, and the rest of the stack."""
        s = self.ws.stack
        parts = {n: dataclasses.replace(o, ref="" if n == self.name else o.ref, line=0)
                 for n, o in s.components.items()}
        return digest({"test": json.loads(json.dumps(dataclasses.asdict(smoke))),
                       "locked": locked, "patches": _series_digest(self.ws, self.c),
                       "stack": repr([parts, s.image, s.configs, s.pod, s.debug]),
                       "prefix": s.settings.prefix})

    def state(self, record: dict) -> tuple[list[str], str, set[str]]:
        goods, bad, skips = list(record["good"]), record["bad"], set()
        for s in record["steps"]:
            if s["verdict"] == GOOD:
                goods.append(s["commit"])
            elif s["verdict"] == BAD:
                bad = s["commit"]
            else:
                skips.add(s["commit"])
        return goods, bad, skips

    def loop(self, record: dict, stack: Stack, lock: LockFile, context: str, names) -> None:
        name = self.name
        while True:
            goods, bad, skips = self.state(record)
            order = git.bisect_order(self.repo, bad, goods)
            left = [x for x in order if x != bad and x not in skips]
            if not left:
                break
            commit = left[0]
            n = len(record["steps"]) + 1
            info = git.commit_info(self.repo, commit)
            _say(name, f"step {n}: testing {commit[:12]} {info.subject} ({len(left)} commit(s) "
                       f"left to test, about {math.ceil(math.log2(len(order)))} step(s))")
            started = time.monotonic()
            tree = git.tree_of(self.repo, commit)
            memo = self.place.memo.read()
            seen = memo.get(digest([context, tree]))
            if isinstance(seen, dict) and seen.get("verdict") in (GOOD, BAD, SKIP):
                verdict, why = seen["verdict"], (f"{seen.get('why')}; the same tree as "
                                                 f"{str(seen.get('commit'))[:12]}, tested before")
                log = seen.get("log")
            else:
                lock.record(name, self.c.git, self.c.ref, commit, keep=names)
                verdict, why, log = self.test(stack, commit, n, info)
                memo[digest([context, tree])] = {"verdict": verdict, "why": why,
                                                 "commit": commit, "log": log}
                self.place.memo.write(memo)
            s = {"n": n, "commit": commit, "subject": info.subject, "verdict": verdict,
                 "why": why, "seconds": round(time.monotonic() - started, 1), "log": log}
            record["steps"].append(s)
            self.save(record)
            self.show(s)

    def test(self, stack: Stack, commit: str, n: int, info: git.CommitInfo):
        """Build ``commit`` in the bisect's workspace and run the test:
        (verdict, why, the step's log)."""
        argv = ["run", f"stack={self.ws.stack.path}", "smoke"]
        for var in ("timeout", "accel"):
            if self.ws.run.var(var):
                argv.append(f"{var}={self.ws.run.var(var)}")
        code, rows = run_doit(stack, argv)
        failed = [r for r in rows if not r[2]]
        smoke = task_id("smoke")
        if code == 0:
            verdict, why, log = GOOD, "the test passed", stack.settings.workdir / "logs/smoke.log"
            if not any(r[0] == smoke for r in rows):
                why += " (up to date: the same installs as a step before)"
        elif any(r[0] == smoke for r in failed):
            result = self.place.smoke_result().read()
            checks = [c for c in result.get("checks", []) if not c.get("passed")]
            log = next(r[3] for r in failed if r[0] == smoke)
            if any(c.get("timed_out") for c in checks):
                verdict, why = SKIP, "the test " + checks[0]["why"].replace(
                    "still running", "was still running")
            elif any(c.get("skip") for c in checks):
                verdict, why = SKIP, "the test exited 125: it cannot test this commit"
            else:
                verdict = BAD
                why = "; ".join(f"{c.get('check')}: {c.get('why')}" for c in checks) or \
                    "the test failed"
        elif failed:
            tid, log = failed[0][0], failed[0][3]
            verdict = SKIP
            why = (f"the patch series does not apply ({tid})" if tid.startswith("patch:")
                   else f"{tid} failed")
        else:
            raise StackError(f"bisect:{self.name}: doit could not run for {commit[:12]} (exit "
                             f"code {code}; see above)",
                             hint=f"fix what it says, then doit bisect:{self.name} resumes")
        return verdict, why, str(self.keep_log(n, commit, info, verdict, why, Path(log)))

    def keep_log(self, n: int, commit: str, info, verdict: str, why: str, log: Path) -> Path:
        """The step's log: what decided its verdict (the test's transcript, or
        the log of the task that failed), kept apart from the next step's."""
        kept = self.place.logs / f"step-{n:02d}-{commit[:12]}.log"
        try:
            text = log.read_text(errors="replace")
        except OSError:
            text = "(no log)\n"
        atomic_write(kept, f"# bisect:{self.name} step {n}: {commit} {info.subject}\n"
                           f"# verdict: {verdict}: {why}\n# from {log}\n\n{text}")
        return kept

    def save(self, record: dict) -> None:
        self.place.record.write(record)

    def show(self, s: dict) -> None:
        _say(self.name, f"step {s['n']}: {s['commit'][:12]} {s['subject']}: {s['verdict']} "
                        f"({s['why']}; {s['seconds']} s; log: {run.shown_path(Path(s['log']))})")

    # -- the end ----------------------------------------------------------------

    def conclude(self, record: dict) -> None:
        goods, bad, skips = self.state(record)
        order = git.bisect_order(self.repo, bad, goods)
        steps = record["steps"]
        took = sum(s["seconds"] for s in steps)
        verdicts = {s["commit"]: s for s in steps}
        if len(order) <= 1:
            info = git.commit_info(self.repo, bad)
            record["result"] = {"first_bad": bad}
            lines = [f"the first bad commit is {bad}", f"    {info.subject}",
                     f"    author: {info.author}, {info.date}"]
        else:
            record["result"] = {"range": order}
            lines = ["the first bad commit cannot be told: skipped commits hide it; it is one "
                     "of these:"]
            for commit in reversed(order):  # oldest first
                info = git.commit_info(self.repo, commit)
                s = verdicts.get(commit)
                why = f"{s['verdict']}: {s['why']}" if s else \
                    "bad (bad=)" if commit == bad else "not tested"
                lines.append(f"    {commit[:12]} {info.subject} ({info.author}): {why}")
        lines.append(f"({len(steps)} step(s), {took:.1f} s; {self.name}'s checkout, "
                     "stack.lock, the stamps and the installs were not touched; doit "
                     f"bisect:{self.name} abort=1 removes the bisect's workspace "
                     f"{run.shown_path(self.place.root)})")
        self.save(record)
        _say(self.name, "\n".join(lines))


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


def abort(ws: Workspace, c: Component) -> None:
    """Drop the bisect of ``c``: its workspace, and what a killed one left running."""
    place = Place(ws, c.name)
    if not place.root.exists():
        _say(c.name, "there is no bisect to drop")
        return
    for command in run.reap(place.work / "state" / "running"):
        _say(c.name, f"stopped a command left running by an interrupted bisect: {command}")
    shutil.rmtree(place.root)
    _say(c.name, f"dropped: its workspace {run.shown_path(place.root)} is removed; "
                 f"{c.name}'s checkout, stack.lock, the stamps and the installs were never "
                 "touched")


def _bisect(ws: Workspace, c: Component) -> None:
    tid = task_id("bisect", c.name)
    if tid not in ws.requested:
        raise StackError("a bisect runs for one component at a time, named",
                         hint="doit bisect:NAME good=REF bad=REF [test=smoke|image_boot|"
                              "'COMMAND']")
    if ws.run.flag("abort"):
        return abort(ws, c)
    try:
        Bisect(ws, c).run()
    except KeyboardInterrupt:
        run.say(f"\n{tid}: interrupted; the steps done are kept: doit {tid} resumes, "
                f"doit {tid} abort=1 drops the bisect")
        raise
    return None


def tasks(ws: Workspace):
    yield {"name": None, "doc": "bisect:NAME good=REF bad=REF [test=smoke|image_boot|CMD]: "
                                "the commit of NAME that broke the stack"}
    for c in ws.stack.components.values():
        yield {
            "name": c.name,
            "doc": f"find the commit of {c.name} between good=REF and bad=REF that breaks "
                   "test=smoke|image_boot|CMD, every other component at its locked commit, "
                   f"in a workspace of its own (<workdir>/bisect/{c.name}; abort=1 drops it); "
                   "the checkout, stack.lock, stamps and installs are left as they are",
            "actions": [step(ws, task_id("bisect", c.name), lambda c=c: _bisect(ws, c))],
        }
