"""One small error hierarchy: every failure the user can cause or meet.

Each error carries a message meant for a person and, where there is one, a hint
saying what to do next.  Nothing here formats tracebacks: callers print
``str(err)`` and stop.
"""

import signal


class StackError(Exception):
    """Base of every error this tool reports to the user."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\nHint: {self.hint}"
        return self.message


class SpecError(StackError):
    """stack.yaml is invalid: one line per problem, all reported at once."""

    def __init__(self, path, problems: list[str]):
        self.path = path
        self.problems = problems
        lines = "\n".join(problems)
        super().__init__(f"{path}: {len(problems)} problem(s)\n{lines}")


class CommandFailed(StackError):
    """A build, install or git command exited non-zero."""

    def __init__(self, command: str, code: int, tail: str, log: str | None, hint=None):
        self.command = command
        self.code = code
        self.tail = tail
        self.log = log
        if code >= 0:
            message = f"command failed with exit code {code}: {command}"
        else:  # ended by a signal (subprocess's negative return code)
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            message = f"command was killed by {name}: {command}"
        if tail:
            message += "\n--- last lines of output ---\n" + tail.rstrip("\n")
        if log:
            message += f"\n--- full log: {log}"
        super().__init__(message, hint)


class GitError(StackError):
    """Fetching or resolving a ref went wrong."""


class PatchFailed(StackError):
    """A patch in a component's series does not apply."""


class DirtyCheckout(StackError):
    """A step would have to move a checkout that holds local edits."""


class LockHeld(StackError):
    """Another doit run holds the workdir."""


class ConfigError(StackError):
    """A configuration file could not be written safely."""


def closest(word, choices) -> str | None:
    """The choice a mistyped ``word`` most likely meant, or None."""
    import difflib

    match = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return match[0] if match else None


def did_you_mean(word, choices) -> str:
    """`` (did you mean 'x'?)`` when a choice is close to ``word``, else ``""``."""
    guess = closest(word, choices)
    return f" (did you mean '{guess}'?)" if guess else ""
