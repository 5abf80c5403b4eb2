"""stack.yaml: its pydantic model, its semantic checks, and ``load_stack()``.

Two layers, as in copier: ``StackFile`` and friends mirror the file exactly
(``extra="forbid"``, so a typo is an error, not a silently ignored key);
``load_stack()`` validates once, runs the checks that span several fields
(unknown ``needs``, cycles, two components installing one path...), and
returns a frozen ``Stack`` that the rest of the code uses.  Every problem is
reported at once, one line each: ``stack.yaml:12: components.cri-o.reff:
unknown key (did you mean 'ref'?)``.
"""

from __future__ import annotations

import difflib
import os
import posixpath
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WrapValidator,
)

from . import prereqs, yamlsrc
from .errors import SpecError
from .stack import (
    VARIABLES,
    WRAPPER,
    Component,
    Config,
    Debug,
    Image,
    Part,
    Patch,
    Pod,
    Settings,
    Stack,
    variables_in,
)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
PART_RE = NAME_RE
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_ENV = ("SRC", "DESTDIR", "PREFIX", "JOBS")
BOOL_HINT = "YAML reads yes/no/on/off/true/false as a boolean: quote the value"


# --------------------------------------------------------------------------
# The file, as written


def _as_list(value):
    """``build: make`` means ``build: [make]``."""
    if isinstance(value, str):
        return [value]
    return value


def _patch_entry(value):
    if isinstance(value, str):
        return {"path": value}
    return value


def _env_value(value):
    if isinstance(value, bool):
        raise ValueError(BOOL_HINT)
    if value is None:
        raise ValueError("empty value: write '' for an empty string")
    if isinstance(value, (int, float)):
        return str(value)
    return value


def _either(message: str) -> WrapValidator:
    """One line for a union that fails: pydantic would report each member
    apart (``submodules.bool: ...`` and ``submodules: ...``)."""
    def validate(value, handler):
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(message + _got(value)) from None
    return WrapValidator(validate)


Commands = Annotated[tuple[str, ...], BeforeValidator(_as_list)]
EnvValue = Annotated[str, BeforeValidator(_env_value)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class PatchEntry(_Strict):
    path: str = Field(min_length=1)
    component: str | None = None


class PartFile(_Strict):
    build: Commands = ()
    artifacts: tuple[str, ...] = ()
    install: Commands = ()
    installs: tuple[str, ...] = ()
    env: dict[str, EnvValue] = {}
    requires: tuple[str, ...] = ()  # prerequisites checked by 'doit check'


class ComponentFile(PartFile):
    git: str = Field(min_length=1)
    ref: str = Field(min_length=1)
    submodules: Annotated[bool | tuple[str, ...],
                          _either("must be true, false or a list of submodule paths")] = False
    depth: int = Field(0, ge=0)
    patches: tuple[Annotated[PatchEntry, BeforeValidator(_patch_entry)], ...] = ()
    needs: tuple[str, ...] = ()
    parts: dict[str, PartFile] | None = None


class SettingsFile(_Strict):
    workdir: str = Field("build", min_length=1)
    destdir: str = ""
    prefix: str = "/usr/local"
    sudo: Literal["auto", "never"] = "auto"
    jobs: int = Field(0, ge=0)


def _version(value):
    if value != 1:
        raise ValueError(f"unsupported version {value}: this tool reads version 1")
    return value


class ImageFile(_Strict):
    builder: str = "mbuto"
    profile: str = "kata"
    output: str = Field("build/kata.img", min_length=1)
    compression: Literal["none", "gzip", "lz4", "lzma", "lzo", "auto"] = "lz4"
    kernel: str = Field("auto", min_length=1)
    modules_root: str = Field("/", min_length=1)
    add: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()


class ConfigFile(_Strict):
    path: str = Field(min_length=1)
    format: Literal["toml", "json", "yaml"]
    base: str | None = None
    set: dict[str, Any] = {}
    unset: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    create_only: bool = False  # write it only when the file does not exist yet


class PodFile(_Strict):
    runtime: str = Field("kata", min_length=1)
    image: str = Field("docker.io/library/busybox:latest", min_length=1)
    command: tuple[str, ...] = ("sleep", "6000")
    pod_config: str = "configs/pod-config.json"
    container_config: str = "configs/container-busybox.json"
    crio_args: tuple[str, ...] = ("--log-level", "debug")
    ping: bool = True
    socket: str = "/var/run/crio/crio.sock"
    start_timeout: int = Field(60, gt=0)


class DebugFile(_Strict):
    qemu_log: bool = False
    agent_debug_console: bool = False


class StackFile(_Strict):
    version: Annotated[int, AfterValidator(_version)]
    settings: SettingsFile = SettingsFile()
    components: dict[str, ComponentFile] = Field(min_length=1)
    image: ImageFile | None = None
    configs: dict[str, ConfigFile] = {}
    pod: PodFile | None = None
    debug: DebugFile = DebugFile()


# --------------------------------------------------------------------------
# Loading


# Files whose existence the last validation depended on (path, is a file):
# stack.py's cache holds a validated stack only while they still say so.
checked_files: list[tuple[str, bool]] = []


def _is_file(path: Path) -> bool:
    found = path.is_file()
    checked_files.append((str(path), found))
    return found


def load_stack(path, project: Path | None = None) -> Stack:
    """Read, validate and resolve a stack file; raise ``SpecError`` listing
    every problem found.  ``project`` is this tool's folder: relative pod
    templates not found beside the stack file are looked up there.  (The
    run uses stack.load(), which skips all this while nothing changed.)"""
    checked_files.clear()
    path = Path(path).absolute()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(path, [f"{path}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(path, [f"{path}: cannot read: {err}"]) from None
    try:
        located = yamlsrc.load(text)
    except yamlsrc.YamlSyntaxError as err:
        raise SpecError(path, [f"{path.name}:{err.line}: {err.message}"]) from None

    problems = Problems(path.name, located)
    for loc, line in located.duplicates:
        problems.add(loc, "duplicate key (the later one would win silently)", line=line)
    if not isinstance(located.data, dict):
        problems.add((), "the file must be a mapping with 'version' and 'components'")
        raise problems.error(path)
    try:
        model = StackFile.model_validate(located.data)
        settings, components = model.settings, model.components
        names = set(components)
        sections = model
    except ValidationError as err:
        for e in err.errors(include_url=False):
            problems.add_pydantic(e)
        # Keep going with the parts that are valid, so that one run reports
        # the cross-field problems too.
        settings, components, names = _valid_parts(located.data)
        sections = _valid_sections(located.data)
    stack = _resolve(path, settings, components, names, located, problems)
    stack = _resolve_sections(stack, sections, names, project, problems)
    if problems:
        raise problems.error(path)
    return stack


def _valid_parts(data: dict):
    try:
        settings = SettingsFile.model_validate(data.get("settings") or {})
    except ValidationError:
        settings = SettingsFile()
    raw = data.get("components")
    components, names = {}, set()
    if isinstance(raw, dict):
        names = set(raw)
        for name, body in raw.items():
            try:
                components[name] = ComponentFile.model_validate(body)
            except ValidationError:
                pass
    return settings, components, names


def _valid_sections(data: dict) -> StackFile:
    """The image, configs, pod and debug sections that validate on their own."""
    out = {}
    for key, model in (("image", ImageFile), ("pod", PodFile), ("debug", DebugFile)):
        try:
            if data.get(key) is not None:
                out[key] = model.model_validate(data[key])
        except ValidationError:
            pass
    configs = {}
    if isinstance(data.get("configs"), dict):
        for name, body in data["configs"].items():
            try:
                configs[name] = ConfigFile.model_validate(body)
            except ValidationError:
                pass
    return StackFile.model_construct(version=1, settings=SettingsFile(), components={},
                                     image=out.get("image"), configs=configs,
                                     pod=out.get("pod"), debug=out.get("debug", DebugFile()))


class Problems:
    """Collects ``file:line: location: message`` lines."""

    def __init__(self, filename: str, located: yamlsrc.Located):
        self.filename = filename
        self.located = located
        self.lines: list[tuple[int, str]] = []

    def __bool__(self):
        return bool(self.lines)

    def add(self, loc: tuple, message: str, line: int | None = None) -> None:
        line = line or self.located.line(loc)
        where = ".".join(str(p) for p in loc) or "(top level)"
        entry = (line, f"{self.filename}:{line}: {where}: {message}")
        if entry not in self.lines:
            self.lines.append(entry)

    def add_pydantic(self, e: dict) -> None:
        loc = tuple(p for p in e["loc"] if not _is_internal_loc(p))
        kind = e["type"]
        if kind == "extra_forbidden":
            message = "unknown key"
            parent = _data_at(self.located.data, loc[:-1])
            hint = _suggest(loc[-1], _known_keys(loc[:-1], parent))
            if hint:
                message += f" (did you mean '{hint}'?)"
        elif kind == "missing":
            message = "missing required key"
        elif kind == "literal_error":
            message = f"got {e.get('input')!r}: {_lower(e['msg'])}"
        elif kind == "value_error":
            message = str(e.get("ctx", {}).get("error", e["msg"]))
        elif kind in _SHAPES:  # not "a valid tuple" or "instance of ComponentFile"
            message = f"must be {_SHAPES[kind]}" + _got(e.get("input"))
            if isinstance(e.get("input"), bool):
                message += f": {BOOL_HINT}"
        elif kind in ("too_short", "string_too_short") and e.get("ctx", {}).get("min_length") == 1:
            message = "must not be empty"
        else:
            message = _lower(e["msg"])
            if "input" in e and not isinstance(e["input"], (dict, list)):
                message += f" (got {e['input']!r})"
        self.add(loc, message)

    def error(self, path: Path) -> SpecError:
        ordered = [text for _, text in sorted(self.lines, key=lambda x: x[0])]
        return SpecError(path, ordered)


_SHAPES = {"tuple_type": "a list", "list_type": "a list", "string_type": "a string",
           "dict_type": "a mapping", "model_type": "a mapping"}


def _got(value) -> str:
    if isinstance(value, dict):
        return " (got a mapping)"
    if isinstance(value, list):
        return " (got a list)"
    return f" (got {value!r})"


def _is_internal_loc(part) -> bool:
    return isinstance(part, str) and ("[" in part or part.startswith("function-"))


def _lower(msg: str) -> str:
    return msg[:1].lower() + msg[1:]


def _data_at(data, loc):
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _known_keys(loc: tuple, parent) -> list[str]:
    depth = len(loc)
    if depth == 0:
        model = StackFile
    elif loc[0] == "settings" and depth == 1:
        model = SettingsFile
    elif loc[0] == "components" and depth == 2:
        model = ComponentFile
    elif loc[0] == "components" and depth == 4 and loc[2] == "parts":
        model = PartFile
    elif loc[0] == "components" and depth == 4 and loc[2] == "patches":
        model = PatchEntry
    elif loc[0] == "image" and depth == 1:
        model = ImageFile
    elif loc[0] == "configs" and depth == 2:
        model = ConfigFile
    elif loc[0] == "pod" and depth == 1:
        model = PodFile
    elif loc[0] == "debug" and depth == 1:
        model = DebugFile
    else:
        return []
    return list(model.model_fields)


def _suggest(word, choices) -> str | None:
    match = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    return match[0] if match else None


_ALLOWED_SCHEMES = ("https", "ssh", "git", "file", "git+ssh", "ssh+git")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_HELPER_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)::")
_SCP_RE = re.compile(r"^(?:[^@/:]+@)?[^@/:]+:")


def check_git_url(url: str) -> str | None:
    """Why ``url`` is refused, or None.  The URL itself is passed to git
    untouched, so ``url.<base>.insteadOf`` rewrites keep working."""
    if not url.strip() or url != url.strip():
        return "empty or padded with spaces"
    if url.startswith("-"):
        return "must not start with '-'"
    if _HELPER_RE.match(url):
        return (
            f"transport '{_HELPER_RE.match(url).group(1)}::' is not allowed "
            "(use https://, ssh://, git://, file:// or a local path)"
        )
    m = _SCHEME_RE.match(url)
    if m:
        if m.group(1).lower() not in _ALLOWED_SCHEMES:
            return (
                f"transport '{m.group(1)}://' is not allowed "
                "(use https://, ssh://, git://, file:// or a local path)"
            )
        return None
    return None  # scp-like ssh (host:path) or a local path


def _is_local_path(url: str) -> bool:
    if _SCHEME_RE.match(url):
        return False
    if url.startswith(("/", "./", "../", "~")) or url in (".", ".."):
        return True
    return not _SCP_RE.match(url)


def _norm_target(path: str) -> str | None:
    """Absolute, normalised target path, or None if it escapes or is relative."""
    if not path.startswith("/"):
        return None
    parts = path.split("/")
    if ".." in parts:
        return None
    return posixpath.normpath(path).replace("//", "/")


def _inside(path: str) -> bool:
    """A relative path that stays inside its base folder."""
    if not path or path.startswith("/"):
        return False
    return ".." not in path.split("/")


def _resolve(path: Path, s: SettingsFile, model_components: dict[str, ComponentFile],
             names: set[str], located, problems: Problems) -> Stack:
    base = path.parent
    prefix = s.prefix
    if not prefix.startswith("/"):
        problems.add(("settings", "prefix"), f"must be an absolute path (got {prefix!r})")
    destdir = s.destdir
    if destdir:
        destdir = str((base / os.path.expanduser(destdir)).absolute()).rstrip("/")
        if destdir == "":
            destdir = ""
    workdir = (base / os.path.expanduser(s.workdir)).absolute()
    settings = Settings(
        workdir=Path(os.path.normpath(workdir)),
        destdir=destdir,
        prefix=prefix.rstrip("/") or "/",
        sudo=s.sudo,
        jobs=s.jobs or (os.cpu_count() or 1),
    )

    components: dict[str, Component] = {}
    installed_by: dict[str, str] = {}
    for name, c in model_components.items():
        loc = ("components", name)
        if not NAME_RE.match(name):
            problems.add(loc, "bad component name: use lower-case letters, digits, '.', '_' "
                              "and '-', starting with a letter or digit")
        why = check_git_url(c.git)
        if why:
            problems.add(loc + ("git",), why)
        git = c.git
        if not why and _is_local_path(git):
            git = str((base / os.path.expanduser(git)).absolute())
        if c.ref.startswith("-") or any(ch.isspace() for ch in c.ref) or ".." in c.ref:
            problems.add(loc + ("ref",), f"not a valid git ref: {c.ref!r}")
        for i, need in enumerate(c.needs):
            if need == name:
                problems.add(loc + ("needs", i), "a component cannot need itself")
            elif need not in names:
                problems.add(loc + ("needs", i), f"unknown component '{need}'"
                             + _did_you_mean(need, names))
        if isinstance(c.submodules, tuple):
            for i, sub in enumerate(c.submodules):
                if not _inside(sub):
                    problems.add(loc + ("submodules", i),
                                 f"must be a path inside the checkout (got {sub!r})")
        patches = []
        for i, p in enumerate(c.patches):
            ploc = loc + ("patches", i)
            if p.component is None:
                file = (base / os.path.expanduser(p.path)).absolute()
                if not _is_file(file):
                    problems.add(ploc, f"patch file not found: {file}")
                patches.append(Patch(p.path, None, file))
            else:
                if p.component not in names:
                    problems.add(ploc + ("component",), f"unknown component '{p.component}'"
                                 + _did_you_mean(p.component, names))
                if not _inside(p.path):
                    problems.add(ploc + ("path",), f"must be a relative path inside the "
                                 f"checkout of '{p.component}' (got {p.path!r})")
                patches.append(Patch(p.path, p.component, None))
        parts = []
        if "parts" in c.model_fields_set:  # 'parts:' left empty is None
            for key in ("build", "artifacts", "install", "installs", "env"):
                if key in c.model_fields_set:
                    problems.add(loc + (key,), "a component with 'parts' keeps build, artifacts, "
                                 "install, installs and env inside each part")
            if not c.parts:
                problems.add(loc + ("parts",), "empty: give at least one part or drop 'parts'")
            for i, message in prereqs.problems(c.requires):
                problems.add(loc + ("requires", i), message)
            for pname, part in (c.parts or {}).items():
                if not PART_RE.match(pname):
                    problems.add(loc + ("parts", pname), "bad part name: use lower-case letters, "
                                 "digits, '.', '_' and '-'")
                parts.append(_part(name, pname, part, loc + ("parts", pname), settings, problems,
                                   c.requires))
        else:
            parts.append(_part(name, None, c, loc, settings, problems))
        for part in parts:
            for i, target in enumerate(part.installs):
                other = installed_by.get(target)
                if other and other != part.id:
                    problems.add(_installs_loc(loc, part, i),
                                 f"{target} is also installed by {other}")
                installed_by.setdefault(target, part.id)
        components[name] = Component(
            name=name, git=git, ref=c.ref, submodules=c.submodules, depth=c.depth,
            patches=tuple(patches), needs=tuple(dict.fromkeys(c.needs)), parts=tuple(parts),
            line=located.line(loc),
        )

    for kind, edges in (
        ("needs", {n: [d for d in c.needs if d in components and d != n]
                   for n, c in components.items()}),
        ("patch source", {n: [d for d in c.patch_sources() if d in components and d != n]
                          for n, c in components.items()}),
    ):
        cycle = find_cycle(edges)
        if cycle:
            first = cycle[0]
            field = "needs" if kind == "needs" else "patches"
            problems.add(("components", first, field),
                         f"{kind} cycle: {' -> '.join(cycle)}")
    return Stack(path=path, settings=settings, components=components)


def _installs_loc(loc, part: Part, i: int) -> tuple:
    if part.name is None:
        return loc + ("installs", i)
    return loc + ("parts", part.name, "installs", i)


def _did_you_mean(word: str, names) -> str:
    hint = _suggest(word, sorted(names))
    return f" (did you mean '{hint}'?)" if hint else ""


def _part(component: str, name: str | None, f: PartFile, loc, settings: Settings,
          problems: Problems, inherited: tuple[str, ...] = ()) -> Part:
    for i, artifact in enumerate(f.artifacts):
        if artifact.startswith("/"):
            problems.add(loc + ("artifacts", i),
                         f"must be relative to the checkout (got absolute {artifact!r})")
        elif not _inside(artifact):
            problems.add(loc + ("artifacts", i), f"escapes the checkout: {artifact!r}")
    installs = []
    for i, target in enumerate(f.installs):
        expanded = target.replace("${PREFIX}", settings.prefix).replace("$PREFIX", settings.prefix)
        norm = _norm_target(expanded)
        if norm is None:
            problems.add(loc + ("installs", i),
                         f"must be an absolute path without '..' (got {target!r})")
            continue
        installs.append(norm)
    for key in f.env:
        if not ENV_RE.match(key):
            problems.add(loc + ("env", key), "not a valid environment variable name")
        elif key in RESERVED_ENV:
            problems.add(loc + ("env", key), f"{key} is set by the tool for every command; "
                         "change it in settings instead")
    for i, message in prereqs.problems(f.requires):
        problems.add(loc + ("requires", i), message)
    return Part(
        component=component, name=name, build=f.build, artifacts=f.artifacts,
        install=f.install, installs=tuple(installs), env=tuple(sorted(f.env.items())),
        requires=tuple(dict.fromkeys(inherited + f.requires)),
    )


def find_cycle(edges: dict[str, list[str]]) -> list[str] | None:
    """One cycle in a dependency graph, as ``[a, b, a]``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _resolve_sections(stack: Stack, f: StackFile, names: set[str], project: Path | None,
                      problems: Problems) -> Stack:
    """Check and resolve the image, configs, pod and debug sections."""
    base = stack.dir
    image = None
    if f.image is not None:
        i = f.image
        if i.builder not in names:
            problems.add(("image", "builder"), f"unknown component '{i.builder}'"
                         + _did_you_mean(i.builder, names))
        for n, need in enumerate(i.needs):
            if need not in names:
                problems.add(("image", "needs", n), f"unknown component '{need}'"
                             + _did_you_mean(need, names))
        if i.kernel != "auto" and (i.kernel.startswith("-") or "/" in i.kernel):
            problems.add(("image", "kernel"), f"not a kernel version: {i.kernel!r}")
        if not i.modules_root.startswith("/"):
            problems.add(("image", "modules_root"), "must be an absolute path")
        output = (base / os.path.expanduser(i.output)).absolute()
        image = Image(i.builder, i.profile, Path(os.path.normpath(output)), i.compression,
                      i.kernel, i.modules_root, i.add, tuple(dict.fromkeys(i.needs)))
    configs: dict[str, Config] = {}
    written: dict[str, str] = {}
    for name, c in f.configs.items():
        loc = ("configs", name)
        if not NAME_RE.match(name):
            problems.add(loc, "bad config name: use lower-case letters, digits, '.', '_' "
                              "and '-', starting with a letter or digit")
        path = _norm_target(c.path)
        if path is None:
            problems.add(loc + ("path",), f"must be an absolute path without '..' "
                         f"(got {c.path!r})")
            continue
        if path in written:
            problems.add(loc + ("path",), f"{path} is also written by config '{written[path]}'")
        written.setdefault(path, name)
        cbase = None
        if c.base is not None:
            cbase = _norm_target(c.base)
            if cbase is None:
                problems.add(loc + ("base",), f"must be an absolute path without '..' "
                             f"(got {c.base!r})")
        for n, key in enumerate(c.unset):
            if not key or any(not part for part in key.split(".")):
                problems.add(loc + ("unset", n), f"not a dotted key: {key!r}")
        for n, need in enumerate(c.needs):
            if need != "image" and need not in names:
                problems.add(loc + ("needs", n), f"unknown component '{need}' (or 'image')"
                             + _did_you_mean(need, names))
            if need == "image" and f.image is None:
                problems.add(loc + ("needs", n), "there is no 'image' section")
        if name == WRAPPER and f.debug.qemu_log:
            problems.add(loc, "the name is taken by the QEMU wrapper that debug.qemu_log "
                              "writes: choose another")
        if cbase is not None and cbase == path:
            problems.add(loc + ("base",), "the base must not be the file itself: name the "
                                          "installed default it starts from")
        for where, var in variables_in(c.set):
            if var not in VARIABLES:
                problems.add(loc + ("set",) + where, f"unknown variable ${{{var}}} (known: "
                             + ", ".join(f"${{{v}}}" for v in VARIABLES) + ")")
            elif var.startswith("image.") and f.image is None:
                problems.add(loc + ("set",) + where, f"${{{var}}} needs an 'image' section")
        configs[name] = Config(name, path, c.format, cbase, dict(c.set), c.unset,
                               tuple(dict.fromkeys(c.needs)), c.create_only)
    pod = None
    if f.pod is not None:
        p = f.pod
        pod = Pod(p.runtime, p.image, p.command,
                  _template(base, project, p.pod_config, ("pod", "pod_config"), problems),
                  _template(base, project, p.container_config, ("pod", "container_config"),
                            problems),
                  p.crio_args, p.ping, p.socket, p.start_timeout)
    debug = Debug(f.debug.qemu_log, f.debug.agent_debug_console)
    return Stack(path=stack.path, settings=stack.settings, components=stack.components,
                 image=image, configs=configs, pod=pod, debug=debug, project=project)


def _template(base: Path, project: Path | None, value: str, loc, problems: Problems) -> Path:
    """A template path: beside the stack file, else in this tool's folder."""
    path = Path(os.path.expanduser(value))
    candidates = [path] if path.is_absolute() else [base / path] + (
        [project / path] if project else [])
    for candidate in candidates:
        if _is_file(candidate):
            return candidate.absolute()
    problems.add(loc, f"template not found: {value} (looked in "
                 + ", ".join(str(c.parent) for c in candidates) + ")")
    return candidates[0]
