#!/bin/sh
# Put in place of the kata-agent by `doit image_boot` (template:
# configs/boot-test-agent.sh), in a copy of the image only.  /init runs the
# agent as its last step: this stand-in says so on the console and powers
# the guest off, so the boot test ends by itself.
echo "@MARKER@" > /dev/console 2>/dev/null || echo "@MARKER@"
echo o > /proc/sysrq-trigger
sleep 30
