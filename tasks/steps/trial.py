"""try:NAME ref=REF: would the patch series apply to another version?

The candidate is fetched into a throw-away clone in the system's temporary
folder (a ``git clone --shared`` of the checkout when it already has REF, its
objects borrowed and only read; else REF alone, fetched shallowly from
upstream), its files are written out there, and the
series is applied to them with plain ``git apply``, patch after patch (no
object is written: git would otherwise "freshen" the checkout's copy of
an object it already has).  Each patch gets a verdict: applies
cleanly, applies with an offset or with fuzz, already upstream (it applies
in reverse), or conflicts (the files and hunks).  The checkout, stack.lock
and every stamp stay as they were.
"""

from __future__ import annotations

from pathlib import Path

from .. import git, run
from ..action import Report
from ..errors import StackError
from ..model import Component
from ..workspace import Workspace

WORDS = {"clean": "applies cleanly", "offset": "applies with offset",
         "fuzz": "applies with fuzz", "upstream": "already upstream (applies in reverse)",
         "conflict": "CONFLICTS"}


def _series(ws: Workspace, c: Component) -> list[tuple[str, bytes]]:
    out = []
    for p in c.patches:
        file = p.file if p.component is None else ws.checkout(p.component) / p.path
        shown = p.path if p.component is None else f"{p.path} (in {p.component}'s checkout)"
        try:
            out.append((shown, file.read_bytes()))
        except OSError as err:
            raise StackError(f"{c.name}: cannot read patch {shown}: {err.strerror}") from None
    return out


def report(ws: Workspace, c: Component, ref: str | None) -> str:
    import tempfile  # only when a temporary file or folder is made: not on a no-op
    if not ref:
        raise StackError(f"try:{c.name} needs the version to try: doit try:{c.name} ref=REF")
    series = _series(ws, c)
    checkout = ws.checkout(c.name)
    known = git.commit_named(checkout, ref) if git.is_repo(checkout) else None
    with tempfile.TemporaryDirectory(prefix=f"kps-try-{c.name}-") as tmp:
        clone = Path(tmp) / "repo"
        if known:  # already fetched: borrow the checkout's objects, read-only
            git.scratch_clone(checkout, clone)
            commit = known
        else:  # from upstream, into the scratch repository alone
            try:
                commit = git.fetch_scratch(clone, c.git, ref)
            except StackError as err:
                raise StackError(f"{c.name}: cannot fetch '{ref}' from {c.git}: "
                                 f"{err.message}") from None
        files = Path(tmp) / "files"
        git.scratch_tree(clone, commit, files)
        out = [f"try:{c.name}: the series of {len(series)} patch(es) on {ref} ({commit[:12]}), "
               f"now pinned at {c.ref}:"]
        counts: dict[str, int] = {}
        for name, data in series:
            verdict, detail = git.try_patch(files, data, Path(tmp))
            counts[verdict] = counts.get(verdict, 0) + 1
            out.append(f"  {name}: {WORDS[verdict]}" + (f": {detail}" if detail else ""))
    if not series:
        out.append("  (no patches)")
    bad = counts.get("conflict", 0)
    up = counts.get("upstream", 0)
    out.append(f"  {len(series) - bad - up} apply, {up} already upstream (drop from stack.yaml), "
               f"{bad} conflict(s); nothing was changed (scratch clone, {run.shown_path(Path(tmp))}"
               " removed)")
    return "\n".join(out)


def tasks(ws: Workspace, ref: str | None):
    yield {"name": None, "doc": "try:NAME ref=REF: try NAME's patch series on version REF"}
    for c in ws.stack.components.values():
        yield {
            "name": c.name,
            "doc": f"try {c.name}'s patch series on another version (ref=REF) in a scratch "
                   "clone: clean, offset, fuzz, already upstream or conflict, per patch; "
                   "the checkout and state are left as they are (reruns every time)",
            "actions": [Report(lambda c=c: report(ws, c, ref))],
        }
