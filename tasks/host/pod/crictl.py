"""crictl, as the pod tasks use it: a transcript of every command, and a
small client that knows crictl's ways.

crictl reads global flags before the subcommand and a subcommand's flags
before its arguments (flags after the first argument are silently ignored),
and its request timeout of 2 s (doubled for ``runp``) is too short for
booting a VM: ``crictl_argv()`` puts ours first.
"""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

from ... import run
from ...errors import CommandFailed, StackError
from ...workspace import Workspace

ID_RE = re.compile(r"^[0-9a-f]{12,64}$")


def crictl_argv(socket: str, timeout: int) -> list[str]:
    """crictl with our endpoint and request timeout (a duration)."""
    endpoint = f"unix://{socket}"
    return ["crictl", "--runtime-endpoint", endpoint, "--image-endpoint", endpoint,
            f"--timeout={timeout}s"]


class Shell:
    """The pod tasks' commands, run through the runner as root (through sudo
    when needed), with a transcript (command, exit code, output) for the
    task's log and the diagnostics folder.

    The transcript holds commands (``$ ...``, counted in ``commands``) and
    notes (``# ...``, not counted).  A probe (``crictl version``: does CRI-O
    answer?) is a command that only looks: its line ends in ``# probe: WHY``
    and it is counted in ``probes`` too."""

    def __init__(self, ws: Workspace, task: str):
        self.log = ws.log(task)
        self.label = f"{task}: "
        self.transcript: list[str] = []
        self.commands = 0
        self.probes = 0
        self.sudo = run.need_root(task, ws.settings.sudo, "CRI-O, its socket and the pod's "
                                  "network namespace belong to root")

    def argv(self, argv: list[str]) -> list[str]:
        return run.as_root(argv, self.sudo)

    def note(self, text: str) -> None:
        self._write("".join(f"# {line}\n" for line in text.splitlines() or [""]))

    def say(self, text: str) -> None:
        """Tell the user, and keep it in the log."""
        run.say(text)
        self.note(text)

    def _command(self, shown: str, probe: str | None = None) -> str:
        self.commands += 1
        if probe:
            self.probes += 1
            return f"$ {shown}    # probe: {probe}\n"
        return f"$ {shown}\n"

    def _write(self, text: str) -> None:
        self.transcript.append(text)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a", encoding="utf-8", errors="replace") as f:
            f.write(text)

    def query(self, argv: list[str], *, check: bool = True, quiet: bool = False,
              record: bool = True, hint: str | None = None,
              probe: str | None = None) -> run.Result:
        """``run.query`` through sudo when needed, kept in the transcript."""
        full = self.argv(argv)
        shown = shlex.join(full)
        if not quiet:
            run.say(f"  {self.label}$ {shown}")
        started = time.monotonic()
        try:
            res = run.query(full, check=False)
        except run.ProgramMissing:
            self._write(self._command(shown, probe) + f"# {full[0]}: command not found\n\n")
            raise StackError(f"{full[0]}: command not found (wanted for: {shown})",
                             hint=hint or f"install {full[0]} (doit install), and make sure "
                                          "the folder it is installed in is on PATH") from None
        if record:
            text = self._command(shown, probe) + \
                f"# exit {res.code} after {time.monotonic() - started:.1f} s\n"
            for name, value in (("stdout", res.out), ("stderr", res.err)):
                if value:
                    text += f"--- {name}\n{value.rstrip(chr(10))}\n"
            self._write(text + "\n")
        if check and res.code != 0:
            raise CommandFailed(shown, res.code, (res.err or res.out).strip(), str(self.log),
                                hint)
        return res

    def start(self, argv: list[str], log: Path):
        self._write(self._command(f"{shlex.join(self.argv(argv))} >> {log} 2>&1 &")
                    + "# started in the background\n\n")
        return run.start(argv, log=log, sudo=self.sudo, label=self.label)

    def kill(self, pid: int, sig) -> bool:
        self._write(self._command(shlex.join(self.argv(["kill", f"-{sig.name[3:]}",
                                                         str(pid)]))) + "\n")
        return run.kill(pid, sig, sudo=self.sudo)


class Crictl:
    def __init__(self, shell: Shell, socket: str, timeout: int):
        self.shell = shell
        self.base = crictl_argv(socket, timeout)

    def __call__(self, *args: str, check: bool = True, quiet: bool = False,
                 hint: str | None = None, probe: str | None = None) -> run.Result:
        return self.shell.query(self.base + list(args), check=check, quiet=quiet, hint=hint,
                                probe=probe)

    def id(self, what: str, *args: str, hint: str | None = None) -> str:
        """Run a command that prints an ID; the ID, checked."""
        res = self(*args, hint=hint)
        lines = [line.strip() for line in res.out.splitlines() if line.strip()]
        if not lines or not ID_RE.match(lines[-1]):
            raise StackError(f"crictl {args[0]} printed no {what} ID:\n"
                             + (res.out + res.err).strip()[-2000:],
                             hint=f"see {self.shell.log}")
        return lines[-1]

    def pods(self, *flags: str) -> list[str]:
        return [line.strip() for line in self("pods", "-q", *flags, quiet=True).out.splitlines()
                if line.strip()]


def netns_path(inspect: dict) -> str | None:
    """The pod's network namespace path in ``crictl inspectp`` output
    (``info.runtimeSpec.linux.namespaces[type=network].path`` from CRI-O)."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "network" and isinstance(node.get("path"), str):
                found.append(node["path"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(inspect)
    return next((p for p in found if p), None)
