"""The guest image: reading it (``initramfs``), checking what it holds
(``imagecheck``), opening the file mbuto wrote (``imagefile``) and the boot
test under QEMU (``qemuboot``); for the image step."""
