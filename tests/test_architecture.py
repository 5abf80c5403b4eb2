"""The rooms of tasks/ and the rules between them (README: Architecture).

Each rule is checked on the code as it is: an import of one step from
another, a core module importing a step, the spec or the core importing the
host, a host module outside its feature package or importing another
feature, an import cycle, a process started outside run.py, a task id
spelled by hand, a module over 600 lines.
"""

from __future__ import annotations

import ast
import graphlib
import re
from pathlib import Path

import pytest
from conftest import ROOT

TASKS = ROOT / "tasks"
MAX_LINES = 600


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(TASKS.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports_of(name: str, path: Path) -> set[str]:
    """The tasks.* modules ``name`` imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tasks"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("tasks"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    return {m for m in found if m in MODULES and m != name}


MODULES = modules()
GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def room(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in ("spec", "steps", "host") else "core"


def test_the_rooms_exist():
    rooms = {room(n) for n in MODULES}
    assert rooms == {"core", "spec", "steps", "host"}
    steps = {n.split(".")[-1] for n in MODULES if room(n) == "steps"}
    assert {"fetch", "patch", "build", "install", "image", "configs", "check", "pod"} <= steps


def test_no_step_imports_another_step():
    bad = [(a, b) for a, deps in GRAPH.items() if room(a) == "steps"
           for b in deps if room(b) == "steps" and b != "tasks.steps"]
    assert bad == []


@pytest.mark.parametrize("below", ["core", "spec", "host"])
def test_nothing_below_the_steps_imports_a_step(below):
    bad = [(a, b) for a, deps in GRAPH.items() if room(a) == below
           for b in deps if room(b) == "steps"]
    assert bad == []


def test_no_import_cycles():
    graphlib.TopologicalSorter(GRAPH).prepare()  # raises CycleError naming the cycle


def test_only_the_runner_starts_processes():
    starts = re.compile(r"^\s*(import subprocess|from subprocess|import sh\b|from sh\b)|"
                        r"os\.(system|popen|kill|killpg|exec\w*|spawn\w*)\(", re.M)
    bad = [str(p.relative_to(ROOT)) for n, p in MODULES.items()
           if n != "tasks.run" and starts.search(p.read_text())]
    assert bad == []


def test_task_ids_come_from_one_helper():
    spelled = re.compile(r"""f["'](fetch|patch|build|install|config|update|reset|image|"""
                         r"""check|uninstall):\{""")
    bad = [f"{p.relative_to(ROOT)}:{i}" for n, p in MODULES.items() if n != "tasks.action"
           for i, line in enumerate(p.read_text().splitlines(), 1) if spelled.search(line)]
    assert bad == []


def test_verbosity_is_set_once():
    bad = [str(p.relative_to(ROOT)) for n, p in MODULES.items()
           if n != "tasks.loader" and '"verbosity"' in p.read_text()]
    assert bad == []


def test_no_module_is_too_big():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines())
             for p in MODULES.values()}
    assert {k: v for k, v in sizes.items() if v > MAX_LINES} == {}


def test_the_product_does_not_point_at_the_team_notebook():
    files = [ROOT / "README.md", ROOT / "stack.yaml", *ROOT.glob("docs/*.md"),
             *MODULES.values(), *ROOT.glob("configs/*")]
    bad = [str(f.relative_to(ROOT)) for f in files
           if "../shared" in f.read_text() or "stack-facts" in f.read_text()
           or "§" in f.read_text()]
    assert bad == []


@pytest.mark.parametrize("below", ["core", "spec"])
def test_nothing_below_the_host_imports_a_host_module(below):
    """What the spec needs from the host's side (the prerequisites catalog,
    the cache url's rule) lives in the core, where both read it."""
    bad = [(a, b) for a, deps in GRAPH.items() if room(a) == below
           for b in deps if room(b) == "host"]
    assert bad == []


# The host's feature packages, and the steps each one serves: a module that
# serves one step lives in the package of that step's feature.
FEATURES = {
    "pod": {"pod", "check"},  # check reads which parts a pod needs (podhints)
    "image": {"image"},
    "configs": {"configs"},
    "cache": {"build", "install", "show"},  # show: who signed the artifact a build uses
    "prereqs": {"check"},
}
# Modules at the top of tasks/host: the one rule every feature follows.
SHARED = {
    "tasks.host.runtime",
}


def feature(name: str) -> str | None:
    parts = name.split(".")
    return parts[2] if len(parts) > 3 and parts[:2] == ["tasks", "host"] else None


def test_the_host_is_split_by_feature():
    host = [n for n in MODULES if room(n) == "host"]
    assert {feature(n) for n in host} - {None} == set(FEATURES)
    packages = {f"tasks.host.{f}" for f in FEATURES}
    assert sorted(n for n in host if feature(n) is None) == sorted(SHARED | packages)


def test_no_host_feature_imports_another():
    bad = [(a, b) for a, deps in GRAPH.items() for b in deps
           if feature(b) and feature(a) != feature(b) and room(a) != "steps"]
    assert bad == []


def test_each_feature_serves_the_steps_it_names():
    used = {(a.split(".")[-1], feature(b)) for a, deps in GRAPH.items() if room(a) == "steps"
            for b in deps if feature(b)}
    assert {(s, f) for s, f in used if s not in FEATURES[f]} == set()


def loaded_on_import(name: str, path: Path) -> set[str]:
    """The tasks.* modules importing ``name`` runs: its imports outside any
    function and outside ``if TYPE_CHECKING:``."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    todo = list(ast.parse(path.read_text()).body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] \
                if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
        else:
            todo.extend(c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt))
    return {m for m in found if m in MODULES and m != name}


# The host modules a step may load when it is imported: what its task creator
# and up-to-date check use (check's catalog probe and pod hints, the runtime's
# paths).  Everything else a step's action needs is imported when it runs: a
# no-op imports every step and runs no action (issue 19).
NOOP_HOST = {"tasks.host", "tasks.host.runtime", "tasks.host.pod", "tasks.host.pod.podhints",
             "tasks.host.prereqs", "tasks.host.prereqs.probe"}


def test_importing_the_steps_loads_only_the_host_modules_a_noop_uses():
    loaded = {n: loaded_on_import(n, p) for n, p in MODULES.items()}
    reached, todo = set(), [n for n in MODULES if room(n) == "steps"]
    while todo:
        for dep in loaded[todo.pop()] - reached:
            reached.add(dep)
            todo.append(dep)
    assert sorted(n for n in reached if room(n) == "host" and n not in NOOP_HOST) == []


def test_every_package_is_in_pyproject():
    import tomllib

    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    packages = {".".join(p.parent.relative_to(ROOT).parts) for p in TASKS.rglob("__init__.py")}
    assert sorted(packages) == sorted(listed)


def test_every_query_gives_the_runners_result():
    """git's, crictl's and the runner's quick commands all answer a
    ``run.Result``: callers read ``.out``, ``.ok`` and ``.code`` alike."""
    found, bad = [], []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name == "query":
                found.append(name)
                returns = ast.unparse(node.returns) if node.returns else None
                if returns not in ("Result", "run.Result", "runner.Result"):
                    bad.append(f"{name}.query -> {returns}")
    assert {"tasks.run", "tasks.git", "tasks.host.pod.crictl"} <= set(found)
    assert bad == []


def test_one_check_class():
    """Every task's up-to-date check is ``state.Check``, given the step's key
    and missing functions (as doit's ``config_changed`` is given its config):
    no module subclasses it."""
    bad = [f"{name}.{node.name}" for name, path in MODULES.items()
           for node in ast.walk(ast.parse(path.read_text()))
           if isinstance(node, ast.ClassDef)
           and any(ast.unparse(base).split(".")[-1].endswith("Check") for base in node.bases)]
    assert bad == []


# Test files that check a property of the whole tool through doit, rather
# than one module or step.
SUITES = {"architecture", "commands", "entry", "escape", "faults", "hostile", "predict",
          "progress", "stack_cache", "trust"}


def test_the_tests_mirror_the_rooms():
    """tests/test_NAME.py (or test_NAME_TOPIC.py) tests the module or step
    NAME; the other files are the property suites above."""
    names = {n.split(".")[-1] for n in MODULES}
    bad = [p.name for p in sorted((ROOT / "tests").glob("test_*.py"))
           if p.stem[5:] not in names | SUITES
           and not any(p.stem[5:].startswith(n + "_") for n in names)]
    assert bad == []
