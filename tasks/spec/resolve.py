"""From the validated file to the model: paths made absolute, ``$PREFIX``
expanded, and the checks that span several fields (unknown ``needs``,
cycles, two components installing one path, unknown variables...)."""

from __future__ import annotations

import graphlib
import os
from pathlib import Path

from .. import catalog
from ..errors import did_you_mean
from ..model import (
    VARIABLES,
    WRAPPER,
    Cache,
    Component,
    Config,
    Debug,
    Image,
    Part,
    Patch,
    Pod,
    Settings,
    Smoke,
    SmokeCommand,
    Stack,
    split_cache_url,
    variables_in,
)
from . import signers
from .problems import Problems
from .schema import (
    ENV_RE,
    NAME_RE,
    PART_RE,
    RESERVED_ENV,
    ComponentFile,
    PartFile,
    SettingsFile,
    StackFile,
)
from .urls import check_git_url, inside, is_local_path, norm_target


def _cache(s: SettingsFile, base: Path, problems: Problems) -> Cache | None:
    """``settings.cache``: its url must be ``oci://host[:port]/repo/prefix``,
    without credentials (they live in the container auth file); the sign
    key and the trust file must be readable files of their kinds."""
    if s.cache is None:
        return None
    sign_key = _sign_key(s.cache.sign_key, base, problems)
    trust = _trust(s.cache.trust, base, problems)
    try:
        _, prefix = split_cache_url(s.cache.url)
    except ValueError as err:
        problems.add(("settings", "cache", "url"), str(err))
        return None
    if not prefix:  # the components' repositories would land at the registry's top level
        problems.add(("settings", "cache", "url"),
                     f"cache url {s.cache.url!r} names no repository: expected "
                     "oci://host[:port]/repository, each component's builds going to "
                     "<repository>/<component> (e.g. oci://127.0.0.1:5000/kps)")
        return None
    return Cache(url=s.cache.url.rstrip("/"), push=s.cache.push, plain_http=s.cache.plain_http,
                 sign_key=sign_key, trust=trust)


def _cache_file(value: str, base: Path, field: str, what: str,
                problems: Problems) -> tuple[Path, bytes | None]:
    """The path of ``settings.cache.<field>`` and its first line (None:
    missing or unreadable, said)."""
    path = Path(os.path.normpath((base / os.path.expanduser(value)).absolute()))
    if not problems.is_file(path):
        problems.add(("settings", "cache", field),
                     f"{what} {path} is not a file" if path.exists() else
                     f"{what} not found: {path}")
        return path, None
    try:
        with open(path, "rb") as f:
            return path, f.readline(64 * 1024)
    except OSError as err:
        problems.add(("settings", "cache", field), f"cannot read {what} {path}: {err.strerror}")
        return path, None


def _sign_key(value: str | None, base: Path, problems: Problems) -> Path | None:
    """A private key (ssh-keygen refuses one that others may read), or a
    public key whose private half is in ssh-agent.  Only its first line is
    read, and nothing of it is ever said."""
    if value is None:
        return None
    path, first = _cache_file(value, base, "sign_key", "sign key", problems)
    if first is None:
        return path
    line = first.decode("ascii", "replace").strip()
    if line.startswith("-----BEGIN ") and line.endswith("PRIVATE KEY-----"):
        st = os.stat(path)
        mode = st.st_mode
        if st.st_uid == os.getuid() and mode & 0o077:
            problems.add(("settings", "cache", "sign_key"),
                         f"the private key {path} may be read by others (mode "
                         f"{mode & 0o777:o}): ssh-keygen refuses to sign with it "
                         f"(chmod 600 {value})")
    elif signers.public_key_problem(line) is not None:
        problems.add(("settings", "cache", "sign_key"),
                     f"{path} is neither an SSH private key nor an SSH public key (the "
                     "public half of a key in ssh-agent); make one with ssh-keygen -t ed25519")
    return path


def _trust(value: str | None, base: Path, problems: Problems) -> Path | None:
    """An allowed-signers file in git's format (``signers``): each bad line
    is a problem naming its line, and it must allow at least one key."""
    if value is None:
        return None
    path, first = _cache_file(value, base, "trust", "trust file", problems)
    if first is None:
        return path
    loc = ("settings", "cache", "trust")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        problems.add(loc, f"{value}: not UTF-8 text (git's allowed-signers format: "
                          "'principal key-type key' a line)")
        return path
    except OSError as err:
        problems.add(loc, f"cannot read the trust file {path}: {err.strerror}")
        return path
    found, bad = signers.parse(text)
    for line, why in bad:
        problems.add(loc, f"{value}:{line}: {why}")
    if not bad and not any(not s.revoked for s in found):
        problems.add(loc, f"{value} allows no signer: every artifact pulled would be refused "
                          "(add a line 'principal key-type key', the key from the signer's "
                          ".pub file)")
    return path


def resolve(path: Path, s: SettingsFile, model_components: dict[str, ComponentFile],
             names: set[str], located, problems: Problems) -> Stack:
    base = path.parent
    prefix = s.prefix
    if not prefix.startswith("/"):
        problems.add(("settings", "prefix"), f"must be an absolute path (got {prefix!r})")
    destdir = s.destdir
    if destdir:
        destdir = str((base / os.path.expanduser(destdir)).absolute()).rstrip("/")
    workdir = (base / os.path.expanduser(s.workdir)).absolute()
    settings = Settings(
        workdir=Path(os.path.normpath(workdir)),
        destdir=destdir,
        prefix=prefix.rstrip("/") or "/",
        sudo=s.sudo,
        jobs=s.jobs or (os.cpu_count() or 1),
        cache=_cache(s, base, problems),
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
        if not why and is_local_path(git):
            git = str((base / os.path.expanduser(git)).absolute())
        if c.ref.startswith("-") or any(ch.isspace() for ch in c.ref) or ".." in c.ref:
            problems.add(loc + ("ref",), f"not a valid git ref: {c.ref!r}")
        for i, need in enumerate(c.needs):
            if need.split("/")[0] == name:
                problems.add(loc + ("needs", i), "a component cannot need itself")
            else:
                why = need_problem(need, names, model_components)
                if why:
                    problems.add(loc + ("needs", i), why)
        if isinstance(c.submodules, tuple):
            for i, sub in enumerate(c.submodules):
                if not inside(sub):
                    problems.add(loc + ("submodules", i),
                                 f"must be a path inside the checkout (got {sub!r})")
        patches = []
        for i, p in enumerate(c.patches):
            ploc = loc + ("patches", i)
            if p.component is None:
                file = (base / os.path.expanduser(p.path)).absolute()
                if not problems.is_file(file):
                    problems.add(ploc, f"patch file not found: {file}")
                patches.append(Patch(p.path, None, file))
            else:
                if p.component not in names:
                    problems.add(ploc + ("component",), f"unknown component '{p.component}'"
                                 + did_you_mean(p.component, names))
                if not inside(p.path):
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
            for i, message in catalog.problems(c.requires):
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
        ("needs", {n: [d.split("/")[0] for d in c.needs
                       if d.split("/")[0] in components and d.split("/")[0] != n]
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


def need_problem(need: str, names: set[str], files: dict[str, ComponentFile]) -> str | None:
    """Why ``need`` (``NAME`` or ``NAME/PART``) names nothing, or None."""
    name, _, part = need.partition("/")
    if name not in names:
        return f"unknown component '{name}'" + did_you_mean(name, names)
    if not part:
        return None
    f = files.get(name)
    if f is None:  # invalid itself: already reported
        return None
    parts = sorted((f.parts or {}) if "parts" in f.model_fields_set else {})
    if part not in parts:
        return (f"'{name}' has no part '{part}'" + did_you_mean(part, parts)
                + (f" (its parts: {', '.join(parts)})" if parts else " (it has no parts)"))
    return None


def _installs_loc(loc, part: Part, i: int) -> tuple:
    if part.name is None:
        return loc + ("installs", i)
    return loc + ("parts", part.name, "installs", i)


def _part(component: str, name: str | None, f: PartFile, loc, settings: Settings,
          problems: Problems, inherited: tuple[str, ...] = ()) -> Part:
    for i, artifact in enumerate(f.artifacts):
        if artifact.startswith("/"):
            problems.add(loc + ("artifacts", i),
                         f"must be relative to the checkout (got absolute {artifact!r})")
        elif not inside(artifact):
            problems.add(loc + ("artifacts", i), f"escapes the checkout: {artifact!r}")
    installs = []
    for i, target in enumerate(f.installs):
        expanded = target.replace("${PREFIX}", settings.prefix).replace("$PREFIX", settings.prefix)
        norm = norm_target(expanded)
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
    for i, message in catalog.problems(f.requires):
        problems.add(loc + ("requires", i), message)
    return Part(
        component=component, name=name, build=f.build, artifacts=f.artifacts,
        install=f.install, installs=tuple(installs), env=tuple(sorted(f.env.items())),
        requires=tuple(dict.fromkeys(inherited + f.requires)),
    )


def find_cycle(edges: dict[str, list[str]]) -> list[str] | None:
    """One cycle in a dependency graph (node -> what it needs), as
    ``[a, b, a]`` (a needs b, b needs a) starting at its first node by
    name, or None."""
    try:
        graphlib.TopologicalSorter(edges).prepare()
    except graphlib.CycleError as err:
        # graphlib lists each node before the one that needs it: reverse
        cycle = list(reversed(err.args[1]))[:-1]
        start = cycle.index(min(cycle))
        cycle = cycle[start:] + cycle[:start]
        return cycle + [cycle[0]]
    return None


def resolve_sections(stack: Stack, f: StackFile, names: set[str], project: Path | None,
                      problems: Problems, files: dict[str, ComponentFile]) -> Stack:
    """Check and resolve the image, configs, pod and debug sections."""
    base = stack.dir
    image = None
    if f.image is not None:
        i = f.image
        if i.builder not in names:
            problems.add(("image", "builder"), f"unknown component '{i.builder}'"
                         + did_you_mean(i.builder, names))
        for n, need in enumerate(i.needs):
            why = need_problem(need, names, files)
            if why:
                problems.add(("image", "needs", n), why)
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
        path = norm_target(c.path)
        if path is None:
            problems.add(loc + ("path",), f"must be an absolute path without '..' "
                         f"(got {c.path!r})")
            continue
        if path in written:
            problems.add(loc + ("path",), f"{path} is also written by config '{written[path]}'")
        written.setdefault(path, name)
        cbase = None
        if c.base is not None:
            cbase = norm_target(c.base)
            if cbase is None:
                problems.add(loc + ("base",), f"must be an absolute path without '..' "
                             f"(got {c.base!r})")
        for n, key in enumerate(c.unset):
            if not key or any(not part for part in key.split(".")):
                problems.add(loc + ("unset", n), f"not a dotted key: {key!r}")
        for n, need in enumerate(c.needs):
            needed = need.partition("/")[0]
            if need != "image" and needed not in names:
                problems.add(loc + ("needs", n), f"unknown component '{needed}' (or 'image')"
                             + did_you_mean(needed, names))
            elif need != "image":
                why = need_problem(need, names, files)
                if why:
                    problems.add(loc + ("needs", n), why)
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
    smoke = _smoke(f, problems)
    return Stack(path=stack.path, settings=stack.settings, components=stack.components,
                 image=image, configs=configs, pod=pod, debug=debug, project=project,
                 smoke=smoke)


def _smoke(f: StackFile, problems: Problems) -> Smoke | None:
    """``smoke``: what it boots or runs must exist in the file, and it must
    check something."""
    s = f.smoke
    if s is None:
        return None
    if s.image_boot and f.image is None:
        problems.add(("smoke", "image_boot"), "there is no 'image' section to boot")
    if s.run_pod is not None and f.pod is None:
        problems.add(("smoke", "run_pod"), "there is no 'pod' section to run")
    if not s.image_boot and s.run_pod is None and not s.commands:
        problems.add(("smoke",), "nothing to check: give image_boot: true, run_pod or commands")
    return Smoke(image_boot=s.image_boot,
                 run_pod=None if s.run_pod is None else tuple(s.run_pod.expect),
                 commands=tuple(SmokeCommand(c.run, tuple(c.expect)) for c in s.commands),
                 timeout=s.timeout)


def _template(base: Path, project: Path | None, value: str, loc, problems: Problems) -> Path:
    """A template path: beside the stack file, else in this tool's folder."""
    path = Path(os.path.expanduser(value))
    candidates = [path] if path.is_absolute() else [base / path] + (
        [project / path] if project else [])
    for candidate in candidates:
        if problems.is_file(candidate):
            return candidate.absolute()
    problems.add(loc, f"template not found: {value} (looked in "
                 + ", ".join(str(c.parent) for c in candidates) + ")")
    return candidates[0]
