"""A parallel run starts a component's next step before other components'
first steps (tasks/dispatch.py); a run with one worker keeps doit's order;
doit is left as it was when the run ends."""

from doit import control

THREE = """\
x:
  git: {up}
  ref: v1
  build: make
  artifacts: [bin/alpha]
y:
  git: {up}
  ref: v1
  build: make
  artifacts: [bin/alpha]
z:
  git: {up}
  ref: v1
  build: make
  artifacts: [bin/alpha]
"""


def _first(ran: list[str], prefix: str) -> int:
    return next(i for i, t in enumerate(ran) if t.startswith(prefix))


def test_a_parallel_run_goes_on_with_the_component_that_is_ready(project):
    # Two workers: check and fetch:x start, then fetch:y; the first fetch to
    # finish lets its patch go ahead of fetch:z (doit's order: every fetch
    # first).
    project.write_stack(THREE.format(up=project.up.alpha()))
    res = project.doit("-n", "2", "-P", "thread")
    assert sorted(res.ran) == sorted(
        ["check", "fetch:x", "fetch:y", "fetch:z", "patch:x", "patch:y", "patch:z",
         "build:x", "build:y", "build:z", "install:x", "install:y", "install:z"])
    assert _first(res.ran, "patch:") < res.ran.index("fetch:z"), res.ran
    assert project.doit("-n", "2", "-P", "thread").ran == []


def test_one_worker_keeps_doits_order(project):
    project.write_stack(THREE.format(up=project.up.alpha()))
    res = project.doit()
    assert res.ran.index("fetch:z") < _first(res.ran, "patch:"), res.ran
    assert res.ran.index("patch:z") < _first(res.ran, "build:"), res.ran


def test_the_run_leaves_doits_dispatcher_as_it_was(project):
    doits = control.TaskControl.__dict__["task_dispatcher"]
    project.write_stack(THREE.format(up=project.up.alpha()))
    project.doit("-n", "2", "-P", "thread")  # in this process
    assert control.TaskControl.__dict__["task_dispatcher"] is doits
