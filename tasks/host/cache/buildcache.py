"""The shared build cache (``settings.cache``), between the build and install
steps and the registry client (``oci``).

A part's cache key (``key_for``) is a content hash of everything that
decides its staged install tree: the checkout's content, the build and
install commands, env, the settings the commands name, the staged trees of
what it ``needs`` (their ``tree`` digests, not paths), the prefix, the
platform (``/etc/os-release`` ID and VERSION_ID, the machine) and the
versions ``check`` found for the part's requirements.  Never a path of this
machine (workdir, checkout, destdir, stage): two machines with other paths
share entries.  A part whose build commands name ``$DESTDIR`` or ``$SRC``
(its install commands: ``$SRC``), in any expansion (``${SRC%/}`` too), or
whose env holds the workdir or destdir, is not cached.

``fetch`` (build:PART) pulls a hit, verified blob by blob, into
``<workdir>/cache/PART``; ``restore`` (install:PART) copies it into the
stage after checking it against the digest recorded when it was pulled;
``share`` pushes a locally staged tree when ``push: true``.

Signatures (issue 21, ``signing``): with ``trust``, a hit is pulled only
when its manifest digest carries a good signature by an allowed signer
(``signer_of``); a refusal is one warning naming the part, the digest and
why, and the part builds locally.  Without it, pulls are as before and the
workdir is told once (``_unverified``).  With ``sign_key``, ``share`` signs
the digest of what it pushes, and replaces an artifact of the same key that
is unsigned or that this run refused.  ``provenance`` is ``show:NAME``'s
line: the artifact used or about to be pulled, and its signer.  The
registry client is imported when one is needed: the no-op's build check
reads ``kept()`` only.

A tree that holds a path of this machine is not pushed (the relocation
check Spack and Nix make): a build that writes ``$(pwd)`` would give every
other machine files naming this one's checkout.  Before pushing, every
regular file of the staged tree (its bytes, text or binary) and every
symbolic link (its target) is searched for the checkout, the workdir and
the stage, each as given and as its real path (``/tmp`` may be a link);
as a plain byte string, so the forms with a trailing slash (and longer
paths under them) are found too.  A tree holding one gives one warning
naming the first such file and the path, the install goes on and merges,
and nothing of the part (no blob, manifest or tag) reaches the registry;
a file that cannot be read is not guessed clean: the part is not pushed.
The search runs only when an install pushes, never on a no-op.  A cache
problem never fails a run: an unreachable registry gives one warning per
run and the run stops asking; a refused artifact gives a warning naming the
part and the digest; both then build locally.  Nothing here starts a
process (``signing`` runs ssh-keygen through run.py), and no message holds
a credential (``oci`` redacts its own) or any of a key but its fingerprint.
"""

from __future__ import annotations

import os
import platform as _platform
import re
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ... import git
from ...action import task_id
from ...errors import StackError
from ...journal import scan
from ...model import Part
from ...run import say
from ...state import digest
from ...workspace import Workspace

if TYPE_CHECKING:
    from . import oci

FORMAT = 1
# $SRC, ${SRC}, ${SRC%/}, ${#SRC}...: any expansion names the path.
_NAMES_RE = re.compile(r"\$(?:\{[#!]?(DESTDIR|SRC)\b|(DESTDIR|SRC)\b)")
_PREFIX_RE = re.compile(r"\$(?:\{PREFIX\}|PREFIX\b)")

class _Client:
    """What one run keeps of the cache (``session.Run.feature``): its
    registry client, made on first use, or that it was found unreachable;
    the artifacts (repo, tag) its pulls refused, which a signing push
    replaces."""

    def __init__(self):
        self.lock = threading.Lock()
        self.registry: oci.Registry | None = None
        self.off = False
        self.url: str | None = None
        self.refused: set[tuple[str, str]] = set()


def _client(ws: Workspace) -> _Client:
    return ws.run.feature("buildcache", _Client)


def refused(ws: Workspace) -> set[tuple[str, str]]:
    return _client(ws).refused


def note(ws: Workspace, tid: str | None, message: str) -> None:
    """Say it, and keep it in the task's log (``--reporter json`` has both)."""
    say(message)
    if tid:
        try:
            log = ws.log(tid)
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "a") as f:
                f.write(message + "\n")
        except OSError:
            pass  # only a log


def warn(message: str, ws: Workspace | None = None, tid: str | None = None) -> None:
    if ws is None:
        say(f"warning: {message}")
    else:
        note(ws, tid, f"warning: {message}")


def registry(ws: Workspace) -> oci.Registry | None:
    """This run's registry client, or None when there is no cache or it was
    found unreachable (said once)."""
    from . import oci  # imported here: a build's no-op check (kept()) needs none of it

    cache = ws.settings.cache
    if cache is None:
        return None
    client = _client(ws)
    with client.lock:
        if client.url != cache.url:
            client.registry, client.off, client.url = None, False, cache.url
        if client.off:
            return None
        if client.registry is None:
            try:
                client.registry = oci.Registry(cache.url, plain_http=cache.plain_http, timeout=3)
            except oci.CacheError as err:
                client.off = True
                warn(f"the build cache {cache.url} cannot be used: {err.message}; "
                     "building locally")
                return None
        return client.registry


def _unreachable(ws: Workspace, err: oci.CacheError, tid: str) -> None:
    client = _client(ws)
    with client.lock:
        if client.off:
            return
        client.off = True
    warn(f"the build cache {ws.settings.cache.url} is unreachable: {err.message}; "
         "building locally", ws, tid)


def platform_of() -> dict[str, str]:
    """``/etc/os-release`` ID and VERSION_ID, and the machine."""
    out = {"id": "unknown", "version_id": ""}
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        name, _, value = line.partition("=")
        if name in ("ID", "VERSION_ID"):
            out[name.lower()] = value.strip().strip('"\'')
    out["machine"] = _platform.machine()
    return out


def not_cached(ws: Workspace, part: Part) -> str | None:
    """Why a part's tree cannot be shared between machines, or None."""
    # In a build, $DESTDIR is destdir and $SRC the checkout: paths of this
    # machine that the output may hold.  In an install, $DESTDIR is the
    # stage, where the tree is made: only $SRC counts there.
    for commands, kind, names in ((part.build, "build", ("DESTDIR", "SRC")),
                                  (part.install, "install", ("SRC",))):
        for command in commands:
            for m in _NAMES_RE.finditer(command):
                if (m.group(1) or m.group(2)) in names:
                    return f"its {kind} commands name ${m.group(1) or m.group(2)}"
    paths = [str(ws.settings.workdir)] + ([ws.settings.destdir] if ws.settings.destdir else [])
    for name, value in part.env:
        if any(p in value for p in paths):
            return f"its env {name} holds a path of this machine"
    return None


def key_for(ws: Workspace, part: Part, content: dict) -> tuple[dict | None, str | None]:
    """``(key, None)``, or ``(None, why it is not cached)``; ``(None, None)``
    when there is no cache.  ``content``: the checkout's content (tree.content)."""
    if ws.settings.cache is None:
        return None, None
    why = not_cached(ws, part)
    if why:
        return None, why
    needs = {}
    for other in ws.component(part.component).needs:
        for p in ws.parts_of(other):
            tree = ws.stamps.produced(task_id("install", p.id), "tree")
            if tree is None:
                return None, f"{p.id} was installed without a tree digest"
            needs[p.id] = tree
    toolchains = {}
    if part.requires:
        versions = ws.stamps.produced(task_id("check"), "versions")
        if versions is None or part.id not in versions:
            return None, "check recorded no toolchain versions for it"
        toolchains = versions[part.id]
    names = {"PREFIX": ws.settings.prefix} if any(
        _PREFIX_RE.search(c) for c in part.build + part.install) else {}
    return {
        "format": FORMAT,
        "part": part.id,
        "build": {"content": content, "commands": list(part.build), "env": dict(part.env),
                  "settings": names, "needs": needs},
        "install": install_inputs(ws, part),
        "platform": platform_of(),
        "toolchains": toolchains,
    }, None


def install_inputs(ws: Workspace, part: Part) -> dict:
    return {"commands": list(part.install), "prefix": ws.settings.prefix,
            "installs": list(part.installs)}


def tree_digest(stage: Path) -> str:
    """A staged tree's content (type, mode, sha256 or link target per
    relative path): the same on every machine."""
    return digest(scan(stage, ""))


def machine_paths(ws: Workspace, part: Part, stage: Path) -> list[str]:
    """The paths of this machine that a shared tree must not hold: the
    part's checkout, the workdir and the stage, as given and real."""
    out: list[str] = []
    for path in (ws.checkout(part.component), ws.workdir, stage):
        for form in (str(path), os.path.realpath(path)):
            form = form.rstrip("/")
            if form and form not in out:
                out.append(form)
    return out


_CHUNK = 1 << 20


def holding_paths(stage: Path, paths: list[str]) -> list[tuple[str, str]]:
    """``(file, path)`` for each entry of the staged tree (by its path
    under the stage, sorted) that holds one of ``paths``: a regular file in
    its bytes, a symbolic link in its target.  The path named is the
    longest found at the first place that holds one (the checkout rather
    than the workdir it lies in).  One pass over each file, in chunks."""
    needles = sorted({os.fsencode(p) for p in paths}, key=len, reverse=True)
    if not needles:
        return []
    # Longest first: at one place the alternation takes the first that matches.
    rx = re.compile(b"|".join(re.escape(n) for n in needles))
    found: list[tuple[str, str]] = []

    def walk(folder: str, rel: str) -> None:
        with os.scandir(folder) as it:
            items = sorted(it, key=lambda e: e.name)
        for item in items:
            where = rel + item.name
            if item.is_dir(follow_symlinks=False):
                walk(item.path, where + "/")
                continue
            if item.is_symlink():
                m = rx.search(os.fsencode(os.readlink(item.path)))
                hit = m.group() if m else None
            elif item.is_file(follow_symlinks=False):
                hit = _search_file(item.path, rx, len(needles[0]) - 1)
            else:
                continue  # the tree's scan refuses it before anything is pushed
            if hit is not None:
                found.append((where, os.fsdecode(hit)))

    if stage.is_dir():
        walk(str(stage), "")
    return found


def _search_file(path: str, rx: re.Pattern, keep: int) -> bytes | None:
    """The first match of ``rx`` in the file's bytes.  The last ``keep``
    bytes (the longest needle less one) of each chunk are searched again
    with the next one, so a needle across a chunk border is found; a match
    that starts in them waits for the next chunk, where a longer needle
    that starts at the same place may end."""
    tail = b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            buf = tail + chunk
            m = rx.search(buf)
            if m and (not chunk or m.start() < len(buf) - keep):
                return m.group()
            if not chunk:
                return None
            tail = buf[-keep:] if keep else b""


def kept(ws: Workspace, part: Part) -> Path:
    """Where a pulled tree waits for its install."""
    return ws.workdir / "cache" / part.id.replace("/", "@")


def _where(ws: Workspace, repo: str, tag: str) -> str:
    from . import oci

    host, _ = oci.parse_url(ws.settings.cache.url)
    return f"oci://{host}/{repo}:{tag[:12]}"


class Refused(Exception):
    """A pulled artifact's signature is missing or not good enough (why)."""


def _unverified(ws: Workspace, tid: str) -> None:
    """Say once for the workdir (and again for another cache url) that
    pulls are not verified: without ``trust`` nothing tells who pushed."""
    url = ws.settings.cache.url
    with _client(ws).lock:
        said = ws.json("build-cache")
        if said.read().get("unverified") == url:
            return
        said.update(unverified=url)
    note(ws, tid, f"note: artifacts pulled from the build cache {url} are not verified: "
                  "their digests prove them undamaged, not who pushed them; set "
                  "settings.cache.trust to an allowed-signers file to require signatures "
                  "(said once for this workdir)")


def signer_of(ws: Workspace, reg: oci.Registry, repo: str, manifest: str) -> dict | None:
    """Who signed the artifact ``manifest`` (a signer ``trust`` allows), or
    None without ``trust`` (not verified); ``Refused`` saying why not."""
    from . import oci

    trust_file = ws.settings.cache.trust
    if trust_file is None:
        return None
    from . import signing  # with trust only: a no-op never needs it

    try:
        trust = signing.load_trust(trust_file)
    except signing.TrustError as err:
        raise Refused(err.message) from None
    try:
        found = reg.signature(repo, manifest)
    except oci.CacheCorrupt as err:
        raise Refused(f"its signature: {err.message}") from None
    armored, claimed = found if found else (None, None)
    verdict = signing.verify(trust, armored, manifest, ws.scratch(), claimed)
    if verdict.why:
        raise Refused(verdict.why)
    return verdict.record()


def fetch(ws: Workspace, part: Part, key: dict) -> dict | None:
    """A hit's record (the tree is in ``kept()``, verified; signed by a
    signer ``trust`` allows when it is set), or None: build locally."""
    from . import oci

    reg = registry(ws)
    if reg is None:
        return None
    tid, tag = task_id("build", part.id), oci.tag_for(key)
    started = time.monotonic()
    try:
        repo = reg.repo(part.component)
        manifest = reg.exists(repo, tag)
        if manifest is None:
            return None
        try:
            signer = signer_of(ws, reg, repo, manifest)
            if signer is None:
                _unverified(ws, tid)
        except Refused as err:
            refused(ws).add((repo, tag))
            warn(f"{tid}: build cache artifact {repo}:{tag[:12]} ({manifest}) refused: "
                 f"{err}; building locally", ws, tid)
            return None
        dest = kept(ws, part)
        tmp = dest.with_name(dest.name + ".new")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            reg.pull(repo, tag, tmp, digest=manifest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        os.rename(tmp, dest)
    except oci.CacheUnreachable as err:
        _unreachable(ws, err, tid)
        return None
    except oci.CacheCorrupt as err:
        warn(f"{tid}: build cache artifact {repo}:{tag} refused: {err.message}; "
             "building locally", ws, tid)
        return None
    except oci.CacheError as err:
        warn(f"{tid}: build cache: {err.message}; building locally", ws, tid)
        return None
    size = sum(e.get("size", 0) for e in scan(dest, "").values())
    by = f", signed by {signer['principal']}" if signer else ""
    note(ws, tid, f"{tid}: from cache {_where(ws, repo, tag)} ({size / 1e6:.1f} MB, "
                  f"{time.monotonic() - started:.1f} s{by})")
    return {"url": ws.settings.cache.url, "repo": repo, "tag": tag, "manifest": manifest,
            "tree": tree_digest(dest), "signer": signer}


def restore(ws: Workspace, part: Part, record: dict, stage: Path) -> None:
    """Copy a pulled tree into the (fresh) stage, checked against the digest
    taken when it was pulled; a tree changed since is refused."""
    tid = task_id("install", part.id)
    src = kept(ws, part)
    if src.is_dir():
        shutil.rmtree(stage)
        shutil.copytree(src, stage, symlinks=True)
        if tree_digest(stage) == record["tree"]:
            note(ws, tid, f"{tid}: from cache {record['repo']}:{record['tag'][:12]} "
                          f"({record['manifest']})")
            return
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    shutil.rmtree(src, ignore_errors=True)
    ws.stamps.clear(task_id("build", part.id))
    raise StackError(f"{tid}: the tree pulled from the build cache ({record['manifest']}) "
                     f"changed on disk since it was pulled: refused, nothing was merged",
                     hint="run doit again: the tree is then pulled again (verified) "
                          "or the part built locally")


def share(ws: Workspace, part: Part, key: dict, stage: Path) -> None:
    """Push a locally staged tree when ``push: true``; a failure is a warning."""
    from . import oci

    cache = ws.settings.cache
    if cache is None or not cache.push:
        return
    reg = registry(ws)
    if reg is None:
        return
    tid, tag = task_id("install", part.id), oci.tag_for(key)
    try:
        found = holding_paths(stage, machine_paths(ws, part, stage))
    except OSError as err:
        warn(f"{tid}: not pushed to the build cache: cannot read {err.filename} to look for "
             f"this machine's paths in it: {err.strerror}", ws, tid)
        return
    if found:
        (file, path), more = found[0], len(found) - 1
        tail = f" (and {more} more file{'s' if more > 1 else ''})" if more else ""
        warn(f"{tid}: not pushed to the build cache: {file} holds this machine's path "
             f"{path}{tail}", ws, tid)
        return
    c = ws.component(part.component)
    plat = key["platform"]
    summary = {
        "platform": "-".join(x for x in (plat["id"], plat["version_id"], plat["machine"]) if x),
        "toolchains": ", ".join(f"{k} {v}" for k, v in sorted(key["toolchains"].items())),
        "key": tag,
    }
    source = "" if os.path.isabs(c.git) else c.git  # a path of this machine is no source
    commit = git.head(ws.checkout(part.component)) or ""
    signed: list[str] = []
    sign = None
    if cache.sign_key:
        from . import signing  # with sign_key only

        def sign(digest: str) -> bytes:
            armored = signing.sign(cache.sign_key, digest)
            signed.append(signing.parse_signature(armored).signer())
            return armored
    try:
        repo = reg.repo(part.component)
        there = reg.exists(repo, tag)
        replace = (repo, tag) in refused(ws)
        # A signing machine replaces an artifact of this key that is unsigned
        # or that this run refused: the tree it built is the same one, signed.
        if there and (sign is None or not replace and reg.signature(repo, there)):
            note(ws, tid, f"{tid}: already in the cache ({_where(ws, repo, tag)})")
            return
        before = reg.uploaded
        reg.push(repo, tag, stage, {"key": key},
                 oci.annotations_for(part.component, part.id, c.ref, commit, source, summary),
                 sign=sign)
        by = f", signed by {signed[0]}" if signed else ""
        note(ws, tid, f"{tid}: pushed to {_where(ws, repo, tag)} "
                      f"({reg.uploaded - before} blob(s){by})")
    except oci.CacheUnreachable as err:
        _unreachable(ws, err, tid)
    except oci.CacheError as err:
        warn(f"{tid}: build cache: could not push: {err.message}", ws, tid)
    except StackError as err:  # signing.SigningError: nothing was sent
        warn(f"{tid}: not pushed to the build cache: {err.message}"
             + (f" ({err.hint})" if err.hint else ""), ws, tid)


def _signed(signer: dict | None) -> str:
    if not signer:
        return "not verified (no settings.cache.trust)"
    return f"signed by {signer['principal']} ({signer['key']})"


def provenance(ws: Workspace, part: Part) -> str | None:
    """What ``show:NAME`` says of the build cache artifact that build:PART
    uses, or would pull now, and who signed it: from the build's record
    when it pulled the artifact of the key it has now, else by asking the
    registry (and checking the signature, as a pull would).  None without
    a cache."""
    from . import oci

    cache = ws.settings.cache
    if cache is None:
        return None
    why = not_cached(ws, part)
    if why:
        return f"not cached: {why}"
    from ...checkout import content_of

    try:
        content = content_of(ws, part.component, ws.source_state(part.component))
    except (StackError, OSError):
        return (f"not known before {task_id('patch', part.component)} has run (the key is "
                "the checkout's content)")
    key, why = key_for(ws, part, content)
    if key is None:
        return f"not cached now: {why}"
    tid, tag = task_id("build", part.id), oci.tag_for(key)
    stamp = ws.stamps.read(tid) or {}
    hit = stamp.get("from_cache")
    if hit and hit.get("tag") == tag:
        return f"{_where(ws, hit['repo'], tag)} ({hit['manifest']}), {_signed(hit.get('signer'))}"
    if not hit and stamp.get("cache_key") and oci.tag_for(stamp["cache_key"]) == tag:
        return f"built here (key {tag[:12]}), not pulled from the build cache"
    reg = registry(ws)
    if reg is None:
        return f"the build cache {cache.url} cannot be used: {tid} builds here"
    try:
        repo = reg.repo(part.component)
        manifest = reg.exists(repo, tag)
        if manifest is None:
            return f"no artifact of key {tag[:12]} in {cache.url}: {tid} builds here"
        where = f"{_where(ws, repo, tag)} ({manifest})"
        try:
            return f"would pull {where}, {_signed(signer_of(ws, reg, repo, manifest))}"
        except Refused as err:
            return f"{where} would be refused: {err}; {tid} builds here"
    except oci.CacheError as err:
        return f"the build cache cannot be asked: {err.message}"
