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
    """Fetch each component's pinned ref into <workdir>/src/NAME."""
    yield from fetch.tasks(WS)


def task_patch():
    """Check out the pinned commit and apply the component's patches."""
    yield from patch.tasks(WS)


def task_build():
    """Build each component (or part) from its checkout."""
    yield from build.build_tasks(WS)


def task_install():
    """Install each component (or part) into destdir or the live system."""
    yield from install.install_tasks(WS)


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


DOIT_CONFIG = loader.doit_config(WS, globals())
