"""The image reader (tasks/host/image/initramfs.py) and the image check
(tasks/host/image/imagecheck.py).

Images are made here with write(), in memory: programs and libraries are
copies of the host's (read, never written), placed where a guest's linker
looks for them.  Small ELF files made by tiny_elf() cover what the host may
not have (RUNPATH, another machine, a kernel module).  Nothing is written to
disk.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import signal
import stat
import struct
import time
from contextlib import contextmanager

import pytest
from elftools.elf.elffile import ELFFile

from tasks.host.image import imagecheck, initramfs
from tasks.host.image.initramfs import BadImage, Entry, Image

HOST_LIB_DIRS = ("/lib64", "/usr/lib64", "/lib/{triple}", "/usr/lib/{triple}", "/lib", "/usr/lib")
TRIPLES = {"EM_X86_64": "x86_64-linux-gnu", "EM_AARCH64": "aarch64-linux-gnu"}
AGENT = "/usr/bin/kata-agent"
INIT = b"#!/bin/sh\nmount -t proc proc /proc\n# hand over to the agent\nexec /usr/bin/kata-agent\n"


# --- host programs ---------------------------------------------------------

def host_elf(path: str) -> tuple[str | None, list[str], str]:
    """(interpreter, needed libraries, machine) of a host file."""
    with open(path, "rb") as f:
        elf = ELFFile(io.BytesIO(f.read()))
    interp, needed = None, []
    for segment in elf.iter_segments():
        if segment.header.p_type == "PT_INTERP":
            interp = segment.get_interp_name()
        elif segment.header.p_type == "PT_DYNAMIC":
            needed += [t.needed for t in segment.iter_tags() if t.entry.d_tag == "DT_NEEDED"]
    return interp, needed, elf.header.e_machine


def host_library(name: str, machine: str) -> str:
    for folder in HOST_LIB_DIRS:
        path = f"{folder.format(triple=TRIPLES.get(machine, 'none'))}/{name}"
        if os.path.isfile(path):
            return path
    pytest.skip(f"the host's {name} is not in a standard folder")


def host_closure(program: str) -> dict[str, bytes]:
    """A host program's interpreter and libraries (and theirs), by the path
    the guest's linker will look for each at."""
    files: dict[str, bytes] = {}
    todo = [program]
    while todo:
        path = todo.pop()
        if path in files:
            continue
        with open(path, "rb") as f:
            files[path] = f.read()
        interp, needed, machine = host_elf(path)
        todo += [interp] if interp else []
        todo += [host_library(name, machine) for name in needed]
    return files


@pytest.fixture(scope="module")
def host():
    """The host's /bin/sh and a second dynamically linked program (the
    agent stand-in), both with everything they load."""
    sh = os.path.realpath("/bin/sh")
    agent = next((p for p in ("/usr/bin/ls", "/bin/ls", "/usr/bin/env") if os.path.isfile(p)),
                 None)
    if agent is None or host_elf(sh)[0] is None or host_elf(agent)[0] is None:
        pytest.skip("needs a dynamically linked /bin/sh and ls on the host")
    return {"sh": sh, "agent": agent, "sh_files": host_closure(sh),
            "agent_files": host_closure(agent), "interp": host_elf(agent)[0],
            "libs": host_elf(agent)[1]}


def good_entries(host, init: bytes = INIT, place=lambda path: path) -> dict[str, Entry]:
    """A bootable image: /init, /bin/sh, the agent, their libraries and
    interpreter, each at place(path)."""
    entries = {"/init": Entry.file("/init", init, 0o755)}
    for files, program, target in ((host["sh_files"], host["sh"], "/bin/sh"),
                                   (host["agent_files"], host["agent"], AGENT)):
        for path, data in files.items():
            path = target if path == program else path
            entries[place(path)] = Entry.file(place(path), data, 0o755)
    return entries


def image_of(entries) -> Image:
    values = entries.values() if isinstance(entries, dict) else entries
    return Image.from_bytes(initramfs.write(values))


# --- small made-up ELF files ----------------------------------------------

ET_REL, ET_EXEC, ET_DYN = 1, 2, 3
EM_X86_64, EM_AARCH64 = 62, 183


def tiny_elf(etype=ET_DYN, machine=EM_X86_64, interp=None, needed=(), runpath=None,
             rpath=None) -> bytes:
    """A minimal 64-bit little-endian ELF file: one PT_LOAD over the whole
    file at address 0, PT_INTERP if ``interp``, PT_DYNAMIC with the given
    DT_NEEDED, DT_RUNPATH and DT_RPATH, no section headers."""
    strtab = b"\0"
    offsets = {}
    for text in (*needed, runpath, rpath):
        if text is not None and text not in offsets:
            offsets[text] = len(strtab)
            strtab += text.encode() + b"\0"
    tags = [(1, offsets[n]) for n in needed]
    tags += [(29, offsets[runpath])] if runpath is not None else []
    tags += [(15, offsets[rpath])] if rpath is not None else []
    phnum = 2 + (interp is not None)
    body_start = 64 + 56 * phnum
    interp_bytes = interp.encode() + b"\0" if interp is not None else b""
    strtab_at = body_start + len(interp_bytes)
    dynamic_at = strtab_at + len(strtab) + (-(strtab_at + len(strtab)) % 8)
    tags += [(5, strtab_at), (10, len(strtab)), (0, 0)]
    dynamic = b"".join(struct.pack("<qQ", tag, value) for tag, value in tags)
    size = dynamic_at + len(dynamic)
    phdrs = [struct.pack("<IIQQQQQQ", 1, 5, 0, 0, 0, size, size, 0x1000)]
    if interp is not None:
        phdrs.append(struct.pack("<IIQQQQQQ", 3, 4, body_start, body_start, body_start,
                                 len(interp_bytes), len(interp_bytes), 1))
    phdrs.append(struct.pack("<IIQQQQQQ", 2, 6, dynamic_at, dynamic_at, dynamic_at,
                             len(dynamic), len(dynamic), 8))
    ident = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    header = ident + struct.pack("<HHIQQQIHHHHHH", etype, machine, 1, 0, 64, 0, 0, 64, 56,
                                 phnum, 64, 0, 0)
    body = header + b"".join(phdrs) + interp_bytes + strtab
    return body + b"\0" * (dynamic_at - len(body)) + dynamic


LD = "/lib64/ld-linux-x86-64.so.2"


def tiny_image(*extra: Entry, init_target: str = "/usr/bin/kata-agent") -> list[Entry]:
    """An image of made-up ELF files: /init is a link to the agent, which
    needs only the interpreter."""
    return [Entry.symlink("/init", init_target),
            Entry.file(AGENT, tiny_elf(ET_EXEC, interp=LD), 0o755),
            Entry.file(LD, tiny_elf(ET_DYN), 0o755), *extra]


# --- raw newc members, written here independently of write() ----------------

def member(name: bytes, mode: int, data: bytes = b"", ino: int = 1, nlink: int = 1,
           magic: bytes = b"070701") -> bytes:
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0)
    out = magic + b"".join(b"%08x" % v for v in fields) + name + b"\0"
    out += b"\0" * (-len(out) % 4) + data
    return out + b"\0" * (-len(out) % 4)


TRAILER = member(b"TRAILER!!!", 0, ino=0)


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging."""
    def expired(signum, frame):
        raise AssertionError(f"still running after {seconds} s")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --- detect and decompress -------------------------------------------------

@pytest.mark.parametrize("head, kind", [
    (b"070701", "none"), (b"070702", "none"), (b"\x1f\x8b\x08", "gzip"),
    (b"\xfd7zXZ\x00", "xz"), (b"\x5d\x00\x00\x80", "lzma"), (b"\x02\x21\x4c\x18", "lz4"),
    (b"\x04\x22\x4d\x18", "lz4"), (b"\x89LZO\x00", "lzo"),
])
def test_detect_knows_each_compression_by_its_magic(head, kind):
    assert initramfs.detect(head + b"\0" * 8) == kind


@pytest.mark.parametrize("data, words", [
    (b"\x28\xb5\x2f\xfd\0\0", "28 b5 2f fd"), (b"", "nothing"), (b"070707abc", "newc"),
])
def test_detect_refuses_what_it_does_not_know(data, words):
    with pytest.raises(BadImage, match=words):
        initramfs.detect(data)


def test_decompress_reads_concatenated_gzip_members_and_xz_and_lzma():
    assert initramfs.decompress(gzip.compress(b"one ") + b"\0" * 5 + gzip.compress(b"two")) \
        == b"one two"
    assert initramfs.decompress(lzma.compress(b"xz data")) == b"xz data"
    assert initramfs.decompress(lzma.compress(b"old", format=lzma.FORMAT_ALONE)) == b"old"
    assert initramfs.decompress(b"070701rest") == b"070701rest"
    assert initramfs.decompress(b"\0" * 4 + gzip.compress(b"padded")) == b"padded"


def test_decompress_refuses_a_truncated_stream():
    with pytest.raises(BadImage, match="gzip .*ends early"):
        initramfs.decompress(gzip.compress(b"x" * 1000)[:-12])


@pytest.mark.parametrize("magic, tool", [(b"\x02\x21\x4c\x18", "lz4"), (b"\x89LZO", "lzop")])
def test_lz4_and_lzo_need_a_filter_and_name_the_tool(magic, tool):
    with pytest.raises(BadImage, match=f"needs the {tool} program"):
        initramfs.decompress(magic + b"payload")


# --- read and write ---------------------------------------------------------

def test_write_then_read_gives_back_every_entry():
    entries = [Entry("/etc", stat.S_IFDIR | 0o700, uid=5, gid=6, mtime=1234),
               Entry("/etc/motd", stat.S_IFREG | 0o640, uid=7, gid=8, mtime=99, data=b"hi\n"),
               Entry.file("/usr/bin/odd", b"abcde", 0o4755),
               Entry.symlink("/bin", "usr/bin"), Entry.file("/empty", b""),
               Entry("/dev/console", stat.S_IFCHR | 0o600, rdev=os.makedev(5, 1))]
    tree = initramfs.read(initramfs.write(entries))
    for entry in entries:
        assert tree[entry.path] == entry
    assert tree["/usr/bin"].is_dir and tree["/usr"].mode == stat.S_IFDIR | 0o755
    assert tree["/bin"].is_symlink and tree["/bin"].data == b"usr/bin"
    assert tree["/usr/bin/odd"].is_executable and not tree["/etc/motd"].is_executable


def test_write_puts_folders_before_their_contents():
    data = initramfs.write([Entry.file("/a/b/c", b"x"), Entry.directory("/a/b", 0o700),
                            Entry.file("/a/0", b"y")])
    names = [name for name in (b"a/b/c", b"a/b", b"a/0", b"a") if name + b"\0" in data]
    positions = {name: data.index(name + b"\0") for name in names}
    assert positions[b"a"] < positions[b"a/0"] and positions[b"a"] < positions[b"a/b"]
    assert positions[b"a/b"] < positions[b"a/b/c"]
    assert initramfs.read(data)["/a/b"].mode == stat.S_IFDIR | 0o700


def test_read_normalises_names_and_skips_the_trailer():
    data = (member(b".", stat.S_IFDIR | 0o755, ino=1)
            + member(b"./usr", stat.S_IFDIR | 0o755, ino=2)
            + member(b"usr/x", stat.S_IFREG | 0o644, b"x", ino=3) + TRAILER)
    assert list(initramfs.read(data)) == ["/", "/usr", "/usr/x"]


def test_read_accepts_the_crc_variant():
    data = member(b"f", stat.S_IFREG | 0o644, b"crc", magic=b"070702") + \
        member(b"TRAILER!!!", 0, ino=0, magic=b"070702")
    assert initramfs.read(data)["/f"].data == b"crc"


def test_hard_links_all_get_the_data_of_the_last_link():
    data = (member(b"bin", stat.S_IFDIR | 0o755, ino=1)
            + member(b"bin/a", stat.S_IFREG | 0o755, b"", ino=7, nlink=3)
            + member(b"bin/b", stat.S_IFREG | 0o755, b"", ino=7, nlink=3)
            + member(b"bin/c", stat.S_IFREG | 0o755, b"busybox", ino=7, nlink=3)
            + member(b"bin/d", stat.S_IFREG | 0o755, b"", ino=8, nlink=1)
            + member(b"bin/e", stat.S_IFREG | 0o755, b"", ino=9, nlink=2)
            + member(b"bin/s", stat.S_IFLNK | 0o777, b"a", ino=9, nlink=2)
            + member(b"bin/f", stat.S_IFREG | 0o755, b"kmod", ino=9, nlink=2) + TRAILER)
    tree = initramfs.read(data)
    assert [tree[f"/bin/{n}"].data for n in "abcdef"] == [b"busybox"] * 3 + [b""] + [b"kmod"] * 2
    assert tree["/bin/s"].data == b"a"  # only regular files are linked by the kernel


@pytest.mark.parametrize("cut", [8, 50, 115, -20])
def test_a_truncated_archive_is_refused(cut):
    data = initramfs.write([Entry.file("/f", b"x" * 40)])
    with pytest.raises(BadImage, match="cut short"):
        initramfs.read(data[:cut] if cut > 0 else data[:cut - len(TRAILER)])


def test_a_field_that_is_not_hexadecimal_is_refused():
    data = bytearray(initramfs.write([Entry.file("/f", b"x")]))
    data[6:14] = b"nothex!!"
    with pytest.raises(BadImage, match="not hexadecimal"):
        initramfs.read(bytes(data))


@pytest.mark.parametrize("compress", [
    gzip.compress, lambda d: lzma.compress(d, check=lzma.CHECK_CRC32),
    lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE),
])
def test_compressed_images_read_the_same_as_uncompressed(compress):
    data = initramfs.write(tiny_image(Entry.file("/etc/hostname", b"guest\n")))
    tree = initramfs.read(data)
    assert tree["/etc/hostname"].data == b"guest\n" and tree["/init"].is_symlink
    assert initramfs.read(compress(data)) == tree


def test_an_lz4_image_goes_through_the_filter():
    data = initramfs.write(tiny_image())
    magic = b"\x02\x21\x4c\x18"
    calls = []

    def fake_lz4(argv, compressed):
        calls.append((argv, compressed))
        return compressed[len(magic):]

    assert "/init" in initramfs.read(data)
    assert initramfs.read(magic + data, filter=fake_lz4) == initramfs.read(data)
    assert calls == [(["lz4", "-dc"], magic + data)]
    assert Image.from_bytes(magic + data, filter=fake_lz4).entries == initramfs.read(data)


def test_an_lz4_frame_image_is_refused_as_the_kernel_cannot_read_it():
    frame = b"\x04\x22\x4d\x18" + initramfs.write(tiny_image())
    with pytest.raises(BadImage, match="frame format, which the kernel cannot unpack"):
        initramfs.read(frame, filter=lambda argv, data: data[4:])
    assert initramfs.decompress(frame, filter=lambda argv, data: data[4:]) == frame[4:]


def test_a_filter_must_return_bytes():
    with pytest.raises(TypeError, match="the lzop filter returned str, not bytes"):
        initramfs.read(b"\x89LZO" + b"x", filter=lambda argv, data: "text")
    with pytest.raises(TypeError, match="the lzop filter returned str, not bytes"):
        initramfs.decompress(b"\x89LZO" + b"x", filter=lambda argv, data: "text")


def test_later_archives_override_earlier_ones_as_the_kernel_does():
    first = initramfs.write([Entry.file("/etc/motd", b"old"), Entry.file("/usr/bin/p", b"p"),
                             Entry.symlink("/lib", "usr/lib"), Entry.directory("/usr/lib")])
    second = initramfs.write([Entry.file("/etc/motd", b"new"), Entry.file("/lib/libz.so", b"z")])
    third = gzip.compress(initramfs.write([Entry.file("/etc/extra", b"e", 0o600)]))
    tree = initramfs.read(first + b"\0" * 512 + second + third + b"\0" * 3)
    assert tree["/etc/motd"].data == b"new" and tree["/usr/bin/p"].data == b"p"
    # The second archive's /lib (a folder) leaves the link; its file lands in usr/lib.
    assert tree["/lib"].is_symlink and tree["/usr/lib/libz.so"].data == b"z"
    assert "/lib/libz.so" not in tree
    assert tree["/etc/extra"].mode == stat.S_IFREG | 0o600


def test_a_file_over_a_link_to_a_file_is_written_through_it():
    first = initramfs.write([Entry.file("/etc/real", b"old"), Entry.symlink("/etc/conf", "real")])
    tree = initramfs.read(first + initramfs.write([Entry.file("/etc/conf", b"new")]))
    assert tree["/etc/conf"].is_symlink and tree["/etc/real"].data == b"new"
    # A link over the link replaces it: the kernel removes the old one first.
    tree = initramfs.read(first + initramfs.write([Entry.symlink("/etc/conf", "other")]))
    assert tree["/etc/conf"].data == b"other" and tree["/etc/real"].data == b"old"


def test_an_unaligned_archive_and_compression_inside_compression_are_refused():
    data = initramfs.write([Entry.file("/f", b"x")])
    with pytest.raises(BadImage, match="multiple of 4"):
        initramfs.read(data + b"\0\0" + data)
    with pytest.raises(BadImage, match="inside a compressed archive"):
        initramfs.read(gzip.compress(data + gzip.compress(data)))


# --- resolving paths inside the image -------------------------------------

def test_resolve_follows_links_inside_the_image_only():
    image = image_of([Entry.symlink("/lib", "usr/lib"), Entry.symlink("/lib64", "usr/lib64"),
                      Entry.file("/usr/lib/x86_64-linux-gnu/ld.so", b"ld"),
                      Entry.symlink("/usr/lib64/ld.so", "/lib/x86_64-linux-gnu/ld.so"),
                      Entry.symlink("/usr/lib64/rel", "../lib/x86_64-linux-gnu/ld.so"),
                      Entry.symlink("/etc/shadow", "/etc/passwd"), Entry.file("/f", b"")])
    assert image.resolve("/lib64/ld.so") == "/usr/lib/x86_64-linux-gnu/ld.so"
    assert image.resolve("/lib64/rel") == "/usr/lib/x86_64-linux-gnu/ld.so"
    assert image.resolve("/lib64/ld.so", follow_last=False) == "/usr/lib64/ld.so"
    assert image.resolve("/lib/../lib64/./ld.so") == "/usr/lib/x86_64-linux-gnu/ld.so"
    assert image.resolve("/etc/shadow") is None  # the host's /etc/passwd does not count
    assert image.resolve("/f/x") is None and image.resolve("/nothing") is None
    assert image.entry("/lib64/rel").data == b"ld"


def test_nothing_is_found_below_a_file():
    """The kernel cannot create f/x when f is a file, so f/x is not there."""
    tree = initramfs.read(member(b"f", stat.S_IFREG | 0o644, b"", ino=1)
                          + member(b"f/x", stat.S_IFREG | 0o644, b"x", ino=2) + TRAILER)
    image = Image(tree)
    assert image.resolve("/f") == "/f"
    assert image.resolve("/f/x") is None and image.resolve("/f/..") is None


def test_an_empty_link_leads_nowhere():
    image = image_of([Entry.symlink("/usr/empty", ""), Entry.file("/usr/x", b"")])
    assert image.resolve("/usr/empty") is None and image.resolve("/usr/empty/x") is None
    assert image.resolve("/usr/empty", follow_last=False) == "/usr/empty"


def test_symlink_loops_end():
    image = image_of([Entry.symlink("/a", "b"), Entry.symlink("/b", "/a"),
                      Entry.symlink("/lib64", "lib64"), Entry.symlink("/init", "init"),
                      Entry.file("/usr/bin/kata-agent", tiny_elf(ET_EXEC, interp=LD), 0o755)])
    with deadline(5):
        assert image.resolve("/a") is None and image.resolve("/a/x") is None
        assert image.resolve("/a", follow_last=False) == "/a"
        found = imagecheck.problems(image)
    assert found[0] == "/init is missing"
    assert f"{AGENT} needs {LD}, which is not in the image" in found


# --- the check: host programs ---------------------------------------------

def test_a_good_image_passes(host):
    assert imagecheck.problems(image_of(good_entries(host))) == []


def test_an_image_without_the_interpreter_is_refused_naming_it(host):
    entries = good_entries(host)
    del entries[host["interp"]]
    found = imagecheck.problems(image_of(entries))
    assert f"{AGENT} needs {host['interp']}, which is not in the image" in found
    assert f"/bin/sh needs {host['interp']}, which is not in the image" in found


def test_an_image_whose_init_runs_a_missing_program_is_refused(host):
    entries = good_entries(host, init=b"#!/bin/sh\nexec /usr/sbin/missing-agent --debug\n")
    found = imagecheck.problems(image_of(entries), agent=None)
    assert found == ["/init finally runs /usr/sbin/missing-agent, which is not in the image"]


def test_an_image_without_the_agent_is_refused(host):
    entries = good_entries(host)
    del entries[AGENT]
    assert imagecheck.problems(image_of(entries)) == [
        f"/init finally runs {AGENT}, which is not in the image",
        f"the agent {AGENT} is not in the image"]


def test_a_missing_shared_library_is_refused_naming_it_and_who_needs_it(host):
    entries = good_entries(host)
    lib = next(p for p in entries if p.rsplit("/", 1)[1] == host["libs"][0])
    del entries[lib]
    found = imagecheck.problems(image_of(entries))
    assert any(line.startswith(f"{AGENT} needs {host['libs'][0]}, which is not in the image "
                               "(looked in /lib64, /usr/lib64, /lib, /usr/lib") for line in found)


def test_a_merged_usr_layout_passes(host):
    def merged(path):
        for top in ("/bin", "/lib64", "/lib"):
            if path.startswith(top + "/"):
                return "/usr" + path
        return path

    entries = good_entries(host, place=merged)
    # As on Debian, the interpreter's path is an absolute link into /lib, itself a link.
    name = os.path.basename(host["interp"])
    real = entries.pop(merged(host["interp"]))
    entries[f"/usr/lib/ld/{name}"] = Entry.file(f"/usr/lib/ld/{name}", real.data, 0o755)
    entries[real.path] = Entry.symlink(real.path, f"/lib/ld/{name}")
    links = [Entry.symlink("/bin", "usr/bin"), Entry.symlink("/lib", "usr/lib"),
             Entry.symlink("/lib64", "usr/lib64")]
    assert imagecheck.problems(image_of([*entries.values(), *links])) == []
    # Without the /lib64 link the interpreter is not where programs look for it.
    found = imagecheck.problems(image_of([*entries.values(), *links[:2]]))
    assert f"{AGENT} needs {host['interp']}, which is not in the image" in found


def test_a_static_host_program_has_nothing_to_check():
    path = "/sbin/ldconfig"
    if not os.path.isfile(path) or host_elf(path)[:2] != (None, []):
        pytest.skip(f"the host's {path} is not statically linked")
    with open(path, "rb") as f:
        static = Entry.file(path, f.read(), 0o755)
    assert imagecheck.problems(image_of(tiny_image(static))) == []


# --- the check: /init ---------------------------------------------------------

def test_init_missing_or_not_executable():
    assert imagecheck.problems(image_of(tiny_image()[1:])) == ["/init is missing"]
    init = Entry.file("/init", b"#!/bin/sh\n", 0o644)
    assert imagecheck.problems(image_of([*tiny_image()[1:], init])) == ["/init is not executable"]
    text = Entry.file("/init", b"echo hi\n", 0o755)
    assert imagecheck.problems(image_of([*tiny_image()[1:], text])) == [
        "/init is neither an ELF program nor a script starting with #!: the kernel cannot run it"]


def test_init_that_is_an_elf_program_is_checked_like_the_others():
    image = tiny_image(init_target="/sbin/init")
    image.append(Entry.file("/sbin/init", tiny_elf(ET_EXEC, interp="/lib/ld-gone.so"), 0o755))
    assert imagecheck.problems(image_of(image), agent=None) == [
        "/sbin/init needs /lib/ld-gone.so, which is not in the image"]
    assert imagecheck.problems(image_of(image)) == [
        f"/init finally runs /sbin/init, not the agent {AGENT}",
        "/sbin/init needs /lib/ld-gone.so, which is not in the image"]


MBUTO_INIT = b"""#!/bin/sh

export PATH=/bin:/usr/bin:/sbin:/usr/sbin:/usr/local/bin

mount -t proc proc /proc
for m in virtio_net virtio_pci; do
\tmodprobe ${m}
done
\t\tfor t in cpu,cpuacct blkio memory perf_event pids cpuset \\
\t\t\t freezer devices; do
\t\t\tmkdir /sys/fs/cgroup/${t}
\t\t\tmount -o rw,${t} -t cgroup cgroup /sys/fs/cgroup/${t}
\t\tdone
"""


def test_an_mbuto_init_must_end_in_the_agent_not_the_shell(host):
    """mbuto writes its fix-up script, then the program the /init link led
    to; with its link bug (patch 0001) that was the shell."""
    entries = good_entries(host, init=MBUTO_INIT + AGENT.encode() + b"\n")
    entries["/usr/bin/dash"] = Entry.symlink("/usr/bin/dash", "/bin/sh")
    assert imagecheck.problems(image_of(entries)) == []
    entries["/init"] = Entry.file("/init", MBUTO_INIT + b"/usr/bin/dash\n", 0o755)
    assert imagecheck.problems(image_of(entries)) == [
        f"/init finally runs /usr/bin/dash, not the agent {AGENT}"]
    entries["/init"] = Entry.symlink("/init", "/usr/bin/dash")
    assert imagecheck.problems(image_of(entries)) == [
        f"/init finally runs /bin/sh, not the agent {AGENT}"]


def script_image(script: bytes, *extra: Entry) -> Image:
    shell = Entry.file("/bin/sh", tiny_elf(ET_DYN, interp=LD), 0o755)
    return image_of([*tiny_image()[1:], shell, Entry.file("/init", script, 0o755), *extra])


@pytest.mark.parametrize("script, line", [
    (b"#! /bin/ash -e\nexec /usr/bin/kata-agent\n",
     "/init runs /bin/ash (its #! line), which is not in the image"),
    (b"#!\nexec /usr/bin/kata-agent\n", "/init starts with #! but names no interpreter"),
    (b"#!/bin/sh\nmount -t proc proc /proc && exec /sbin/gone # the agent\n\n# end\n",
     "/init finally runs /sbin/gone, which is not in the image"),
    (b"#!/bin/sh\nexec /sbin/continued \\\n  --debug\n", "/init finally runs /sbin/continued, "
     "which is not in the image"),
    (b"#!/bin/sh\nFOO=1 LANG=C exec /etc/motd\n", "/init finally runs /etc/motd, "
     "which is not executable"),
    (b"#!/bin/sh\nexec sh\n", f"/init finally runs sh, not the agent {AGENT}"),
    (b"#!/bin/sh\nPATH=/opt/x/::/bin\nnothere\n", "/init finally runs nothere, which is not "
     "in the image (looked in /opt/x, /bin)"),
    (b"#!/bin/sh\nexec kata-agent-2\n", "/init finally runs kata-agent-2, which is not in the "
     "image (looked in /usr/local/sbin, /usr/local/bin, /usr/sbin, /usr/bin, /sbin, /bin)"),
])
def test_init_scripts_that_cannot_end_in_the_agent(script, line):
    found = imagecheck.problems(script_image(script, Entry.file("/etc/motd", b"hi")))
    assert found == [line]


@pytest.mark.parametrize("script", [
    b"#!/bin/sh\nexec /usr/bin/kata-agent\n",
    b"#!/bin/sh\nexec kata-agent\n",
    b"#!/bin/sh\nexport PATH=/opt/agent:$PATH\nexec agent\n",
    b"#!/bin/sh\nif true; then\n  exec /usr/bin/kata-agent\nfi\n",
    b"#!/bin/sh\nexec /usr/bin/gone\necho 'a string that goes on\n",
    b"#!/bin/sh\nAGENT=/usr/bin/gone\nexec \"$AGENT\"\n",
    b"#!/bin/sh\nexport PATH='/opt/agent'\nagent\n",
])
def test_init_scripts_that_end_in_a_program_of_the_image(script):
    agent = Entry.symlink("/opt/agent/agent", AGENT)
    assert imagecheck.problems(script_image(script, agent)) == []


def test_the_agent_must_be_executable():
    image = tiny_image()
    image[1] = Entry.file(AGENT, tiny_elf(ET_EXEC, interp=LD), 0o644)
    assert imagecheck.problems(image_of(image)) == [
        "/init is not executable", f"the agent {AGENT} is not executable"]
    assert imagecheck.problems(image_of(image), agent=None) == ["/init is not executable"]


# --- the check: ELF files ---------------------------------------------------

def test_runpath_with_origin_and_rpath_are_searched_first():
    lib = tiny_elf(ET_DYN)
    image = tiny_image(
        Entry.file("/opt/app/bin/app", tiny_elf(ET_EXEC, interp=LD, needed=("libapp.so",),
                                                runpath="$ORIGIN/../lib"), 0o755),
        Entry.file("/opt/app/lib/libapp.so", lib),
        Entry.file("/opt/old/old", tiny_elf(ET_EXEC, interp=LD, needed=("libold.so",),
                                            rpath="/opt/old/lib:${ORIGIN}/x:$LIB/y"), 0o755),
        Entry.file("/opt/old/lib/libold.so", lib))
    assert imagecheck.problems(image_of(image)) == []
    image.pop()
    assert imagecheck.problems(image_of(image)) == [
        "/opt/old/old needs libold.so, which is not in the image (looked in /opt/old/lib, "
        "/opt/old/x, /lib64, /usr/lib64, /lib, /usr/lib, /lib/x86_64-linux-gnu, "
        "/usr/lib/x86_64-linux-gnu)"]


def test_runpath_hides_rpath_as_it_does_for_the_linker():
    image = tiny_image(
        Entry.file("/bin/app", tiny_elf(ET_EXEC, interp=LD, needed=("liba.so",),
                                        runpath="/r", rpath="/opt"), 0o755),
        Entry.file("/opt/liba.so", tiny_elf(ET_DYN)))
    assert imagecheck.problems(image_of(image)) == [
        "/bin/app needs liba.so, which is not in the image (looked in /r, /lib64, /usr/lib64, "
        "/lib, /usr/lib, /lib/x86_64-linux-gnu, /usr/lib/x86_64-linux-gnu)"]


def test_ld_so_conf_folders_and_includes_are_searched():
    app = Entry.file("/bin/app", tiny_elf(ET_EXEC, interp=LD, needed=("libx.so", "liby.so")),
                     0o755)
    conf = [Entry.file("/etc/ld.so.conf", b"# /opt/no\n/opt/x/\ninclude ld.so.conf.d/*.conf\n"),
            Entry.file("/etc/ld.so.conf.d/y.conf", b"hwcap 1 nosegneg\n/opt/y # /opt/no\n"),
            Entry.file("/etc/ld.so.conf.d/y.conf.off", b"/opt/off\n")]
    libs = [Entry.file("/opt/x/libx.so", tiny_elf()), Entry.file("/opt/y/liby.so", tiny_elf())]
    assert imagecheck.problems(image_of(tiny_image(app, *conf, *libs))) == []
    other = Entry.file("/bin/other", tiny_elf(ET_EXEC, interp=LD, needed=("libz.so",)), 0o755)
    assert imagecheck.problems(image_of(tiny_image(other, *conf, *libs,
                                                   Entry.file("/opt/off/libz.so", b"")))) == [
        "/bin/other needs libz.so, which is not in the image (looked in /opt/x, /opt/y, /lib64, "
        "/usr/lib64, /lib, /usr/lib, /lib/x86_64-linux-gnu, /usr/lib/x86_64-linux-gnu)"]
    assert imagecheck.problems(image_of(tiny_image(app, *libs))) == [
        "/bin/app needs libx.so, which is not in the image (looked in /lib64, /usr/lib64, /lib, "
        "/usr/lib, /lib/x86_64-linux-gnu, /usr/lib/x86_64-linux-gnu)",
        "/bin/app needs liby.so, which is not in the image (looked in /lib64, /usr/lib64, /lib, "
        "/usr/lib, /lib/x86_64-linux-gnu, /usr/lib/x86_64-linux-gnu)"]


def test_an_ld_so_conf_that_includes_itself_is_read_once():
    app = Entry.file("/bin/app", tiny_elf(ET_EXEC, interp=LD, needed=("libx.so",)), 0o755)
    conf = Entry.file("/etc/ld.so.conf", b"include /etc/ld.so.conf\ninclude *.conf\n/opt/x\n")
    image = image_of(tiny_image(app, conf, Entry.file("/opt/x/libx.so", tiny_elf())))
    assert imagecheck.problems(image) == []


def test_aarch64_files_look_in_the_aarch64_folders():
    ld = "/lib/ld-linux-aarch64.so.1"
    image = [Entry.symlink("/init", "bin/agent"),
             Entry.file("/bin/agent", tiny_elf(ET_DYN, EM_AARCH64, ld, ("libc.so.6",)), 0o755),
             Entry.file(ld, tiny_elf(ET_DYN, EM_AARCH64), 0o755),
             Entry.file("/usr/lib/aarch64-linux-gnu/libc.so.6", tiny_elf(ET_DYN, EM_AARCH64))]
    assert imagecheck.problems(image_of(image), agent="/bin/agent") == []
    image[3] = Entry.file("/usr/lib/x86_64-linux-gnu/libc.so.6", tiny_elf(ET_DYN, EM_AARCH64))
    assert "aarch64-linux-gnu)" in imagecheck.problems(image_of(image), agent="/bin/agent")[0]


def test_a_needed_path_with_a_slash_is_a_path():
    app = Entry.file("/bin/app", tiny_elf(ET_EXEC, interp=LD, needed=("/opt/l.so",)), 0o755)
    assert imagecheck.problems(image_of(tiny_image(app))) == [
        "/bin/app needs /opt/l.so, which is not in the image"]
    assert imagecheck.problems(image_of(tiny_image(app, Entry.file("/opt/l.so", b"")))) == []
    assert imagecheck.problems(image_of(tiny_image(app, Entry.directory("/opt/l.so")))) == [
        "/bin/app needs /opt/l.so, which is not in the image"]


def test_modules_static_programs_and_other_files_are_not_checked():
    module = tiny_elf(ET_REL, interp="/gone/ld.so", needed=("libgone.so",))
    static = tiny_elf(ET_EXEC)
    image = tiny_image(Entry.file("/lib/modules/6.1/kernel/virtio.ko", module),
                       Entry.file("/sbin/static", static, 0o755),
                       Entry.file("/usr/share/data", b"\x7fELF but only data", 0o644),
                       Entry.file("/usr/bin/script", b"#!/bin/sh\n", 0o755))
    assert imagecheck.problems(image_of(image)) == []
    # The same module's bytes as a library would be checked.
    library = module[:16] + struct.pack("<H", ET_DYN) + module[18:]
    assert len(imagecheck.problems(image_of(tiny_image(Entry.file("/lib/l.so", library))))) == 2


@pytest.mark.parametrize("data", [
    b"\x7fELF", b"\x7fELF\x02\x01\x01" + b"\0" * 9 + b"\x03\x00" + b"\xff" * 30,
    tiny_elf(ET_EXEC, interp=LD)[:100],
])
def test_a_broken_elf_program_is_a_problem_not_a_crash(data):
    found = imagecheck.problems(image_of(tiny_image(Entry.file("/usr/bin/broken", data, 0o755))))
    assert len(found) == 1
    assert found[0].startswith("/usr/bin/broken is a damaged ELF file that cannot run")


def test_the_list_is_ordered_and_capped():
    needy = tiny_elf(ET_EXEC, interp=LD, needed=("libgone.so",))
    programs = [Entry.file(f"/usr/bin/p{i:02}", needy, 0o755) for i in range(40)]
    # The later archive brings the first programs: the list follows paths, not the archive.
    data = initramfs.write([*tiny_image()[2:], *programs[20:]]) + initramfs.write(programs[:20])
    found = imagecheck.problems(Image.from_bytes(data))
    assert len(found) == imagecheck.MAX_PROBLEMS + 1
    assert found[:3] == ["/init is missing", f"the agent {AGENT} is not in the image",
                         "/usr/bin/p00 needs libgone.so, which is not in the image (looked in "
                         "/lib64, /usr/lib64, /lib, /usr/lib, /lib/x86_64-linux-gnu, "
                         "/usr/lib/x86_64-linux-gnu)"]
    assert found[3].startswith("/usr/bin/p01 needs")
    assert found[-1] == f"... and {42 - imagecheck.MAX_PROBLEMS} more"
    exactly = programs[:imagecheck.MAX_PROBLEMS - 2]
    found = imagecheck.problems(image_of([*tiny_image()[2:], *exactly]))
    assert len(found) == imagecheck.MAX_PROBLEMS and not found[-1].startswith("...")


def test_a_six_megabyte_image_checks_in_well_under_a_second(host):
    entries = good_entries(host)
    sh = entries["/bin/sh"].data
    for i in range(300):
        entries[f"/usr/share/doc/f{i}"] = Entry.file(f"/usr/share/doc/f{i}", b"text\n" * 200)
    for i in range(20):
        entries[f"/usr/libexec/tool{i}"] = Entry.file(f"/usr/libexec/tool{i}", sh, 0o755)
    for i in range(40):
        module = tiny_elf(ET_REL) + b"\0" * 20000
        entries[f"/lib/modules/m{i}.ko"] = Entry.file(f"/lib/modules/m{i}.ko", module)
    data = gzip.compress(initramfs.write(entries.values()), compresslevel=1)
    size = len(initramfs.decompress(data))
    assert size > 5_000_000 and len(entries) > 350
    start = time.perf_counter()
    found = imagecheck.problems(Image.from_bytes(data))
    elapsed = time.perf_counter() - start
    assert found == [] and elapsed < 0.5, f"{elapsed:.3f} s for {size} bytes"
