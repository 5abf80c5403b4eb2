"""smoke: the stack's own end-to-end check, as stack.yaml's ``smoke`` section says.

Each check runs with the installed stack: ``image_boot`` boots the guest
image (as the ``image_boot`` task does), ``run_pod`` runs the example pod
(as ``run_pod`` does), checks that the container's ``ip addr`` shows what
``expect`` lists, and removes the pod again, and each of ``commands`` runs
in the stack file's folder with the installed programs first on PATH
(``$DESTDIR$PREFIX/bin`` and the other staged folders when destdir is set)
and must exit 0 and print what its ``expect`` lists.  Each check has
``timeout`` seconds (``timeout=SECONDS`` on the command line overrides it);
a command still running then is stopped with its process group.

The task depends on every install and config (and the image, when a check
uses it), and is up to date while what those recorded is the same (the
installed content, each config's key, the image's kernel and initrd) and
its own definition did not change: reading a few stamps, no process.  Every
run's result (passed or not, each check, the transcript, how long it took)
is kept in ``<workdir>/state/smoke.json``, which ``doit status`` shows; a
smoke that failed leaves no stamp, so it runs again next time.  Not part of
plain ``doit``: ``doit smoke`` asks for it.

The image and pod checks are the image and pod steps' own functions, which
dodo.py hands over (a step never imports another).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from .. import run
from ..action import Done, installs_of, step, task_id
from ..checkout import installed_of
from ..errors import CommandFailed, StackError
from ..model import Smoke, SmokeCommand
from ..state import Check, digest
from ..workspace import Workspace

TASK = task_id("smoke")
TRANSCRIPT_LIMIT = 32 * 1024  # of the transcript kept in the result; the log has all of it
KILL_AFTER = 5  # seconds between a timed-out command's SIGTERM and its SIGKILL
SKIP_CODE = 125  # a command's "cannot test this" (git bisect run's convention; bisect skips)
# Where a staged install puts programs, searched before the user's PATH.
BIN_DIRS = ("{prefix}/bin", "{prefix}/sbin", "/usr/local/bin", "/usr/local/sbin", "/usr/bin",
            "/usr/sbin", "/bin", "/sbin")


def result_file(ws: Workspace):
    """``<workdir>/state/smoke.json``: the last smoke's result (status reads it too)."""
    return ws.json("smoke")


def limit(ws: Workspace) -> int:
    """Seconds each check may take: ``timeout=`` on the command line, else
    the section's ``timeout``."""
    return ws.run.seconds("timeout", ws.stack.smoke.timeout)


def uses_image(smoke: Smoke) -> bool:
    return smoke.image_boot or smoke.run_pod is not None


def deps(ws: Workspace) -> list[str]:
    """Every install and config, and the image when a check boots or runs it."""
    out = [t for name in ws.stack.components for t in installs_of(ws, name)]
    if uses_image(ws.stack.smoke) and ws.stack.image is not None:
        out.append(task_id("image"))
    return out + [task_id("config", name) for name in ws.stack.configs]


def _stamp_digest(ws: Workspace, tid: str) -> str:
    stamp = ws.stamps.read(tid)
    if stamp is None:
        raise StackError(f"{tid} has not run yet")
    return digest({k: v for k, v in stamp.items() if k != "time"})


def smoke_key(ws: Workspace) -> dict:
    """The definition, and what each install, config and the image recorded."""
    smoke = ws.stack.smoke
    installed = {part: value for name in ws.stack.components
                 for part, value in installed_of(ws, name).items()}
    key = {
        "smoke": json.loads(json.dumps(dataclasses.asdict(smoke))),  # as the stamp has it
        "installs": installed,
        "configs": {n: _stamp_digest(ws, task_id("config", n)) for n in ws.stack.configs},
        "destdir": ws.settings.destdir,
        "prefix": ws.settings.prefix,
    }
    if uses_image(smoke) and ws.stack.image is not None:
        key["image"] = _stamp_digest(ws, task_id("image"))
    return key


def search_path(ws: Workspace) -> str:
    """PATH for the commands: the installed folders first."""
    current = os.environ.get("PATH", os.defpath)
    found = []
    for folder in BIN_DIRS:
        path = str(ws.stack.target(folder.format(prefix=ws.settings.prefix).replace("//", "/")))
        if path not in found and os.path.isdir(path) and (ws.settings.destdir or
                                                           folder.startswith("{prefix}")):
            found.append(path)
    return ":".join(found + [current])


# --------------------------------------------------------------------------
# The checks: each returns what happened, as a record for the result file


class _Transcript:
    """The smoke's log: every check's command, output and verdict."""

    def __init__(self, log: Path):
        self.log = log

    def size(self, path: Path | None = None) -> int:
        try:
            return (path or self.log).stat().st_size
        except OSError:
            return 0

    def write(self, text: str) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a", encoding="utf-8", errors="replace") as f:
            f.write(text if text.endswith("\n") else text + "\n")

    def read(self, path: Path, offset: int) -> str:
        try:
            data, _ = run.tail_bytes(path, 1 << 24, offset)
        except OSError:
            return ""
        return data.decode("utf-8", "replace")


def _expected(output: str, expect: tuple[str, ...]) -> list[str]:
    return [e for e in expect if e not in output]


def _verdict(name: str, started: float, passed: bool, why: str, **more) -> dict:
    return {"check": name, "passed": passed, "why": why,
            "seconds": round(time.monotonic() - started, 2), **more}


def _command(ws: Workspace, t: _Transcript, cmd: SmokeCommand, seconds: int) -> dict:
    name = f"command: {cmd.run}"
    started = time.monotonic()
    env = {"PATH": search_path(ws), "DESTDIR": ws.settings.destdir,
           "PREFIX": ws.settings.prefix, "WORKDIR": str(ws.workdir)}
    # coreutils' timeout stops the command's whole process group, so a
    # command that hangs (or leaves a child behind) ends in time.
    wrapped = f"timeout -k {KILL_AFTER} {seconds} sh -c {shlex.quote(cmd.run)}"
    t.write(f"\n## {name}")
    offset = t.size()
    code = 0
    try:
        run.run(wrapped, cwd=ws.stack.dir, log=t.log, env=env, label=f"{TASK}: ")
    except CommandFailed as err:
        code = err.code
    output = _output(t.read(t.log, offset))
    timed_out = code != 0 and time.monotonic() - started >= seconds
    if timed_out:
        return _verdict(name, started, False, f"still running after {seconds} s: stopped",
                        code=code, timed_out=True)
    if code:
        return _verdict(name, started, False, f"exit code {code}", code=code,
                        skip=code == SKIP_CODE)
    missing = _expected(output, cmd.expect)
    if missing:
        return _verdict(name, started, False, "its output lacks " + ", ".join(
            repr(m) for m in missing), code=0)
    return _verdict(name, started, True, "exit code 0" + (
        f", its output has {', '.join(repr(e) for e in cmd.expect)}" if cmd.expect else ""),
        code=0)


def _output(logged: str) -> str:
    """What a command printed: its log without the runner's header lines."""
    lines = logged.splitlines(keepends=True)
    while lines and (not lines[0].strip() or lines[0].startswith("### ")):
        lines.pop(0)
    return "".join(lines)


def _boot(ws: Workspace, t: _Transcript, boot: Callable, seconds: int) -> dict:
    started = time.monotonic()
    log = ws.log(task_id("image_boot"))
    offset = t.size(log)
    t.write("\n## image_boot")
    try:
        boot(ws, seconds)
        verdict = _verdict("image_boot", started, True, "the image booted to its agent")
    except StackError as err:
        verdict = _verdict("image_boot", started, False, err.message.splitlines()[0])
    t.write(f"(console: {log})\n" + t.read(log, offset)[-TRANSCRIPT_LIMIT:])
    return verdict


def _pod(ws: Workspace, t: _Transcript, pod: tuple[Callable, Callable],
         expect: tuple[str, ...]) -> dict:
    start, stop = pod
    started = time.monotonic()
    log = ws.log(task_id("run_pod"))
    offset = t.size(log)
    t.write("\n## run_pod")
    try:
        start(ws)
    except StackError as err:
        t.write(t.read(log, offset))
        return _verdict("run_pod", started, False, err.message.splitlines()[0])
    shown = t.read(log, offset)
    t.write(shown)
    missing = _expected(shown, expect)
    if missing:  # left running for inspection, as a failed run_pod leaves it
        return _verdict("run_pod", started, False, "the pod's ip addr lacks " + ", ".join(
            repr(m) for m in missing) + " (the pod is left running: doit stop_pod removes it)")
    try:
        stop(ws)
    except StackError as err:
        run.say(f"  {TASK}: the pod could not be removed: {err.message}")
    return _verdict("run_pod", started, True, "the pod ran" + (
        f", its ip addr has {', '.join(repr(e) for e in expect)}" if expect else ""))


# --------------------------------------------------------------------------
# The task


def _smoke(ws: Workspace, boot: Callable, pod: tuple[Callable, Callable]) -> Done:
    smoke = ws.stack.smoke
    key = smoke_key(ws)
    seconds = limit(ws)
    log = ws.log(TASK)
    t = _Transcript(log)
    t.write(f"# smoke at {time.strftime('%Y-%m-%d %H:%M:%S')}: each check within {seconds} s")
    when, started = time.time(), time.monotonic()
    checks = []
    if smoke.image_boot:
        checks.append(_boot(ws, t, boot, seconds))
    if smoke.run_pod is not None:
        checks.append(_pod(ws, t, pod, smoke.run_pod))
    for cmd in smoke.commands:
        checks.append(_command(ws, t, cmd, seconds))
    passed = all(c["passed"] for c in checks)
    for c in checks:
        line = f"{'ok  ' if c['passed'] else 'FAIL'} {c['check']}: {c['why']} ({c['seconds']} s)"
        t.write(line)
        run.say(f"  {TASK}: {line}")
    record = {"passed": passed, "when": when, "seconds": round(time.monotonic() - started, 2),
              "checks": checks, "log": str(log),
              "transcript": t.read(log, 0)[-TRANSCRIPT_LIMIT:]}
    result_file(ws).write(record)
    if not passed:
        failed = [c for c in checks if not c["passed"]]
        raise StackError(
            f"the smoke check failed: {len(failed)} of {len(checks)} check(s):\n"
            + "\n".join(f"  {c['check']}: {c['why']}" for c in failed),
            hint=f"the transcript is in {log}; doit smoke runs it again")
    return Done(key, {"passed": True})


def _no_smoke():
    raise StackError("stack.yaml has no 'smoke' section",
                     hint="add one, e.g. smoke: {commands: [{run: 'passt --version', "
                          "expect: [passt]}]} (docs/smoke-bisect.md)")


def task(ws: Workspace, boot: Callable, pod: tuple[Callable, Callable]) -> dict:
    """``smoke``; ``boot(ws, timeout)`` boots the image, ``pod`` is
    (run_pod(ws), stop_pod(ws)): the image and pod steps' own."""
    if ws.stack.smoke is None:
        return {"doc": "the stack's end-to-end check (stack.yaml has no 'smoke' section)",
                "actions": [step(ws, TASK, _no_smoke)]}
    smoke = ws.stack.smoke
    what = (["boots the image"] if smoke.image_boot else []) \
        + (["runs the pod"] if smoke.run_pod is not None else []) \
        + ([f"runs {len(smoke.commands)} command(s)"] if smoke.commands else [])
    return {
        "doc": f"the stack's end-to-end check: {', '.join(what)} with the installed stack; "
               "reruns when an install, config or the image it uses, or the smoke section, "
               "changed, or when it failed",
        "actions": [step(ws, TASK, lambda: _smoke(ws, boot, pod))],
        "task_dep": deps(ws),
        "uptodate": [Check(ws.stamps, TASK, partial(smoke_key, ws))],
    }
