"""Stand-in qemu-system-x86_64 for tests: reads the -initrd it is given (an
uncompressed newc archive) the way the kernel would and prints what the
real Debian 6.1 kernel printed on its serial console for such an image
under TCG: /init failing for want of its dynamic linker and the panic, or
/init running its last line, whose program (the image_boot stand-in agent)
prints its marker and powers off.

$STANDIN_QEMU_MODE: ``boot`` (default: judge the initrd), ``panic`` (the
panic whatever the image), ``kvm-hang`` (under accel=kvm, hang after
"Probing EDD" as nested KVM does on CI-like machines; under TCG, boot).
Its argv goes to $STANDIN_DIR/calls.jsonl.
"""

import json
import os
import re
import sys
import time
from pathlib import Path

BANNER = [
    "SeaBIOS (version 1.16.2-debian-1.16.2-1)",
    "Booting from ROM...",
    "Probing EDD (edd=off to disable)... ok",
]
KERNEL = [
    "[    0.000000] Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org) (gcc-12 "
    "(Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP "
    "PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-26)",
    "[    0.000000] Command line: {append}",
    "[    2.941140] Trying to unpack rootfs image as initramfs...",
    "[    2.947688] Run /init as init process",
]
PANIC = [
    "[    2.809903] Failed to execute /init (error -2)",
    "[    2.810242] Run /sbin/init as init process",
    "[    2.810859] Run /etc/init as init process",
    "[    2.811827] Run /bin/init as init process",
    "[    2.812223] Run /bin/sh as init process",
    "[    2.813121] Kernel panic - not syncing: No working init found.  Try passing init= "
    "option to kernel. See Linux Documentation/admin-guide/init.rst for guidance.",
]
POWER_OFF = [
    "[    5.311738] ACPI: PM: Preparing to enter system sleep state S5",
    "[    5.312598] reboot: Power down",
]


def newc(data):
    """{path: (mode, content)} of a newc archive."""
    files, pos = {}, 0
    while pos + 110 <= len(data) and data[pos:pos + 6] in (b"070701", b"070702"):
        fields = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        body = data[pos:pos + size]
        pos = (pos + size + 3) & ~3
        if name == "TRAILER!!!":
            break
        files["/" + name.lstrip("./")] = (mode, body)
    return files


def resolve(files, path, depth=0):
    if depth > 20 or path not in files:
        return None
    mode, body = files[path]
    if mode & 0o170000 == 0o120000:
        target = body.decode()
        target = target if target.startswith("/") else os.path.join(os.path.dirname(path),
                                                                    target)
        return resolve(files, os.path.normpath(target), depth + 1)
    return path


def main():
    args = sys.argv[1:]
    with open(Path(os.environ["STANDIN_DIR"]) / "calls.jsonl", "a") as f:
        f.write(json.dumps({"argv": args, "cmd": "qemu"}) + "\n")
    opts = dict(zip(args[::2], args[1::2], strict=False))
    accel = next((a.split("=", 1)[1] for a in args if a.startswith("accel=")), "tcg")
    mode = os.environ.get("STANDIN_QEMU_MODE", "boot")
    for line in BANNER:
        print(line, flush=True)
    if mode == "kvm-hang" and accel == "kvm":
        time.sleep(600)
    kernel = opts.get("-kernel", "")
    if not os.path.isfile(kernel):
        print(f"qemu: could not open kernel file '{kernel}': No such file or directory",
              file=sys.stderr)
        sys.exit(1)
    for line in KERNEL:
        print(line.format(append=opts.get("-append", "")), flush=True)
    files = newc(Path(opts["-initrd"]).read_bytes())
    init = files.get("/init", (0, b""))[1].decode(errors="replace")
    shell = re.match(r"#!\s*(\S+)", init)
    runnable = shell and resolve(files, shell.group(1)) and \
        resolve(files, "/lib64/ld-linux-x86-64.so.2")
    if mode == "panic" or not runnable:
        for line in PANIC:
            print(line, flush=True)
        time.sleep(0.2)
        sys.exit(0)  # panic=-1 and -no-reboot: QEMU exits
    last = [line for line in init.splitlines() if line.strip()][-1].split()[-1]
    agent = resolve(files, last)
    marker = re.search(rb'echo "([^"@]+)"', files[agent][1]) if agent else None
    if marker:
        print(marker.group(1).decode(), flush=True)
        for line in POWER_OFF:
            print(line, flush=True)
    else:
        time.sleep(600)  # the real agent waits for the runtime


main()
