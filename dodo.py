"""kata-passt-stack: build the CRI-O / Kata / passt stack from stack.yaml.

    doit                  check, fetch, patch, build, install, image, configs
    doit stack=PATH       the same for another stack file
    doit list             every task;  doit info TASK: why it would run
    doit update[:NAME]    re-resolve tags and branches into stack.lock
    doit reset:NAME       stash local edits in a checkout

The task kinds, in doit's order.  tasks/loader.py (doit's loader for this
tool, named in pyproject.toml; ./stack.sh and ``python -m tasks`` use it
from any folder) calls each with the run's Workspace ``ws``: the validated
stack, and the run (``ws.run``: the command, its variables, read-only or not).
"""

from tasks.steps import build, check, configs, fetch, image, install, patch, pod


def task_fetch(ws):
    """Fetch refs into <workdir>/src/NAME; reruns when git, ref, depth or the lock change."""
    yield from fetch.tasks(ws)


def task_patch(ws):
    """Check out the pinned commit + patches; reruns when the base or a patch changes."""
    yield from patch.tasks(ws)


def task_build(ws):
    """Build from the checkout; reruns on edits, new commands or env, a changed need."""
    yield from build.build_tasks(ws)


def task_install(ws):
    """Install (destdir or live); reruns when artifacts, commands or paths change."""
    yield from install.install_tasks(ws)


def task_uninstall(ws):
    """Remove what installs wrote (uninstall:NAME[/PART]; no name: every component)."""
    from tasks.steps import uninstall

    yield from uninstall.tasks(ws)


def task_update(ws):
    """Re-resolve refs upstream and record the commits in stack.lock."""
    yield from fetch.update_tasks(ws)


def task_reset(ws):
    """Stash a checkout's local edits so its pin or patches can be applied."""
    yield from fetch.reset_tasks(ws)


def task_check(ws):
    """Check the tools, libraries and devices the stack needs; say how to install them."""
    return check.task(ws)


def task_image(ws):
    """Build the guest image with mbuto (kernel and initrd for Kata)."""
    yield from image.tasks(ws)


def task_image_boot(ws):
    """Boot the guest image under QEMU with a stand-in agent (not part of plain doit)."""
    yield from image.boot_tasks(ws, accel=ws.run.var("accel"))


def task_config(ws):
    """Write the host's configuration files (doit config:NAME force=1 overwrites hand edits)."""
    yield from configs.tasks(ws)


def task_run_pod(ws):
    """Run the example pod with crictl (starts CRI-O if it does not answer)."""
    return pod.run_task(ws)


def task_stop_pod(ws):
    """Remove the example pod; stop CRI-O if run_pod started it."""
    return pod.stop_task(ws)


def task_smoke(ws):
    """The stack's end-to-end check (stack.yaml's smoke section); reruns when its inputs change."""
    from tasks.steps import smoke

    return smoke.task(ws, boot=image.boot, pod=(pod.run_pod, pod.stop_pod))


def task_bisect(ws):
    """bisect:NAME good=REF bad=REF [test=smoke|image_boot|CMD]: the commit that broke the stack."""
    # Made only when asked for (or listed): its module stays out of other runs.
    if ws.run.command == "run" and not any(t.split(":", 1)[0] == "bisect" for t in ws.requested):
        return
    from tasks.steps import bisect

    yield from bisect.tasks(ws)


def task_status(ws):
    """Per component: ref, commit, patches, edits, built, installed; what plain doit would run."""
    from tasks.steps import status

    return status.task(ws)


def task_graph(ws):
    """Write the task graph (graph.dot, .mmd, .svg) under the workdir, stale tasks filled."""
    from tasks.steps import graph

    return graph.task(ws)


def task_show(ws):
    """show:NAME: print a component as resolved (commit, patches, commands expanded, paths)."""
    from tasks.steps import show

    yield from show.tasks(ws)


def task_try(ws):
    """try:NAME ref=REF: try the patch series on another version, in a scratch clone."""
    from tasks.steps import trial

    yield from trial.tasks(ws, ws.run.var("ref"))


# doit's own loader imported this file (doit -f PATH/dodo.py, run from a folder
# without this tool's pyproject.toml): hand the command line to ours.
if __name__ != "kps_dodo":
    from tasks.loader import hand_over

    hand_over()
