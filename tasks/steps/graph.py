"""graph: the task graph as Graphviz DOT and Mermaid (and SVG with ``dot``).

Nodes are the tasks a plain doit visits, grouped by component; edges are
their real dependencies (a ``needs`` is ``install:A -> build:B``); a task
that would run is filled, with a tooltip saying why (``tasks/plan.py``).
Writes only ``<workdir>/graph.dot``, ``graph.mmd`` and ``graph.svg``:
outputs, not state (``state.atomic_write`` refuses in read-only runs).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .. import loader, plan, run
from ..action import Report
from ..workspace import Workspace

STALE, FRESH = "#f8c471", "#d5f5e3"


def nodes(groups) -> list[tuple[str, bool, str]]:
    p = plan.planner()
    return [(t, *p.verdict(t)) for t in plan.order(groups)]


def _cluster(tid: str) -> str:
    return plan.subject(tid) or "stack"


def edges(tids) -> list[tuple[str, str]]:
    known = set(tids)
    return [(d, t) for t in tids for d in plan.deps(t) if d in known]


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
        for tid, stale, why in members:
            colour = STALE if stale else FRESH
            out.append(f"    {_q(tid)} [fillcolor=\"{colour}\", tooltip={_q(why)}];")
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
        for tid, _, _ in members:
            out.append(f'    {_mid(tid, ids)}["{tid}"]')
        out.append("  end")
    for a, b in links:
        out.append(f"  {_mid(a, ids)} --> {_mid(b, ids)}")
    out.append(f"  classDef stale fill:{STALE},stroke:#b9770e")
    out.append(f"  classDef fresh fill:{FRESH},stroke:#1e8449")
    for tid, stale, why in items:
        out.append(f"  class {_mid(tid, ids)} {'stale' if stale else 'fresh'}")
        out.append(f'  click {_mid(tid, ids)} "#" "{why.replace(chr(34), chr(39))}"')
    return "\n".join(out) + "\n"


def _write(path: Path, data: str | bytes) -> None:
    """Outside the state: a plain atomic write (read-only runs refuse
    ``state.atomic_write``, and these are outputs, not state)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write(ws: Workspace) -> str:
    items = nodes(plan.default_groups(loader.DEFAULT_TASKS))
    links = edges([t for t, _, _ in items])
    text = dot(items, links)
    made = [ws.workdir / "graph.dot", ws.workdir / "graph.mmd"]
    _write(made[0], text)
    _write(made[1], mermaid(items, links))
    if run.which("dot"):
        svg = run.query(["dot", "-Tsvg"], input=text.encode(), check=False)
        if svg.ok:
            _write(ws.workdir / "graph.svg", svg.stdout)
            made.append(ws.workdir / "graph.svg")
    stale = sum(1 for _, s, _ in items if s)
    lines = [f"graph: {len(items)} task(s), {stale} would run (filled {STALE}):"]
    lines += [f"  {run.shown_path(p)}" for p in made]
    if len(made) == 2:
        lines.append("  (install Graphviz for graph.svg: apt-get install graphviz)")
    return "\n".join(lines)


def task(ws: Workspace) -> dict:
    return {
        "doc": "write the task graph to <workdir>/graph.dot and graph.mmd (and graph.svg with "
               "Graphviz): tasks by component, needs as install:A -> build:B, what would run "
               "filled, with the reason as tooltip (reruns every time)",
        "actions": [Report(lambda: write(ws))],
    }
