"""config:NAME: the host's configuration files, written from stack.yaml.

Each file is computed from its ``base`` (an installed default, read as it
is on disk now), the ``set`` values after ``${...}`` substitution, and the
``unset`` keys (see docedit.py for how the document is edited).  The task is
stale when any of these changes (the base by content, the values after
substitution, so a new image kernel rewrites the Kata file), or when the
file is missing.

Never lose a hand edit: files are written through ``host/configs/confwrite.py``,
which refuses to overwrite a file edited by hand (``doit config:NAME
force=1`` saves it first), and writes atomically.

With ``debug.qemu_log`` a wrapper script around QEMU is written too
(``config:qemu-wrapper``), and ``${qemu.path}`` names it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from functools import partial
from pathlib import Path

from ..action import installs_of, step, task_id
from ..errors import ConfigError, StackError
from ..host import runtime
from ..model import VAR_RE as _VAR_RE
from ..model import WRAPPER, Config, variables_in
from ..run import say
from ..state import Check, digest
from ..workspace import Workspace

WRAPPER_TEMPLATE = "qemu-wrapper.sh"
WRAPPER_PATH = "{prefix}/libexec/kata-passt-stack/qemu-system-x86_64"
_ONE_VAR_RE = re.compile(r"\$\{([^}]*)\}")


# --------------------------------------------------------------------------
# ${...} variables


class Values:
    """The variables' values for one run, looked up when first used."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self._cache: dict[str, object] = {}
        self.used: set[str] = set()

    def get(self, name: str):
        self.used.add(name)
        if name not in self._cache:
            self._cache[name] = self._resolve(name)
        return self._cache[name]

    def _resolve(self, name: str):
        ws, debug = self.ws, self.ws.stack.debug
        if name in ("image.kernel", "image.initrd"):
            value = ws.stamps.produced(task_id("image"), name.split(".")[1]) \
                if ws.stack.image else None
            if not value:
                raise StackError("the image is not built yet (its kernel and initrd are "
                                 "not known)")
            return value
        if name == "settings.prefix":
            return ws.settings.prefix
        if name == "settings.destdir":
            return ws.settings.destdir
        if name == "detect.virtiofsd":
            return find_virtiofsd(ws)
        if name == "qemu.path":
            return qemu_path(ws)
        if name == "debug.kernel_params":
            return "console=ttyS0" if debug.qemu_log else ""
        if name == "debug.agent_debug_console":
            return debug.agent_debug_console
        raise StackError(f"unknown variable ${{{name}}}")


def substitute(value, values: Values, where: str = ""):
    """``value`` with its variables replaced.  A string that is exactly one
    variable takes the variable's type; ``$${`` is a literal ``${``."""
    if isinstance(value, dict):
        return {k: substitute(v, values, f"{where}.{k}" if where else str(k))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [substitute(v, values, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    one = _ONE_VAR_RE.fullmatch(value)
    if one:
        return _value(values, one.group(1).strip(), where)

    def replace(m):
        if m.group(1) is None:
            return "${"
        return _text(_value(values, m.group(1).strip(), where))
    return _VAR_RE.sub(replace, value)


def _value(values: Values, name: str, where: str):
    try:
        return values.get(name)
    except StackError as err:
        raise StackError(f"set.{where}: ${{{name}}}: {err.message}", err.hint) from None


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def qemu_path(ws: Workspace) -> str:
    """The stack's QEMU, else the distribution's (host/runtime.py's rule);
    the logging wrapper around it with debug.qemu_log."""
    if ws.stack.debug.qemu_log:
        return WRAPPER_PATH.format(prefix=_prefix(ws))
    return runtime.qemu(ws.stack)[0]


def _prefix(ws: Workspace) -> str:
    return ws.settings.prefix.rstrip("/")


def find_virtiofsd(ws: Workspace) -> str:
    """The first virtiofsd present on the target system: QEMU's own, then
    the distributions' (host/runtime.py's rule); its path there."""
    found = runtime.virtiofsd(ws.stack)
    if found:
        return found.path
    looked = runtime.looked_at(ws.stack, runtime.candidates(
        ws.stack, runtime.VIRTIOFSD, runtime.DISTRO_VIRTIOFSD))
    raise StackError(f"no executable virtiofsd found (looked at {looked})",
                     hint="install the qemu component (its build makes virtiofsd) or your "
                          "distribution's virtiofsd package")


# --------------------------------------------------------------------------
# Keys and checks


def _base_text(ws: Workspace, cfg: Config) -> tuple[Path | None, str | None]:
    if cfg.base is None:
        return None, None
    path = ws.stack.target(cfg.base)
    try:
        return path, path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StackError(f"its base {path} does not exist",
                         hint=f"the base is an installed default: list the component that "
                              f"installs it in configs.{cfg.name}.needs") from None
    except (OSError, UnicodeDecodeError) as err:
        raise StackError(f"cannot read its base {path}: {err}") from None


def config_key(ws: Workspace, cfg: Config, values: Values | None = None) -> dict:
    path, text = _base_text(ws, cfg)
    base = None
    if path is not None:
        base = {"path": str(path),
                "content": hashlib.blake2b(text.encode(), digest_size=12).hexdigest()}
    settings = substitute(cfg.set, values or Values(ws))
    return {
        "path": str(ws.stack.target(cfg.path)),
        "format": cfg.format,
        "base": base,
        "set": json.loads(json.dumps(settings, default=str)),
        "unset": list(cfg.unset),
        "create_only": cfg.create_only,
    }


def config_missing(ws: Workspace, cfg: Config) -> str | None:
    path = ws.stack.target(cfg.path)
    if not path.exists():
        return f"{path} is missing"
    return None


def _config_uptodate(ws: Workspace, cfg: Config) -> Check:
    """Stale when the base's content, the values (after substitution, so the
    image's kernel and initrd count), the unset keys or the format change,
    or when the file is missing."""
    return Check(ws.stamps, task_id("config", cfg.name), partial(config_key, ws, cfg),
                 partial(config_missing, ws, cfg))


def _write_config(ws: Workspace, cfg: Config, force: bool) -> dict:
    # The editors only when a config is written: a no-op does not import them.
    from ..host.configs.docedit import EditError, render

    tid = task_id("config", cfg.name)
    values = Values(ws)
    try:
        key = config_key(ws, cfg, values)
        path = ws.stack.target(cfg.path)
        if cfg.create_only and (path.exists() or path.is_symlink()):
            say(f"  {tid}: {path} exists; create_only: left as it is")
            return key
        _, base = _base_text(ws, cfg)
        text, notes = render(cfg.format, base, substitute(cfg.set, values), cfg.unset)
    except EditError as err:
        raise ConfigError(f"config '{cfg.name}': {err}",
                          hint=f"fix configs.{cfg.name} in {ws.stack.path.name}; "
                               "nothing was written") from None
    except StackError as err:
        raise ConfigError(f"config '{cfg.name}': {err.message}", err.hint) from None
    for note in notes:
        say(f"  {tid}: note: {note}")
    for warning in missing_paths(ws, values):
        say(f"  {tid}: warning: {warning}")
    install_text(ws, tid, cfg.name, path, text, force=force,
                 keep=f"put it into configs.{cfg.name} in {ws.stack.path.name} (set/unset)")
    return key


# Variables whose values are run-time paths, and whether each is a program
# (${image.initrd} is the image this tool just built: always there).
RUNTIME_PATHS = {"qemu.path": True, "detect.virtiofsd": True, "image.kernel": False}


def install_text(*args, **kwargs) -> None:
    """host/configs/confwrite.py's install_text, imported when a file is written."""
    from ..host.configs.confwrite import install_text

    install_text(*args, **kwargs)


def missing_paths(ws: Workspace, values: Values) -> list[str]:
    """The run-time paths this config names that are not on the target
    system (host/runtime.py's rule), in words."""
    out = []
    for name, program in RUNTIME_PATHS.items():
        if name not in values.used:
            continue
        value = str(values.get(name))
        if name == "qemu.path" and ws.stack.debug.qemu_log:
            continue  # the wrapper, written by config:qemu-wrapper
        if runtime.find(ws.stack, value, executable=program) is None:
            out.append(f"${{{name}}} is {value}, which is not on the target system "
                       f"(looked at {runtime.looked_at(ws.stack, [value])})"
                       + (": nothing in the stack installs it" if name == "qemu.path" else ""))
    return out


# --------------------------------------------------------------------------
# The QEMU wrapper (debug.qemu_log)


def wrapper_text(ws: Workspace) -> str:
    root = ws.stack.project or Path(__file__).resolve().parents[1]
    try:
        template = (root / "configs" / WRAPPER_TEMPLATE).read_text()
    except OSError as err:
        raise StackError(f"cannot read the QEMU wrapper's template: {err}") from None
    return (template.replace("@QEMU@", shlex.quote(runtime.qemu(ws.stack)[0]))
            .replace("@LOGS@", shlex.quote(str(ws.logs))))


def wrapper_key(ws: Workspace) -> dict:
    return {"path": str(ws.stack.target(WRAPPER_PATH.format(prefix=_prefix(ws)))),
            "content": digest(wrapper_text(ws))}


def wrapper_missing(ws: Workspace) -> str | None:
    path = Path(wrapper_key(ws)["path"])
    return None if path.exists() else f"{path} is missing"


def _wrapper_uptodate(ws: Workspace) -> Check:
    """Stale when the script's text (template, prefix, workdir) or its path
    changes, or when it is missing."""
    return Check(ws.stamps, task_id("config", WRAPPER), partial(wrapper_key, ws),
                 partial(wrapper_missing, ws))


def _write_wrapper(ws: Workspace, force: bool) -> dict:
    key = wrapper_key(ws)
    install_text(ws, task_id("config", WRAPPER), WRAPPER, Path(key["path"]), wrapper_text(ws),
                 mode=0o755, force=force,
                 keep=f"change configs/{WRAPPER_TEMPLATE} in this tool's folder instead")
    return key


# --------------------------------------------------------------------------
# Tasks


def _deps(ws: Workspace, cfg: Config) -> list[str]:
    deps = []
    for need in cfg.needs:
        if need == "image":
            deps.append(task_id("image"))
        else:
            deps.extend(installs_of(ws, need))
    used = {var for _, var in variables_in(cfg.set)}
    if any(var.startswith("image.") for var in used) and task_id("image") not in deps:
        deps.append(task_id("image"))
    if "qemu.path" in used and ws.stack.debug.qemu_log:
        deps.append(task_id("config", WRAPPER))
    return deps


def tasks(ws: Workspace):
    """config:NAME for each config, and config:qemu-wrapper with debug.qemu_log.
    ``force=1`` on the command line overwrites hand edits, saving them first."""
    forced = ws.run.flag("force")
    if ws.stack.debug.qemu_log:
        yield {
            "name": WRAPPER,
            "doc": "write the QEMU wrapper that logs the guest console (debug.qemu_log); "
                   "reruns when its text (template, prefix, workdir) or path changes, or it "
                   "is missing",
            "actions": [step(ws, task_id("config", WRAPPER),
                             lambda: _write_wrapper(ws, forced))],
            "uptodate": [_wrapper_uptodate(ws)],
        }
    for cfg in ws.stack.configs.values():
        doc = f"write {cfg.path}"
        if cfg.base:
            doc += f" from {cfg.base}"
        if cfg.create_only:
            doc += " (only when absent)"
        doc += ("; reruns when " + ("the base file's content, " if cfg.base else "")
                + "the values after substitution, unset or format change, or the file is "
                "missing")
        yield {
            "name": cfg.name,
            "doc": doc,
            "actions": [step(ws, task_id("config", cfg.name),
                             lambda c=cfg: _write_config(ws, c, forced))],
            "task_dep": _deps(ws, cfg),
            "uptodate": [_config_uptodate(ws, cfg)],
        }
