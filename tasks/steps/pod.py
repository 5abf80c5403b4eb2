"""run_pod and stop_pod: the example pod of the manual procedure, with crictl.

``run_pod`` renders the pod and container templates into ``<workdir>/pod/``
(the image and command come from stack.yaml), checks what a Kata pod needs
on this host (the pre-flight, host/pod/podhints.py), makes sure CRI-O answers
(host/pod/crio.py: it restarts the crio it started when that crio's arguments,
binary or config changed), removes any pod an earlier run left (passt's
socket paths are fixed, so two of our pods cannot run at once), pulls the
image unless CRI-O has it, makes sure CRI-O has its pause image, then
``runp``, ``create``, ``start``, shows ``ip addr show`` from the container
and, with ``ping: true``, sets ``net.ipv4.ping_group_range`` in the pod's
network namespace.  The IDs are kept in ``<workdir>/state/pod.json``.  A
refusal from CRI-O gets the hint its message calls for (host/pod/podhints.py);
on any failure a diagnostics folder is written under ``<workdir>/logs/`` and
named.  ``stop_pod`` removes our pod and stops the crio run_pod started.
Both run whenever asked: there is nothing to be up to date with.

What run_pod depends on follows the runtime: with Kata, every install, the
image and every config; with another runtime (runc, crun), only the CRI-O
side of the stack (host/pod/podhints.py says which parts and configs that is).
"""

from __future__ import annotations

import json
import os
import shlex
import time
from typing import TYPE_CHECKING

from .. import run
from ..action import installs_of, step, task_id
from ..errors import CommandFailed, StackError
from ..host.pod import podhints  # run_deps, a task creator, asks it
from ..state import JsonFile
from ..workspace import Workspace

if TYPE_CHECKING:
    from ..host.pod.crictl import Crictl, Shell

PING_RANGE = "0 2147483647"
NETNS_DIRS = ("/var/run/netns", "/run/netns")  # where `ip netns exec NAME` looks


# --------------------------------------------------------------------------
# run_pod


def _remove_earlier(cri: Crictl, state: JsonFile) -> None:
    """Stop and remove every pod of ours: the recorded one, and any carrying
    our label (a state file lost, or another workdir's pod)."""
    from ..host.pod.podfiles import LABEL

    recorded = state.read().get("pod_id")
    existing = set(cri.pods())
    targets = cri.pods("--label", f"{LABEL[0]}={LABEL[1]}")
    if recorded and recorded in existing and recorded not in targets:
        targets.insert(0, recorded)
    elif recorded and recorded not in existing:
        run.say(f"the pod recorded by an earlier run_pod ({recorded[:13]}) is gone")
    for pod_id in targets:
        run.say(f"removing the pod left by an earlier run_pod: {pod_id[:13]}")
        cri("stopp", pod_id)
        cri("rmp", pod_id)
    state.clear()


def _explain(ws: Workspace, cri: Crictl, err: CommandFailed, step: str) -> None:
    """Give CRI-O's refusal of ``step`` the hint its message calls for."""
    ctx = podhints.Context.of(ws.stack, step)
    found = podhints.classify(err.message, ctx)
    if found:
        cri.shell.note(f"CRI-O's answer reads as: {found[0]}")
        err.hint = found[1]
        return
    if step == "runp":  # runp waits for CNI without saying so: ask CRI-O
        info = cri("info", check=False, quiet=True, probe="is CRI-O's network ready?")
        not_ready = podhints.network_not_ready(info.out) if info.code == 0 else None
        if not_ready:
            err.hint = podhints.cni_hint(not_ready, ctx)
            return
    if podhints.deadline_exceeded(err.tail or ""):
        err.hint = podhints.timeout_hint(ctx)
        return
    err.hint = err.hint or podhints.generic(ctx)


def _step(ws: Workspace, cri: Crictl, what: str | None, step: str, *args: str):
    """A crictl step of the pod (an ID when ``what`` names one)."""
    try:
        return cri.id(what, step, *args) if what else cri(step, *args)
    except CommandFailed as err:
        _explain(ws, cri, err, step)
        raise


def _pause_image(ws: Workspace, cri: Crictl) -> None:
    """CRI-O needs its pause image for every pod: have it before runp."""
    pod = ws.stack.pod
    image = podhints.pause_image(ws.stack, pod.crio_args)
    if cri("inspecti", image, check=False, quiet=True).code == 0:
        run.say(f"pause image {image} is present")
        return
    cri.shell.say(f"CRI-O's pause image {image} is not in its storage: pulling it")
    try:
        cri("pull", image)
    except CommandFailed as err:
        ctx = podhints.Context.of(ws.stack, "pull")
        raise StackError(f"CRI-O's pause image {image} is not in its storage, and pulling it "
                         f"failed:\n{err.tail}\n--- full log: {err.log}",
                         hint=f"without network, {podhints.pause_offline(image, ctx)}") from None


def _preflight(ws: Workspace, shell: Shell) -> None:
    pod = ws.stack.pod
    if not podhints.is_vm_runtime(ws.stack, pod.runtime):
        return
    problems = podhints.kata_preflight(ws.stack, pod.runtime)
    if problems:
        raise StackError(f"Kata pre-flight: {len(problems)} problem(s), so CRI-O was not asked "
                         f"for a '{pod.runtime}' pod:\n" + "\n".join(f"- {p}" for p in problems),
                         hint="fix these, then run run_pod again")
    shell.note("Kata pre-flight: /dev/kvm, /dev/vhost-vsock, /dev/log and the paths in the "
               "Kata configuration are there")


def run_pod(ws: Workspace) -> None:
    # The pod's host modules only when a pod is run or stopped, not on a no-op.
    from ..host.pod import crio
    from ..host.pod.crictl import Crictl, Shell
    from ..host.pod.podfiles import diagnostics, pod_state, render

    pod = ws.stack.pod
    shell = Shell(ws, "run_pod")
    state = pod_state(ws)
    cri = Crictl(shell, pod.socket, pod.start_timeout)
    rendered = None
    try:
        if ws.settings.destdir:
            run.say(f"note: destdir is {ws.settings.destdir}: crio and crictl come from PATH, "
                    "not from the staged install")
        if not shell.sudo and run.which("crictl") is None:  # before starting anything
            raise StackError("crictl: command not found",
                             hint="install it (doit install:cri-tools), and make sure the "
                                  "folder it is installed in is on PATH")
        rendered = render(ws, pod)
        pod_file, ctr_file = rendered.pod_file, rendered.ctr_file
        shell.note(f"rendered {pod_file} and {ctr_file}")
        _preflight(ws, shell)
        crio.ensure(ws, shell, pod)
        _remove_earlier(cri, state)
        if cri("images", "-q", pod.image).out.strip():
            run.say(f"image {pod.image} is present: not pulling it")
        else:
            try:
                cri("pull", pod.image, hint="check the image name (fully qualified, e.g. "
                    "docker.io/library/busybox:latest), registry access and "
                    "/etc/containers/policy.json (doit config:policy)")
            except CommandFailed as err:
                found = podhints.classify(err.tail, podhints.Context.of(ws.stack, "pull"))
                err.hint = found[1] if found else err.hint
                raise
        _pause_image(ws, cri)
        pod_id = _step(ws, cri, "pod", "runp", f"--runtime={pod.runtime}", str(pod_file))
        state.update(pod_id=pod_id, socket=pod.socket, runtime=pod.runtime, image=pod.image,
                     started=time.strftime("%Y-%m-%d %H:%M:%S"))
        ctr_id = _step(ws, cri, "container", "create", pod_id, str(ctr_file), str(pod_file))
        state.update(container_id=ctr_id)
        _step(ws, cri, None, "start", ctr_id)
        addr = cri("exec", "-s", ctr_id, "ip", "addr", "show").out
        if pod.ping:
            _ping(shell, cri, state, pod_id)
    except (StackError, OSError) as err:
        message, hint = (err.message, err.hint) if isinstance(err, StackError) else (
            str(err), None)
        where = diagnostics(ws, shell, pod.socket,
                            message + (f"\nHint: {hint}" if hint else ""), rendered)
        left = state.read().get("pod_id")
        if left:
            hint = (hint + "; " if hint else "") + \
                f"the pod {left[:13]} is left for inspection: doit stop_pod removes it"
        raise StackError(f"{message}\n--- diagnostics: {where}", hint) from None
    run.say(f"pod       {pod_id}  (runtime {pod.runtime})")
    run.say(f"container {ctr_id}  ({pod.image}: {shlex.join(pod.command)})")
    run.say("ip addr show, in the container:\n" + addr.rstrip("\n"))
    run.say("stop it with: doit stop_pod")


def _ping(shell: Shell, cri: Crictl, state: JsonFile, pod_id: str) -> None:
    """Let passt (which drops to nobody) use ping sockets in the pod's netns:
    the sysctl is per network namespace (docs/stack-notes.md#passt)."""
    from ..host.pod.crictl import netns_path

    res = cri("inspectp", "-o", "json", pod_id)
    try:
        info = json.loads(res.out)
    except ValueError:
        raise StackError("crictl inspectp did not print JSON", hint=f"see {shell.log}") from None
    path = netns_path(info)
    if not path:
        raise StackError(f"no network namespace path in crictl inspectp {pod_id[:13]}",
                         hint="set pod.ping: false to skip the ping_group_range sysctl")
    if os.path.dirname(path) not in NETNS_DIRS:
        raise StackError(f"the pod's network namespace {path} is not under /var/run/netns, "
                         "where 'ip netns exec' looks",
                         hint=f"run: nsenter --net={path} sysctl -w "
                              f"net.ipv4.ping_group_range=\"{PING_RANGE}\"; or set pod.ping: "
                              "false")
    name = os.path.basename(path)
    shell.query(["ip", "netns", "exec", name,
                 "sysctl", "-w", f"net.ipv4.ping_group_range={PING_RANGE}"])
    state.update(netns=path)
    run.say(f"net.ipv4.ping_group_range = {PING_RANGE} in the pod's netns {name}")


# --------------------------------------------------------------------------
# stop_pod


def stop_pod(ws: Workspace) -> None:
    # The pod's host modules only when a pod is run or stopped, not on a no-op.
    from ..host.pod import crio
    from ..host.pod.crictl import Crictl, Shell
    from ..host.pod.podfiles import LABEL, pod_state

    state = pod_state(ws)
    record = state.read()
    socket = record.get("socket") or (ws.stack.pod.socket if ws.stack.pod else
                                      crio.DEFAULT_SOCKET)
    shell = Shell(ws, "stop_pod")
    shell.note(f"stop_pod at {time.strftime('%Y-%m-%d %H:%M:%S')}: our pod on {socket}, and "
               "the crio run_pod started")
    done = False
    if crio.answers(shell, socket, record=True):
        cri = Crictl(shell, socket, ws.stack.pod.start_timeout if ws.stack.pod else 60)
        recorded = record.get("pod_id")
        targets = cri.pods("--label", f"{LABEL[0]}={LABEL[1]}")
        if recorded and recorded not in targets and recorded in cri.pods():
            targets.insert(0, recorded)
        for pod_id in targets:
            cri("stopp", pod_id)
            cri("rmp", pod_id)
            shell.say(f"removed the pod {pod_id[:13]}")
            done = True
        state.clear()
    elif record.get("pod_id"):
        shell.say(f"CRI-O does not answer on {socket}: the pod {record['pod_id'][:13]} cannot be "
                  "removed now (run_pod or stop_pod removes it once CRI-O runs again)")
    stopped = crio.stop_ours(ws, shell)
    if stopped:
        shell.say(stopped)
        done = done or stopped.startswith("stopped")
    elif crio.answers(shell, socket):
        shell.say(f"CRI-O on {socket} was not started by run_pod: left running")
    if not done:
        shell.say("nothing to stop: no pod of ours, and no crio started by run_pod")


# --------------------------------------------------------------------------
# doit


def _no_pod():
    raise StackError("stack.yaml has no 'pod' section",
                     hint="add one: 'pod: {}' runs busybox with the kata runtime")


def run_deps(ws: Workspace) -> list[str]:
    """What run_pod waits for.  A Kata pod needs the whole stack: every
    install, the image and every config.  A pod of another runtime (runc,
    crun) needs only the CRI-O side: the configs of CRI-O, CNI, crictl and
    the containers library, and the installs host/pod/podhints.py's
    crio_side_parts() names (crio, crictl, the CNI plugins, what those
    configs name or need)."""
    stack = ws.stack
    if podhints.is_vm_runtime(stack, stack.pod.runtime):
        deps = [t for name in stack.components for t in installs_of(ws, name)]
        if stack.image is not None:
            deps.append(task_id("image"))
        return deps + [task_id("config", name) for name in stack.configs]
    return ([task_id("install", p.id) for p in podhints.crio_side_parts(stack)]
            + [task_id("config", c.name) for c in podhints.crio_side_configs(stack)])


def run_task(ws: Workspace) -> dict:
    stack = ws.stack
    if stack.pod is None:
        return {"doc": "run the example pod (stack.yaml has no 'pod' section)",
                "actions": [step(ws, task_id("run_pod"), _no_pod)]}
    return {
        "doc": f"run the example pod ({stack.pod.image} with runtime {stack.pod.runtime}); "
               "starts CRI-O if it does not answer",
        "actions": [step(ws, task_id("run_pod"), lambda: run_pod(ws))],
        "task_dep": run_deps(ws),
    }


def stop_task(ws: Workspace) -> dict:
    return {
        "doc": "remove the example pod, and stop CRI-O if run_pod started it",
        "actions": [step(ws, task_id("stop_pod"), lambda: stop_pod(ws))],
    }
