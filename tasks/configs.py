"""config:NAME: the host's configuration files, written from stack.yaml.

Each file is computed from its ``base`` (an installed default, read as it
is on disk now), the ``set`` values after ``${...}`` substitution, and the
``unset`` keys (see docedit.py for how the document is edited).  The task is
stale when any of these changes (the base by content, the values after
substitution, so a new image kernel rewrites the Kata file), or when the
file is missing.

Never lose a hand edit.  The text last written to each file is kept under
``<workdir>/state/configs``.  A file that differs from it was edited by
hand: it is left as it is and the task stops, showing the difference;
``doit config:NAME force=1`` first saves the edited file as a timestamped
backup and then writes.  A file that existed before the tool ever wrote it
is saved once (``NAME.kps-orig``) before the first write.  Backups go beside
the file, except in drop-in folders (``*.d``: CRI-O reads every file in
``crio.conf.d``, recursively, whatever its name), where they go to a sibling
folder ``<folder>.kps-backup``.  Writes are atomic (a temporary file in the
same folder, renamed over the old one) and keep the old file's mode and
owner; the new text is parsed back before anything is written.

With ``debug.qemu_log`` a wrapper script around QEMU is written too
(``config:qemu-wrapper``), and ``${qemu.path}`` names it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import shlex
import stat
import time
from pathlib import Path

from . import image
from .action import step
from .docedit import EditError, render
from .errors import ConfigError, StackError
from .run import capture, run, say
from .stack import VAR_RE as _VAR_RE
from .stack import WRAPPER, Config, variables_in
from .state import Check, atomic_write, digest
from .workspace import Workspace

WRAPPER_TEMPLATE = "qemu-wrapper.sh"
WRAPPER_PATH = "{prefix}/libexec/kata-passt-stack/qemu-system-x86_64"
QEMU_PATH = "{prefix}/bin/qemu-system-x86_64"
# After the virtiofsd built with QEMU: where distributions put theirs (facts §8).
DISTRO_VIRTIOFSD = ("/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd", "/usr/lib/virtiofsd",
                    "/usr/lib/virtiofsd/virtiofsd")
_ONE_VAR_RE = re.compile(r"\$\{([^}]*)\}")
DIFF_LINES = 40


# --------------------------------------------------------------------------
# ${...} variables


class Values:
    """The variables' values for one run, looked up when first used."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self._cache: dict[str, object] = {}

    def get(self, name: str):
        if name not in self._cache:
            self._cache[name] = self._resolve(name)
        return self._cache[name]

    def _resolve(self, name: str):
        ws, debug = self.ws, self.ws.stack.debug
        if name in ("image.kernel", "image.initrd"):
            built = image.values(ws) if ws.stack.image else None
            if built is None:
                raise StackError("the image is not built yet (its kernel and initrd are "
                                 "not known)")
            return built[name.split(".")[1]]
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
    if ws.stack.debug.qemu_log:
        return WRAPPER_PATH.format(prefix=_prefix(ws))
    return QEMU_PATH.format(prefix=_prefix(ws))


def _prefix(ws: Workspace) -> str:
    return ws.settings.prefix.rstrip("/")


def find_virtiofsd(ws: Workspace) -> str:
    """The first executable virtiofsd: QEMU's own, then the distributions'.
    Probed where the target system is (under destdir when staged); the value
    is the path on the target system."""
    candidates = [f"{_prefix(ws)}/libexec/virtiofsd", *DISTRO_VIRTIOFSD]
    for path in candidates:
        where = ws.stack.target(path)
        if where.is_file() and os.access(where, os.X_OK):
            return path
    looked = ", ".join(str(ws.stack.target(p)) for p in candidates)
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


class ConfigCheck(Check):
    """Stale when the base's content, the values (after substitution, so the
    image's kernel and initrd count), the unset keys or the format change,
    or when the file is missing."""

    def __init__(self, ws: Workspace, cfg: Config):
        super().__init__(ws.stamps, f"config:{cfg.name}")
        self.ws, self.cfg = ws, cfg

    def key(self) -> dict:
        return config_key(self.ws, self.cfg)

    def missing(self) -> str | None:
        path = self.ws.stack.target(self.cfg.path)
        if not path.exists():
            return f"{path} is missing"
        return None


def _write_config(ws: Workspace, cfg: Config, force: bool) -> dict:
    task_id = f"config:{cfg.name}"
    values = Values(ws)
    try:
        key = config_key(ws, cfg, values)
        path = ws.stack.target(cfg.path)
        if cfg.create_only and (path.exists() or path.is_symlink()):
            say(f"  {task_id}: {path} exists; create_only: left as it is")
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
        say(f"  {task_id}: note: {note}")
    install_text(ws, task_id, cfg.name, path, text, force=force,
                 keep=f"put it into configs.{cfg.name} in {ws.stack.path.name} (set/unset)")
    return key


# --------------------------------------------------------------------------
# The QEMU wrapper (debug.qemu_log)


def wrapper_text(ws: Workspace) -> str:
    root = ws.stack.project or Path(__file__).resolve().parents[1]
    try:
        template = (root / "configs" / WRAPPER_TEMPLATE).read_text()
    except OSError as err:
        raise StackError(f"cannot read the QEMU wrapper's template: {err}") from None
    return (template.replace("@QEMU@", shlex.quote(QEMU_PATH.format(prefix=_prefix(ws))))
            .replace("@LOGS@", shlex.quote(str(ws.logs))))


def wrapper_key(ws: Workspace) -> dict:
    return {"path": str(ws.stack.target(WRAPPER_PATH.format(prefix=_prefix(ws)))),
            "content": digest(wrapper_text(ws))}


class WrapperCheck(Check):
    """Stale when the script's text (template, prefix, workdir) or its path
    changes, or when it is missing."""

    def __init__(self, ws: Workspace):
        super().__init__(ws.stamps, f"config:{WRAPPER}")
        self.ws = ws

    def key(self) -> dict:
        return wrapper_key(self.ws)

    def missing(self) -> str | None:
        path = Path(self.key()["path"])
        return None if path.exists() else f"{path} is missing"


def _write_wrapper(ws: Workspace, force: bool) -> dict:
    key = wrapper_key(ws)
    install_text(ws, f"config:{WRAPPER}", WRAPPER, Path(key["path"]), wrapper_text(ws),
                 mode=0o755, force=force,
                 keep=f"change configs/{WRAPPER_TEMPLATE} in this tool's folder instead")
    return key


# --------------------------------------------------------------------------
# Writing without losing anything


def install_text(ws: Workspace, task_id: str, name: str, path: Path, text: str, *,
                 mode: int | None = None, force: bool = False, keep: str = "") -> None:
    """Write ``text`` to ``path`` unless that would lose a hand edit."""
    sudo = ws.needs_sudo()
    if path.is_symlink():
        raise ConfigError(f"{path} is a symbolic link (to {os.readlink(path)}): not replacing "
                          "it with a file",
                          hint="remove the link, or point the path in stack.yaml at its target")
    if path.exists() and not path.is_file():
        raise ConfigError(f"{path} exists and is not a regular file")
    data = text.encode()
    current = _read(path, sudo)
    last = _record(ws, name, "last", path)
    pending = _record(ws, name, "next", path)
    if current == data:
        _remember(ws, name, "last", path, data)
        _forget(ws, name, "next")
        say(f"  {task_id}: {path} already reads as it should")
        return
    if current is not None:
        ours = [r for r in (last, pending) if r is not None]
        if not ours:
            saved = _backup(ws, task_id, path, "orig", sudo)
            say(f"  {task_id}: {path} was there before kata-passt-stack wrote it: "
                f"saved as {saved}")
        elif current not in ours:
            if not force:
                raise _hand_edit(ws, task_id, path, ours[0], current, keep)
            saved = _backup(ws, task_id, path, "edit", sudo)
            say(f"  {task_id}: force=1: the hand-edited {path} is saved as {saved}")
    if current is not None:
        st = os.stat(path)
        new_mode = mode if mode is not None else stat.S_IMODE(st.st_mode)
        owner = (st.st_uid, st.st_gid)
    else:
        new_mode, owner = (mode if mode is not None else 0o644), None
    _remember(ws, name, "next", path, data)
    if sudo:
        _write_sudo(ws, task_id, name, path, data, new_mode, owner)
    else:
        atomic_write(path, data, mode=new_mode, owner=owner)
    _remember(ws, name, "last", path, data)
    _forget(ws, name, "next")
    say(f"  {task_id}: wrote {path}")


def _read(path: Path, sudo: bool) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except PermissionError:
        if not sudo:
            raise ConfigError(f"cannot read {path}: permission denied") from None
        return capture(["sudo", "cat", "--", str(path)]).encode("utf-8", "surrogateescape")


def _state_file(ws: Workspace, name: str, which: str) -> Path:
    return ws.state / "configs" / f"{name}.{which}.json"


def _record(ws: Workspace, name: str, which: str, path: Path) -> bytes | None:
    """What the tool wrote (``last``) or was writing (``next``) to ``path``."""
    try:
        record = json.loads(_state_file(ws, name, which).read_text())
    except (OSError, ValueError):
        return None
    if record.get("path") != str(path):
        return None
    return record["content"].encode("utf-8", "surrogateescape")


def _remember(ws: Workspace, name: str, which: str, path: Path, data: bytes) -> None:
    record = {"path": str(path), "content": data.decode("utf-8", "surrogateescape")}
    atomic_write(_state_file(ws, name, which), json.dumps(record))


def _forget(ws: Workspace, name: str, which: str) -> None:
    _state_file(ws, name, which).unlink(missing_ok=True)


def backup_dir(path: Path) -> Path:
    """Beside the file, except in a drop-in folder (``*.d``), whose every
    file its program reads: then in the sibling folder ``<folder>.kps-backup``."""
    folder = path.parent
    if folder.name.endswith(".d"):
        return folder.with_name(folder.name + ".kps-backup")
    return folder


def _backup(ws: Workspace, task_id: str, path: Path, kind: str, sudo: bool) -> Path:
    folder = backup_dir(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{path.name}.kps-orig" if kind == "orig" else f"{path.name}.kps-edit-{stamp}"
    target, n = folder / name, 1
    while target.exists():  # never overwrite an earlier backup
        n += 1
        target = folder / (f"{path.name}.kps-{kind}-{stamp}" + ("" if n == 2 else f"-{n}"))
    if sudo:
        run(f"mkdir -p {shlex.quote(str(folder))} && "
            f"cp -p -- {shlex.quote(str(path))} {shlex.quote(str(target))}",
            cwd=ws.workdir, log=ws.log(task_id), env={"KPS_TASK": task_id}, sudo=True,
            label=f"{task_id}: ")
        return target
    folder.mkdir(parents=True, exist_ok=True)
    st = os.stat(path)
    atomic_write(target, path.read_bytes(), mode=stat.S_IMODE(st.st_mode),
                 owner=(st.st_uid, st.st_gid))
    return target


def _write_sudo(ws: Workspace, task_id: str, name: str, path: Path, data: bytes, mode: int,
                owner: tuple[int, int] | None) -> None:
    """The same through sudo: the text is staged under the workdir, then
    installed beside the target and renamed over it as root."""
    staged = ws.state / "configs" / f"{name}.upload"
    atomic_write(staged, data, mode=0o600)
    beside = path.parent / f".{path.name}.kps-tmp"
    chown = f" -o {owner[0]} -g {owner[1]}" if owner else ""
    q = shlex.quote
    try:
        run(f"install -D -m {mode:o}{chown} {q(str(staged))} {q(str(beside))} && "
            f"mv -f {q(str(beside))} {q(str(path))}",
            cwd=ws.workdir, log=ws.log(task_id), env={"KPS_TASK": task_id}, sudo=True,
            label=f"{task_id}: ")
    finally:
        staged.unlink(missing_ok=True)


def _hand_edit(ws: Workspace, task_id: str, path: Path, ours: bytes, now: bytes,
               keep: str) -> ConfigError:
    lines = list(difflib.unified_diff(
        ours.decode("utf-8", "replace").splitlines(keepends=True),
        now.decode("utf-8", "replace").splitlines(keepends=True),
        fromfile=f"{path} (as kata-passt-stack wrote it)", tofile=f"{path} (on disk now)"))
    shown = "".join(line if line.endswith("\n") else line + "\n" for line in lines[:DIFF_LINES])
    if len(lines) > DIFF_LINES:
        shown += f"... and {len(lines) - DIFF_LINES} more lines of difference\n"
    where = backup_dir(path) / f"{path.name}.kps-edit-<time>"
    return ConfigError(
        f"{path} was edited by hand since kata-passt-stack wrote it: left as it is, "
        f"nothing written.\n{shown.rstrip()}",
        hint=f"to keep the edit, {keep}, then run `doit {task_id} force=1`; to drop it, run "
             f"`doit {task_id} force=1`.  Either way the edited file is first saved as "
             f"{where}")


# --------------------------------------------------------------------------
# Tasks


def _deps(ws: Workspace, cfg: Config) -> list[str]:
    deps = []
    for need in cfg.needs:
        if need == "image":
            deps.append("image")
        else:
            deps.extend(f"install:{p.id}" for p in ws.component(need).parts)
    used = {var for _, var in variables_in(cfg.set)}
    if any(var.startswith("image.") for var in used) and "image" not in deps:
        deps.append("image")
    if "qemu.path" in used and ws.stack.debug.qemu_log:
        deps.append(f"config:{WRAPPER}")
    return deps


def _forced(value) -> bool:
    return str(value or "").strip().lower() in ("1", "yes", "true", "on")


def tasks(ws: Workspace, force=None):
    """config:NAME for each config, and config:qemu-wrapper with debug.qemu_log.
    ``force`` (doit's ``force=1``) overwrites hand edits, saving them first."""
    forced = _forced(force)
    if ws.stack.debug.qemu_log:
        yield {
            "name": WRAPPER,
            "doc": "write the QEMU wrapper that logs the guest console (debug.qemu_log)",
            "actions": [step(ws, f"config:{WRAPPER}", lambda: _write_wrapper(ws, forced))],
            "uptodate": [WrapperCheck(ws)],
            "verbosity": 2,
        }
    for cfg in ws.stack.configs.values():
        doc = f"write {cfg.path}"
        if cfg.base:
            doc += f" from {cfg.base}"
        if cfg.create_only:
            doc += " (only when absent)"
        yield {
            "name": cfg.name,
            "doc": doc,
            "actions": [step(ws, f"config:{cfg.name}",
                             lambda c=cfg: _write_config(ws, c, forced))],
            "task_dep": _deps(ws, cfg),
            "uptodate": [ConfigCheck(ws, cfg)],
            "verbosity": 2,
        }
