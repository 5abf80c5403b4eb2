"""graph: the task graph as Graphviz DOT and Mermaid (and SVG with ``dot``).

Nodes are the tasks a plain doit visits, grouped by component; edges are
their real dependencies (a ``needs`` is ``install:A -> build:B``); a task
that will run is filled orange, one that may run (``tasks/plan.py``) light
orange and dashed, each with a tooltip saying why.
Writes only ``<workdir>/graph.dot``, ``graph.mmd`` and ``graph.svg``:
outputs, not state (``state.atomic_write`` refuses in read-only runs).
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import loader, plan, run
from ..action import Report
from ..workspace import Workspace

STALE, MAYBE, FRESH = "#f8c471", "#fdebd0", "#d5f5e3"


def nodes(ws: Workspace, groups) -> list[tuple[str, plan.Verdict]]:
    p = plan.planner(ws.run)
    return [(t, p.verdict(t)) for t in plan.order(p.checks, groups)]


def _colour(v: plan.Verdict) -> str:
    return STALE if v.will else MAYBE if v.may else FRESH


def _class(v: plan.Verdict) -> str:
    return "stale" if v.will else "maybe" if v.may else "fresh"


def _cluster(tid: str) -> str:
    return plan.subject(tid) or "stack"


def edges(ws: Workspace, tids) -> list[tuple[str, str]]:
    known = set(tids)
    return [(d, t) for t in tids for d in plan.deps(ws.run.checks, t) if d in known]


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dot(items, links) -> str:
    out = ["digraph stack {", "  rankdir=LR;", '  node [shape=box, style="rounded,filled", '
           f'fillcolor="{FRESH}", fontname="Helvetica"];', '  edge [color="#555555"];']
    clusters: dict[str, list] = {}
    for item in items:
        clusters.setdefault(_cluster(item[0]), []).append(item)
    for n, (name, members) in enumerate(clusters.items()):
        out.append(f"  subgraph cluster_{n} {{")
        out.append(f"    label={_q(name)}; style=dashed; color=\"#999999\";")
        for tid, v in members:
            dashed = ', style="rounded,filled,dashed"' if v.may else ""
            out.append(f"    {_q(tid)} [fillcolor=\"{_colour(v)}\"{dashed}, tooltip={_q(v.why)}];")
        out.append("  }")
    for a, b in links:
        style = ' [style=dotted, color="#bbbbbb"]' if a == "check" else ""
        out.append(f"  {_q(a)} -> {_q(b)}{style};")
    out.append("}")
    return "\n".join(out) + "\n"


def _mid(tid: str, ids: dict[str, str]) -> str:
    return ids.setdefault(tid, f"t{len(ids)}")


def mermaid(items, links) -> str:
    ids: dict[str, str] = {}
    out = ["flowchart LR"]
    clusters: dict[str, list] = {}
    for item in items:
        clusters.setdefault(_cluster(item[0]), []).append(item)
    for n, (name, members) in enumerate(clusters.items()):
        out.append(f'  subgraph c{n}["{name}"]')
        for tid, _ in members:
            out.append(f'    {_mid(tid, ids)}["{tid}"]')
        out.append("  end")
    for a, b in links:
        out.append(f"  {_mid(a, ids)} --> {_mid(b, ids)}")
    out.append(f"  classDef stale fill:{STALE},stroke:#b9770e")
    out.append(f"  classDef maybe fill:{MAYBE},stroke:#b9770e,stroke-dasharray:4")
    out.append(f"  classDef fresh fill:{FRESH},stroke:#1e8449")
    for tid, v in items:
        out.append(f"  class {_mid(tid, ids)} {_class(v)}")
        out.append(f'  click {_mid(tid, ids)} "#" "{v.why.replace(chr(34), chr(39))}"')
    return "\n".join(out) + "\n"


def _write(path: Path, data: str | bytes) -> None:
    """Outside the state: a plain atomic write (read-only runs refuse
    ``state.atomic_write``, and these are outputs, not state)."""
    import tempfile  # only when a temporary file or folder is made: not on a no-op
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write(ws: Workspace) -> str:
    items = nodes(ws, plan.default_groups(ws.run.checks, loader.DEFAULT_TASKS))
    links = edges(ws, [t for t, _ in items])
    text = dot(items, links)
    made = [ws.workdir / "graph.dot", ws.workdir / "graph.mmd"]
    _write(made[0], text)
    _write(made[1], mermaid(items, links))
    if run.which("dot"):
        svg = run.query(["dot", "-Tsvg"], input=text.encode(), check=False)
        if svg.ok:
            _write(ws.workdir / "graph.svg", svg.stdout)
            made.append(ws.workdir / "graph.svg")
    will = sum(1 for _, v in items if v.will)
    may = sum(1 for _, v in items if v.may)
    lines = [f"graph: {len(items)} task(s), {will} would run (filled {STALE}), {may} more may "
             f"run (dashed, {MAYBE}):"]
    lines += [f"  {run.shown_path(p)}" for p in made]
    if len(made) == 2:
        lines.append("  (install Graphviz for graph.svg: apt-get install graphviz)")
    return "\n".join(lines)


def task(ws: Workspace) -> dict:
    return {
        "doc": "write the task graph to <workdir>/graph.dot and graph.mmd (and graph.svg with "
               "Graphviz): tasks by component, needs as install:A -> build:B, what would run "
               "filled (what may run dashed), with the reason as tooltip (reruns every time)",
        "actions": [Report(lambda: write(ws))],
    }
