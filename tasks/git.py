"""The only place that talks to git.

Checkouts live in ``<workdir>/src/<NAME>``.  A checkout's ``origin`` is the
URL exactly as written in stack.yaml, so git's own ``url.<base>.insteadOf``
rewrites apply.  HEAD is detached: at the base commit, then one commit per
patch on top.  Patches are applied to a temporary index (never the work tree)
so a failing series changes nothing; only a complete series moves HEAD.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from . import run as runner
from .errors import CommandFailed, DirtyCheckout, GitError, PatchFailed
from .state import read_only

HEX40 = re.compile(r"^[0-9a-f]{40}$")
HEXISH = re.compile(r"^[0-9a-f]{7,40}$")

# Transports git may use, also for submodules and insteadOf rewrites; never
# ext:: or fd:: (they run commands).
_ENV = {
    "GIT_ALLOW_PROTOCOL": "file:git:ssh:https:http",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "true" if os.path.exists("/bin/true") else "",
    "LC_ALL": "C",
}
_IDENTITY = {
    "GIT_COMMITTER_NAME": "kata-passt-stack",
    "GIT_COMMITTER_EMAIL": "kata-passt-stack@localhost",
}


def _argv(repo: Path | None, *args: str) -> list[str]:
    # A read-only doit command (list, info) must not even refresh the index.
    base = ["git", "--no-optional-locks"] if read_only() else ["git"]
    if repo is not None:
        base += ["-C", str(repo)]
    return base + ["-c", "advice.detachedHead=false", *args]


def query(repo: Path | None, *args: str, check: bool = True, env=None,
          input: bytes | None = None) -> runner.Result:
    """A quick git command; its ``run.Result`` (``.out``, ``.ok``, ``.code``),
    as every quick command gives."""
    return runner.query(_argv(repo, *args), env={**_ENV, **(env or {})}, check=check,
                        input=input)


def text(repo: Path, *args: str, check: bool = True, env=None) -> str:
    """A quick git query's output, without its final newline."""
    out = query(repo, *args, check=check, env=env).out
    return out[:-1] if out.endswith("\n") else out


def _run(repo: Path, log: Path, *args: str, label: str = "", env=None) -> None:
    """A git command the user should see (network, checkout)."""
    runner.run(shlex.join(_argv(repo, *args)), cwd=repo, log=log,
               env={**_ENV, **(env or {})}, label=label)


# --------------------------------------------------------------------------
# Fetching


def is_repo(path: Path) -> bool:
    return (path / ".git").exists()


def ensure_repo(path: Path, url: str, log: Path, label: str) -> bool:
    """A repository at ``path`` whose origin is ``url``: created when missing
    (in a folder beside, its ``.git`` renamed into place when complete: a
    killed run leaves no half-made ``.git``, which git refuses), re-pointed
    when the URL changed.  Never re-cloned.  True when created now."""
    if not is_repo(path):
        path.mkdir(parents=True, exist_ok=True)
        making = path.parent / f".{path.name}.git-init"
        if making.exists():  # what a killed run left
            import shutil  # pulls in bz2 and lzma: only when there is something to remove
            shutil.rmtree(making)
        _run(path.parent, log, "init", "-q", making.name, label=label)
        query(making, "remote", "add", "origin", url)
        os.rename(making / ".git", path / ".git")
        making.rmdir()
        return True
    current = text(path, "config", "--get", "remote.origin.url", check=False)
    if not current:
        query(path, "remote", "add", "origin", url)
    elif current != url:
        runner.say(f"  {label}origin changes: {current} -> {url}")
        query(path, "remote", "set-url", "origin", url)
    return False


@dataclass(frozen=True)
class Remote:
    refname: str  # refs/tags/v1, refs/heads/main, or "" for a bare commit
    commit: str

    @property
    def is_tag(self) -> bool:
        return self.refname.startswith("refs/tags/")

    @property
    def is_branch(self) -> bool:
        return self.refname.startswith("refs/heads/")


def ls_remote(path: Path, ref: str) -> Remote | None:
    """What ``ref`` names at origin now (tags peeled to their commit)."""
    if HEX40.match(ref):
        return Remote("", ref)
    try:
        out = text(path, "ls-remote", "origin", ref, f"{ref}^{{}}")
    except CommandFailed as err:
        raise GitError(f"cannot reach origin of {path.name}: {err.tail or err}",
                       hint="check the URL and your network, or use a local mirror "
                            "with git's url.<base>.insteadOf") from None
    found: dict[str, str] = {}
    for line in out.splitlines():
        sha, _, name = line.partition("\t")
        found[name] = sha
    for name in (f"refs/tags/{ref}", f"refs/heads/{ref}", ref):
        if name in found or f"{name}^{{}}" in found:
            if not name.startswith("refs/"):
                continue
            return Remote(name, found.get(f"{name}^{{}}", found.get(name)))
    return None


def has_commit(path: Path, commit: str) -> bool:
    if not commit or not is_repo(path):
        return False
    return query(path, "rev-parse", "-q", "--verify", f"{commit}^{{commit}}",
                 check=False).ok


def rev_parse(path: Path, rev: str) -> str | None:
    out = text(path, "rev-parse", "-q", "--verify", f"{rev}^{{commit}}", check=False)
    return out or None


def fetch(path: Path, log: Path, label: str, remote: Remote | None, ref: str,
          depth: int, first: bool = False) -> str:
    """Bring the objects for ``ref`` into the repository; return its commit.
    ``first``: into a repository just created, which one pack leaves with
    nothing to maintain: git's automatic maintenance is not started."""
    shallow = [f"--depth={depth}"] if depth else []
    quiet = ["-c", "maintenance.auto=false"] if first else []  # (git < 2.29: no such key)
    if remote is None:
        # An abbreviated commit: only a full fetch can tell what it names.
        _run(path, log, *quiet, "fetch", "--no-tags", "origin",
             "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*", label=label)
        commit = rev_parse(path, ref)
        if commit is None:
            raise GitError(f"ref '{ref}' not found at origin ({_origin(path)})",
                           hint="check the tag, branch or commit name")
        return commit
    if remote.refname:
        local = remote.refname if remote.is_tag else \
            "refs/remotes/origin/" + remote.refname[len("refs/heads/"):]
        _run(path, log, *quiet, "fetch", *shallow, "--no-tags", "origin",
             f"+{remote.refname}:{local}", label=label)
        return remote.commit
    _run(path, log, *quiet, "fetch", *shallow, "--no-tags", "origin", remote.commit, label=label)
    if not has_commit(path, remote.commit):
        raise GitError(f"commit {remote.commit} not found at origin ({_origin(path)})")
    return remote.commit


def _origin(path: Path) -> str:
    return text(path, "config", "--get", "remote.origin.url", check=False)


# --------------------------------------------------------------------------
# The work tree


def head(path: Path) -> str | None:
    """HEAD's commit, read from the file (no process) when detached, and
    None without a process for a new repository's unborn branch (files
    refs: no ref file, no packed-refs; git's reftable format always asks)."""
    dot = path / ".git"
    try:
        content = (dot / "HEAD").read_text().strip()
    except OSError:
        return None
    if HEX40.match(content):
        return content
    ref = content[len("ref: "):] if content.startswith("ref: refs/heads/") else None
    if ref and dot.is_dir() and not (dot / "reftable").exists() \
            and not (dot / "packed-refs").exists() and not (dot / ref).exists():
        return None
    return rev_parse(path, "HEAD")


def branch(path: Path) -> str | None:
    """The branch HEAD is on, or None when detached."""
    try:
        content = (path / ".git" / "HEAD").read_text().strip()
    except OSError:
        return None
    if content.startswith("ref: refs/heads/"):
        return content[len("ref: refs/heads/"):]
    return None


def local_ref(path: Path, ref: str) -> Remote | None:
    """What ``ref`` named at origin when last fetched (tags, remote branches)."""
    for name, local in ((f"refs/tags/{ref}", f"refs/tags/{ref}"),
                        (f"refs/heads/{ref}", f"refs/remotes/origin/{ref}")):
        commit = rev_parse(path, local)
        if commit:
            return Remote(name, commit)
    return None


def local_edits(path: Path) -> list[str]:
    """Tracked files changed and untracked files added (ignored files are
    build output, not edits)."""
    return [entry.path for entry in status(path)[1]]


def refuse_if_edited(path: Path, component: str, why: str, ignore: set[str] = frozenset()) -> None:
    edits = [e for e in local_edits(path) if e not in ignore]
    if edits:
        shown = "\n".join(f"  {e}" for e in edits[:20])
        more = f"\n  ... and {len(edits) - 20} more" if len(edits) > 20 else ""
        raise DirtyCheckout(
            f"{component}: {why}, but its checkout has local edits:\n{shown}{more}",
            hint=f"commit them (git -C {path} commit -a), stash them "
                 f"(git -C {path} stash -u), or let 'doit reset:{component}' stash them for "
                 f"you ('git -C {path} stash pop' brings them back)",
        )


def switch(path: Path, commit: str, log: Path, label: str) -> None:
    """Move HEAD and the work tree to ``commit`` (detached)."""
    _run(path, log, "checkout", "-q", "--detach", commit, label=label)


def reset_hard(path: Path, commit: str, log: Path, label: str) -> None:
    _run(path, log, "reset", "-q", "--hard", commit, label=label)
    _run(path, log, "checkout", "-q", "--detach", commit, label=label)


def update_submodules(path: Path, log: Path, label: str, which) -> None:
    """Check out submodules at the commits the superproject pins: all of them
    (``which`` is True) or only the listed paths (and their own submodules)."""
    paths = ["--", *which] if isinstance(which, (list, tuple)) else []
    _run(path, log, "submodule", "sync", "--recursive", *paths, label=label)
    _run(path, log, "-c", "protocol.file.allow=always", "submodule", "update", "--init",
         "--recursive", "--force", *paths, label=label)


def apply_series(path: Path, base: str, patches: list[tuple[str, bytes]],
                 scratch: Path | None = None, upstream: str = "") -> str:
    """Commit each patch on top of ``base`` without touching the work tree;
    return the last commit.  ``patches`` holds (name shown to the user, bytes);
    ``upstream`` names the base for messages (the ref, ``v1.23.5``).  A patch
    that applies in reverse is reported as already upstream, an empty one
    as empty."""
    import tempfile  # only when a temporary file or folder is made: not on a no-op
    if not patches:
        return base
    with tempfile.TemporaryDirectory(prefix="kps-apply-", dir=scratch) as tmp:
        env = {**_IDENTITY, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        date = text(path, "show", "-s", "--format=%cI", base)
        env["GIT_COMMITTER_DATE"] = date
        query(path, "read-tree", base, env=env)
        parent = base
        for name, data in patches:
            patch_file = Path(tmp) / "p.patch"
            patch_file.write_bytes(data)
            apply = ["apply", "--cached", "--whitespace=nowarn", "-p1"]
            result = query(path, *apply, str(patch_file), env=env, check=False)
            if not result.ok:
                why = result.err.strip() or "git apply failed"
                if "No valid patches in input" in why or not data.strip():
                    raise PatchFailed(f"patch {name} is empty: it holds no diff")
                reverse = query(path, *apply, "--reverse", "--check", str(patch_file),
                                env=env, check=False)
                if reverse.ok:
                    raise PatchFailed(f"patch {name} is already in upstream at "
                                      f"{upstream or base[:12]}: drop it from stack.yaml")
                raise PatchFailed(f"patch {name} does not apply:\n{why}")
            if not text(path, "diff", "--cached", "--name-only", parent, env=env):
                raise PatchFailed(f"patch {name} changes nothing (is it empty, or already "
                                  "applied upstream?)")
            tree = text(path, "write-tree", env=env)
            subject, author = _describe_patch(path, name, data, tmp)
            author_env = {**env, **author} if author else {**env, **_author_like_committer(env)}
            parent = text(path, "commit-tree", tree, "-p", parent, "-m", subject, env=author_env)
        return parent


def _author_like_committer(env) -> dict[str, str]:
    return {"GIT_AUTHOR_NAME": env["GIT_COMMITTER_NAME"],
            "GIT_AUTHOR_EMAIL": env["GIT_COMMITTER_EMAIL"],
            "GIT_AUTHOR_DATE": env["GIT_COMMITTER_DATE"]}


def _describe_patch(path: Path, name: str, data: bytes, tmp: str):
    """Subject and author of a format-patch mail; a plain diff gets its file name."""
    # without -k, mailinfo strips "[PATCH n/m]" from the subject, as git am does
    result = query(path, "mailinfo", str(Path(tmp) / "msg"), str(Path(tmp) / "patch"),
                   input=data, check=False)
    info = {}
    if result.ok:
        for line in result.stdout.decode("utf-8", "replace").splitlines():
            key, _, value = line.partition(": ")
            info[key] = value
    subject = info.get("Subject") or f"Apply {Path(name).name}"
    body = ""
    try:
        body = (Path(tmp) / "msg").read_text(errors="replace").strip()
    except OSError:
        pass
    message = subject + (f"\n\n{body}" if body else "") + f"\n\n[kata-passt-stack: {name}]"
    author = None
    if info.get("Author") and info.get("Email"):
        author = {"GIT_AUTHOR_NAME": info["Author"], "GIT_AUTHOR_EMAIL": info["Email"]}
        if info.get("Date"):
            author["GIT_AUTHOR_DATE"] = info["Date"]
    return message, author


def tree_of(path: Path, commit: str) -> str:
    return text(path, "rev-parse", f"{commit}^{{tree}}")


def tree_with(path: Path, paths: list[str]) -> str:
    """The tree HEAD's tree would become if ``paths`` were committed as they
    are in the work tree (added, changed or deleted); nothing is written
    but objects."""
    import tempfile  # only when a temporary file or folder is made: not on a no-op
    with tempfile.TemporaryDirectory(prefix="kps-tree-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        if read_only():  # the new objects go to the scratch folder, not the checkout
            objects = text(path, "rev-parse", "--path-format=absolute", "--git-path", "objects")
            env.update({"GIT_OBJECT_DIRECTORY": str(Path(tmp) / "objects"),
                        "GIT_ALTERNATE_OBJECT_DIRECTORIES": objects})
        query(path, "read-tree", "HEAD", env=env)
        data = "".join(p + "\0" for p in paths).encode("utf-8", "surrogateescape")
        query(path, "update-index", "--add", "--remove", "-z", "--stdin", env=env, input=data)
        return text(path, "write-tree", env=env)


def paths_only_in(path: Path, old: str, new: str) -> list[str]:
    """Files tracked at ``old`` but not at ``new``."""
    out = text(path, "diff", "--name-only", "-z", "--no-renames", "--diff-filter=D", old, new)
    return [p for p in out.split("\0") if p]


# --------------------------------------------------------------------------
# Status, for deciding what changed


@dataclass
class StatusEntry:
    path: str
    kind: str  # "changed", "untracked", "submodule"


def status(path: Path) -> tuple[str | None, list[StatusEntry]]:
    """HEAD commit and the changed, deleted, untracked and submodule paths."""
    out = runner.capture(
        _argv(path, "status", "--porcelain=v2", "-z", "--branch", "--untracked-files=all"),
        env=None)
    head_oid = None
    entries: list[StatusEntry] = []
    fields = out.split("\0")
    i = 0
    while i < len(fields):
        rec = fields[i]
        i += 1
        if not rec:
            continue
        kind = rec[0]
        if kind == "#":
            if rec.startswith("# branch.oid "):
                oid = rec[len("# branch.oid "):]
                head_oid = oid if HEX40.match(oid) else None
        elif kind == "?":
            entries.append(StatusEntry(rec[2:], "untracked"))
        elif kind in "12u":
            parts = rec.split(" ", {"1": 8, "2": 9, "u": 10}[kind])
            sub = parts[2]
            name = parts[-1]
            entries.append(StatusEntry(name, "submodule" if sub.startswith("S") else "changed"))
            if kind == "2" and i < len(fields):
                # the original path of a rename: gone from the work tree, an edit too
                entries.append(StatusEntry(fields[i], "changed"))
                i += 1
    return head_oid, entries


def stash(path: Path, log: Path, label: str, message: str) -> None:
    _run(path, log, "-c", "user.name=kata-passt-stack",
         "-c", "user.email=kata-passt-stack@localhost",
         "stash", "push", "--include-untracked", "-m", message, label=label)


def on_some_ref(path: Path, commit: str) -> bool:
    """Whether a branch or tag holds ``commit`` (so moving HEAD loses nothing)."""
    out = text(path, "for-each-ref", "--count=1", "--contains", commit,
                "--format=%(refname)", "refs/heads", "refs/tags", "refs/remotes", check=False)
    return bool(out.strip())


def commits_between(path: Path, base: str, tip: str) -> list[str]:
    out = text(path, "log", "--format=%h %s", f"{base}..{tip}", check=False)
    return out.splitlines()


@dataclass(frozen=True)
class LocalCommits:
    """Commits HEAD holds beyond ``since``, the commit doit last checked out
    (the user's own, made in the checkout); what ``doit status`` warns of
    and the patch step refuses to move away from."""

    path: Path
    since: str
    lines: list[str]  # "abbrev subject", newest first
    branch: str | None  # the branch HEAD is on, if any
    kept: bool  # a branch or tag holds HEAD: moving it loses nothing

    def said(self, ref: str) -> str:
        n = len(self.lines)
        if not self.kept:
            return f"its checkout holds {n} local commit(s) on no branch, not on {ref}"
        where = f"on your branch '{self.branch}'" if self.branch else "kept on a branch or tag"
        return f"its checkout holds {n} local commit(s) {where}"

    def hint(self) -> str:
        return (f"keep them on a branch (git -C {self.path} branch my-work) or drop them "
                f"(git -C {self.path} checkout --detach {self.since[:12]}), then run doit again")


def local_commits(path: Path, since: str | None) -> LocalCommits | None:
    """The commits HEAD holds on top of ``since``; None when there are none
    (HEAD at ``since``, or on one of its ancestors).  Reads only: HEAD from
    its file, git only when HEAD moved."""
    current = head(path)
    if not current or not since or current == since:
        return None
    lines = commits_between(path, since, current)
    if not lines:
        return None
    return LocalCommits(path, since, lines, branch(path), on_some_ref(path, current))


def clear_stale_locks(path: Path, before: float) -> None:
    """Remove git lock files left by a git process that was killed (older than
    this doit run, which holds the workdir lock)."""
    gitdir = path / ".git"
    if not gitdir.is_dir():
        return
    candidates = list(gitdir.glob("*.lock")) + list(gitdir.glob("refs/**/*.lock"))
    for lock in candidates:
        try:
            if lock.stat().st_mtime < before:
                lock.unlink()
        except OSError:
            pass


# --------------------------------------------------------------------------
# Trying a patch series on another version (try:NAME), away from the checkout


def scratch_clone(source: Path, dest: Path) -> None:
    """A throw-away clone of the checkout ``source`` in ``dest``, with no
    work tree, borrowing its objects (``--shared``).  Only read from: git
    "freshens" (touches) a borrowed object whenever it writes one it has."""
    query(None, "clone", "-q", "--no-checkout", "--shared", str(source), str(dest))


def commit_named(repo: Path, ref: str) -> str | None:
    """The commit ``ref`` (a tag, branch, remote branch or commit) names in
    ``repo`` already, or None; reads only."""
    for name in (f"refs/tags/{ref}", f"refs/remotes/origin/{ref}", ref):
        commit = rev_parse(repo, f"{name}^{{commit}}")
        if commit:
            return commit
    return None


def fetch_scratch(dest: Path, url: str, ref: str) -> str:
    """A new repository in ``dest`` holding only ``ref`` fetched from
    ``url`` (shallow); the commit."""
    dest.mkdir(parents=True, exist_ok=True)
    query(dest, "init", "-q")
    query(dest, "fetch", "-q", "--depth", "1", url, ref)
    return text(dest, "rev-parse", "FETCH_HEAD^{commit}")


def scratch_tree(repo: Path, commit: str, dest: Path) -> None:
    """Write ``commit``'s files into ``dest`` (outside any repository),
    reading ``repo`` only: no object is written, none is even touched."""
    dest.mkdir(parents=True, exist_ok=True)
    env = {"GIT_INDEX_FILE": str(dest.parent / "scratch.index")}
    query(repo, f"--work-tree={dest}", "checkout", "-q", "-f", commit, "--", ".", env=env)


def try_patch(tree: Path, data: bytes, tmp: Path) -> tuple[str, str]:
    """Apply one patch to the files in ``tree`` (kept applied when it
    applies; plain ``git apply``, no repository); (verdict, detail):
    ``clean``, ``offset`` (applied, hunks moved), ``fuzz`` (applied with
    less context), ``upstream`` (applies in reverse: already there) or
    ``conflict`` (detail: files and hunks)."""
    env = {**_ENV, "GIT_CEILING_DIRECTORIES": str(tree.parent), "GIT_DIR": str(tmp / "none")}
    patch_file = tmp / "try.patch"
    patch_file.write_bytes(data)
    apply = ["git", "-C", str(tree), "apply", "--whitespace=nowarn", "-p1", "-v"]

    def attempt(*extra):
        return runner.query(apply + list(extra) + [str(patch_file)], env=env, check=False)

    first = attempt("--check")
    if first.ok:
        attempt()
        moved = re.findall(r"Hunk #(\d+) succeeded at (\d+) \(offset (-?\d+) lines?\)", first.err)
        if moved:
            return "offset", ", ".join(f"hunk {h} at line {at} (offset {off})"
                                       for h, at, off in moved)
        return "clean", ""
    if attempt("--reverse", "--check").ok:
        return "upstream", ""
    for context in ("-C2", "-C1"):
        if attempt(context, "--check").ok:
            attempt(context)
            return "fuzz", f"with {context[2:]} line(s) of context"
    failed = re.findall(r"patch failed: (.+):(\d+)", first.err)
    if failed:
        return "conflict", ", ".join(f"{path} (hunk at line {line})" for path, line in failed)
    lines = first.err.strip().splitlines()
    return "conflict", lines[-1] if lines else ""


# --------------------------------------------------------------------------
# Bisecting a component (bisect:NAME), in repositories of its own


def borrowing_repo(dest: Path, source: Path) -> None:
    """An empty repository in ``dest`` that reads the objects of the
    repository ``source`` (git's alternates, and its shallow boundary if it
    has one): a checkout for a bisect's workspace, made without copying or
    fetching anything.  ``source`` is only read."""
    objects = text(source, "rev-parse", "--path-format=absolute", "--git-path", "objects")
    query(None, "init", "-q", str(dest))
    shallow = Path(text(source, "rev-parse", "--path-format=absolute", "--git-path", "shallow"))
    if shallow.is_file():
        (dest / ".git" / "shallow").write_bytes(shallow.read_bytes())
    # last: a repository without it was cut short (see borrows())
    (dest / ".git" / "objects" / "info" / "alternates").write_text(objects + "\n")


def borrows(repo: Path) -> bool:
    """Whether ``borrowing_repo`` finished making ``repo``."""
    return (repo / ".git" / "objects" / "info" / "alternates").is_file()


def hold(repo: Path, name: str, commit: str) -> None:
    """Keep ``commit`` (and what it holds) on ``refs/remotes/NAME``: the patch
    step then sees a checkout left at one of those commits as kept, not as
    someone's work it must not move away from (``LocalCommits.kept``)."""
    query(repo, "update-ref", f"refs/remotes/{name}", commit)


def is_ancestor(repo: Path, older: str, newer: str) -> bool:
    return query(repo, "merge-base", "--is-ancestor", older, newer, check=False).ok


def bisect_order(repo: Path, bad: str, goods: list[str]) -> list[str]:
    """The commits ``bad`` holds and no good one does (``bad`` itself
    included), the best to test first: those that halve the rest most
    evenly (``git rev-list --bisect-all``)."""
    out = text(repo, "rev-list", "--bisect-all", bad, "--not", *goods)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@dataclass(frozen=True)
class CommitInfo:
    commit: str
    subject: str
    author: str  # "Name <email>"
    date: str  # the author date, YYYY-MM-DD


def commit_info(repo: Path, commit: str) -> CommitInfo:
    out = text(repo, "log", "-1", "--date=short", "--format=%H%x00%s%x00%an <%ae>%x00%ad",
               commit)
    full, subject, author, date = (out.split("\0") + ["", "", ""])[:4]
    return CommitInfo(full, subject, author, date)
