"""Booting the guest image under QEMU, for ``doit image_boot``.

The guest gets the stack's kernel and a copy of the image whose agent is a
stand-in (``configs/boot-test-agent.sh``) that prints ``MARKER`` on the
console and powers the guest off.  The boot passed when the console shows
the marker (``/init`` ran to its last step) and no kernel panic.

KVM is used when ``/dev/kvm`` can be opened, TCG otherwise (``accel=kvm``
or ``accel=tcg`` forces one).  A KVM boot that neither passes nor panics
within ``KVM_TIMEOUT`` seconds is taken as a host whose nested KVM cannot
boot a guest (seen on CI-like machines: it hangs after "Probing EDD"), and
the boot is tried again under TCG.  (``-cpu host`` is not used: it aborts on
an MSR there.)
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

MARKER = "kata-passt-stack: image_boot: /init ran the agent"
PANIC = "Kernel panic"
QEMU = "qemu-system-x86_64"
KVM_TIMEOUT = 45  # s
BOOT_TIMEOUT = 300  # s: TCG boots the kata image in about 10 s on 2 cores
ACCELS = ("auto", "kvm", "tcg")


def kvm_usable(device: str = "/dev/kvm") -> bool:
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def accels(choice: str, device: str = "/dev/kvm") -> list[str]:
    """The accelerators to try, in order."""
    if choice == "kvm":
        return ["kvm"]
    if choice == "tcg":
        return ["tcg"]
    return ["kvm", "tcg"] if kvm_usable(device) else ["tcg"]


def command(kernel: str, initrd: Path, accel: str, timeout: int, memory: int = 1024) -> str:
    """The shell command that boots the guest, its serial console on stdout,
    stopped after ``timeout`` seconds."""
    argv = [QEMU, "-machine", f"accel={accel}", "-m", str(memory), "-smp", "1",
            "-nographic", "-no-reboot", "-kernel", kernel, "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=-1"]
    return f"timeout --kill-after=5 {timeout} {shlex.join(argv)}"


@dataclass(frozen=True)
class Verdict:
    passed: bool
    why: str
    last_lines: str


def judge(console: str, lines: int = 15) -> Verdict:
    """What the console says of the boot."""
    tail = "\n".join(console.splitlines()[-lines:])
    if PANIC in console:
        panic = next(line for line in console.splitlines() if PANIC in line)
        return Verdict(False, f"the kernel panicked: {panic.strip()}", tail)
    if MARKER in console:
        return Verdict(True, "/init ran to its last step (the stand-in agent)", tail)
    if "Run /init as init process" in console:
        return Verdict(False, "the kernel ran /init, but /init never reached the agent", tail)
    if not console.strip():
        return Verdict(False, "the guest printed nothing", tail)
    return Verdict(False, "the kernel never ran /init", tail)
