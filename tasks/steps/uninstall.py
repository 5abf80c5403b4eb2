"""uninstall:NAME[/PART], and uninstall (every component): take back what
an install wrote, from its record (``manifest.uninstall``).

Files changed since they were installed are kept and named, folders the
installs created are removed once empty, files they replaced are put back,
and the install's stamp is dropped: the next plain ``doit`` installs again
from the artifacts in the checkout, without a rebuild.  The tasks exist for
every component in stack.yaml and for every one that left it but still has
a record.  Checkouts are never removed.  Not part of plain ``doit``.
"""

from __future__ import annotations

from .. import manifest
from ..action import step, task_id
from ..workspace import Workspace


def _uninstall(ws: Workspace, part_id: str, quiet: bool = False) -> None:
    manifest.uninstall(ws, part_id, task_id("uninstall", part_id), quiet=quiet)


def tasks(ws: Workspace):
    parts: dict[str, set[str]] = {name: {p.id for p in c.parts}
                                  for name, c in ws.stack.components.items()}
    for part_id in manifest.recorded(ws):
        parts.setdefault(part_id.split("/")[0], set()).add(part_id)
    yield {
        "name": None,
        "doc": "uninstall every component (doit uninstall:NAME for one)",
    }
    for name in sorted(parts):
        subparts = sorted(p for p in parts[name] if p != name)
        gone = "" if name in ws.stack.components else " (no longer in stack.yaml)"
        for part_id in subparts:
            yield {
                "name": part_id,
                "doc": f"remove what {task_id('install', part_id)} wrote{gone}",
                "actions": [step(ws, task_id("uninstall", part_id),
                                 lambda p=part_id: _uninstall(ws, p))],
            }
        yield {
            "name": name,
            "doc": f"remove what the install of {name} wrote{gone}",
            # A component with parts may still have a record of its own, from
            # before it had parts: that goes too, silently if there is none.
            "actions": [step(ws, task_id("uninstall", name),
                             lambda n=name, q=bool(subparts): _uninstall(ws, n, quiet=q))],
            "task_dep": [task_id("uninstall", p) for p in subparts],
        }
