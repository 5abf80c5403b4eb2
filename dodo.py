"""kata-passt-stack: build the CRI-O / Kata / passt stack from stack.yaml.

    doit                  check, fetch, patch, build, install, image, configs
    doit stack=PATH       the same for another stack file
    doit list             every task;  doit info TASK: why it would run
    doit update[:NAME]    re-resolve tags and branches into stack.lock
    doit reset:NAME       stash local edits in a checkout
"""

from pathlib import Path

from doit import get_var

from tasks import loader
from tasks.steps import build, check, configs, fetch, image, install, patch, pod

WS = loader.workspace(get_var("stack"), Path(__file__).parent)


def task_fetch():
    """Fetch refs into <workdir>/src/NAME; reruns when git, ref, depth or the lock change."""
    yield from fetch.tasks(WS)


def task_patch():
    """Check out the pinned commit + patches; reruns when the base or a patch changes."""
    yield from patch.tasks(WS)


def task_build():
    """Build from the checkout; reruns on edits, new commands or env, a changed need."""
    yield from build.build_tasks(WS)


def task_install():
    """Install (destdir or live); reruns when artifacts, commands or paths change."""
    yield from install.install_tasks(WS)


def task_uninstall():
    """Remove what installs wrote (uninstall:NAME[/PART]; no name: every component)."""
    from tasks.steps import uninstall

    yield from uninstall.tasks(WS)


def task_update():
    """Re-resolve refs upstream and record the commits in stack.lock."""
    yield from fetch.update_tasks(WS)


def task_reset():
    """Stash a checkout's local edits so its pin or patches can be applied."""
    yield from fetch.reset_tasks(WS)


def task_check():
    """Check the tools, libraries and devices the stack needs; say how to install them."""
    return check.task(WS)


def task_image():
    """Build the guest image with mbuto (kernel and initrd for Kata)."""
    yield from image.tasks(WS)


def task_image_boot():
    """Boot the guest image under QEMU with a stand-in agent (not part of plain doit)."""
    yield from image.boot_tasks(WS, accel=get_var("accel"), timeout=get_var("timeout"))


def task_config():
    """Write the host's configuration files (doit config:NAME force=1 overwrites hand edits)."""
    yield from configs.tasks(WS, force=get_var("force"))


def task_run_pod():
    """Run the example pod with crictl (starts CRI-O if it does not answer)."""
    return pod.run_task(WS)


def task_stop_pod():
    """Remove the example pod; stop CRI-O if run_pod started it."""
    return pod.stop_task(WS)


def task_status():
    """Per component: ref, commit, patches, edits, built, installed; what plain doit would run."""
    from tasks.steps import status

    return status.task(WS)


def task_graph():
    """Write the task graph (graph.dot, .mmd, .svg) under the workdir, stale tasks filled."""
    from tasks.steps import graph

    return graph.task(WS)


def task_show():
    """show:NAME: print a component as resolved (commit, patches, commands expanded, paths)."""
    from tasks.steps import show

    yield from show.tasks(WS)


def task_try():
    """try:NAME ref=REF: try the patch series on another version, in a scratch clone."""
    from tasks.steps import trial

    yield from trial.tasks(WS, get_var("ref"))


DOIT_CONFIG = loader.doit_config(WS, globals())
