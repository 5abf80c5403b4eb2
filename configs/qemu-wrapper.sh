#!/bin/sh
# Written by kata-passt-stack because debug.qemu_log is true in stack.yaml
# (template: configs/qemu-wrapper.sh).  Kata starts this script instead of
# QEMU ([hypervisor.qemu] path); it runs the real QEMU with the guest's serial
# console (kernel and agent messages, with console=ttyS0 on the kernel command
# line) written to a file, and QEMU's own error output to another: see
# "Troubleshooting" in the kata-passt howto.  Both files are rewritten by each
# VM start.  Set debug.qemu_log: false to have Kata run QEMU itself again.
logs=@LOGS@
mkdir -p "$logs"
exec @QEMU@ "$@" -serial "file:$logs/qemu-serial.log" 2>"$logs/qemu-stderr.log"
