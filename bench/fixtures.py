"""Fixture upstreams shaped like the real stack, and the stack file that uses them.

Seven git repositories with about as many tracked files as the real trees
(CRI-O ~10,000, QEMU ~9,000 plus the seven submodules the stack lists,
cri-tools ~3,300, Kata ~2,800, CNI plugins ~2,000, passt ~200, mbuto a
handful), nested folders, files of a few KB, a .gitignore for the build
outputs, two versions each (tagged like the real pins), Makefiles and build
scripts that take the very commands of the real stack.yaml and honour
DESTDIR/PREFIX the way the real ones do.  passt carries the Kata patch and
the two QEMU patches, as upstream does; mbuto's patch lives beside the
stack file.

Every "binary" is a small shell script holding a checksum of exactly the
sources it is built from, so whether an artifact changes is known in advance
(the change matrix relies on it):

    passt        passt <- passt.c util.c tap.c;  qrap <- qrap.c
    cri-o        bin/crio <- cmd/crio/main.go internal/version/version.go + BUILDTAGS
                 bin/crio-status <- cmd/crio-status/main.go version.go + BUILDTAGS
                 bin/pinns <- pinns/src/pinns.c
    cni-plugins  bin/<plugin> <- plugins/*/<plugin>/*.go + the build arguments
    cri-tools    build/bin/crictl <- cmd/crictl/main.go pkg/version/version.go + VERSION=
    kata runtime containerd-shim-kata-v2, kata-runtime <- their main.go + virtcontainers/*.go
                 kata-monitor <- cmd/kata-monitor/main.go; configuration-qemu.toml <- .in
    kata agent   kata-agent <- src/main.rs src/version.rs + LIBC, SECCOMP
                 (src/version.rs is generated and deliberately NOT git-ignored: a
                 build output written into the tree)
    qemu         qemu-system-x86_64 <- softmmu/main.c net/socket.c dtc/libfdt/fdt.c
                 and the configure arguments (so $PREFIX);  virtiofsd <- passthrough_ll.c

The Kata patch touches src/runtime/virtcontainers/ (runtime inputs, not the
agent's); the QEMU patches touch net/socket.c.  Version 2 of each upstream
changes one artifact input and 1% of the other files; never a patched file.
"""

from __future__ import annotations

import os
import random
import subprocess
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Fixture Author",
    "GIT_AUTHOR_EMAIL": "fixture@example.org",
    "GIT_COMMITTER_NAME": "Fixture Author",
    "GIT_COMMITTER_EMAIL": "fixture@example.org",
    "GIT_CONFIG_NOSYSTEM": "1",
}

# Real-ish sizes.  The QEMU submodules are on top of QEMU's own count.
SIZES = {
    "cri-o": 10_000,
    "qemu": 9_000,
    "cri-tools": 3_300,
    "kata-containers": 2_800,
    "cni-plugins": 2_000,
    "passt": 200,
}
QEMU_SUBMODULES = {  # path -> files (the ones stack.yaml lists)
    "meson": 1_500,
    "capstone": 1_000,
    "dtc": 400,
    "tests/fp/berkeley-softfloat-3": 300,
    "tests/fp/berkeley-testfloat-3": 150,
    "slirp": 120,
    "ui/keycodemapdb": 30,
}
QEMU_OTHER_SUBMODULES = ["roms/seabios", "roms/SLOF"]  # recorded, never checked out

WORDS = """
alloc async bridge buf cache cfg chan client codec conn ctx daemon decode device dial
driver encode errors event exec fd filter flags frame fs handler hook host image index
info init io ipam kernel label lease link list listen loader lock log manager mount
mux net node oci opts parse path pod pool port probe proto proxy queue reader record
registry route rpc runtime sandbox scan schema secret server service session shim
signal socket spec state status storage stream sync table task timer token trace
transport tree types unix util value vendor version view virt volume watch worker
writer xattr yaml zone
""".split()

CODE = """
if err != nil { return err }
for i := range items {
return nil, fmt.Errorf("cannot %s: %w", name, err)
ctx, cancel := context.WithTimeout(ctx, timeout)
defer cancel()
static int do_something(struct ctx *c, const char *arg)
	if (rc < 0) goto out;
	memcpy(buf, src, len);
let mut state = State::default();
match value { Some(v) => v, None => return Ok(()) }
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
// TODO: handle the error path properly
/* This is free software; see the COPYING file for details. */
	logrus.WithField("id", id).Debug("starting")
	return &Config{Path: path, Options: opts}, nil
}
""".strip().splitlines()


def git(repo: Path, *args: str, env: dict | None = None) -> str:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                            env={**os.environ, **GIT_ENV, **(env or {})})
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} in {repo} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def _pool(seed: int, size: int = 192 * 1024) -> str:
    rng = random.Random(seed)
    lines, n = [], 0
    while n < size:
        if rng.random() < 0.5:
            line = rng.choice(CODE)
        else:
            line = "\t" * rng.randint(0, 3) + " ".join(rng.choices(WORDS, k=rng.randint(2, 11)))
        lines.append(line)
        n += len(line) + 1
    return "\n".join(lines) + "\n"


@dataclass
class Tree:
    """The files of one repository version: ``{path: text}``."""

    seed: int
    count: int
    tops: list[str]
    exts: list[str]
    special: dict[str, str] = field(default_factory=dict)
    bulk: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.rng = random.Random(self.seed)
        self.pool = _pool(self.seed)

    def _paths(self, count: int) -> list[str]:
        rng, seen, out = self.rng, set(self.special), []
        while len(out) < count:
            depth = rng.randint(1, 4)
            folder = "/".join([rng.choice(self.tops)] + rng.choices(WORDS, k=depth))
            for _ in range(rng.randint(3, 24)):
                name = rng.choice(WORDS)
                if rng.random() < 0.5:
                    name += "_" + rng.choice(WORDS)
                path = f"{folder}/{name}{rng.choice(self.exts)}"
                if path not in seen:
                    seen.add(path)
                    out.append(path)
                if len(out) >= count:
                    break
        return out

    def _body(self, path: str, salt: int) -> str:
        size = self.rng.randint(600, 6000)
        start = self.rng.randrange(0, len(self.pool) - size)
        start = self.pool.index("\n", start) + 1
        end = self.pool.rfind("\n", start, start + size) + 1
        return f"// {path} ({salt})\n// SPDX-License-Identifier: Apache-2.0\n\n" \
               + self.pool[start:end]

    def first(self) -> dict[str, str]:
        self.bulk = self._paths(max(0, self.count - len(self.special)))
        files = {rel: self._body(rel, 1) for rel in self.bulk}
        files.update(self.special)
        return files

    def second(self, changed: dict[str, str], fraction: float = 0.01) -> dict[str, str]:
        """What version 2 changes: ``fraction`` of the bulk, and ``changed``."""
        files = {rel: self._body(rel, 2)
                 for rel in self.rng.sample(self.bulk, int(len(self.bulk) * fraction))}
        files.update(changed)
        return files


EXECUTABLE = ("configure", "build_linux.sh", "mbuto")


class Repo:
    """A bare upstream repository, written in one ``git fast-import`` run
    (a server holds packs, not loose objects; and it takes seconds)."""

    def __init__(self, path: Path):
        self.path = path
        path.mkdir(parents=True)
        git(path, "init", "-q", "--bare", "-b", "main")
        self.chunks: list[bytes] = []
        self.marks = 0
        self.last: int | None = None

    def _data(self, text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        self.chunks.append(b"data %d\n" % len(data) + data + b"\n")

    def commit(self, files: dict[str, str], message: str, when: int,
               tag: str | None = None, gitlinks: dict[str, str] | None = None) -> int:
        """A commit on main changing ``files`` (and gitlinks) on the last one."""
        lines = []
        for rel, text in files.items():
            self.marks += 1
            self.chunks.append(b"blob\nmark :%d\n" % self.marks)
            self._data(text)
            mode = "100755" if rel.rsplit("/", 1)[-1] in EXECUTABLE else "100644"
            lines.append(f"M {mode} :{self.marks} {rel}\n")
        for rel, commit in (gitlinks or {}).items():
            lines.append(f"M 160000 {commit} {rel}\n")
        self.marks += 1
        who = f"Fixture Author <fixture@example.org> {when} +0000"
        self.chunks.append(f"commit refs/heads/main\nmark :{self.marks}\n"
                           f"author {who}\ncommitter {who}\n".encode())
        self._data(message)
        if self.last:
            self.chunks.append(f"from :{self.last}\n".encode())
        self.chunks.append("".join(lines).encode() + b"\n")
        self.last = self.marks
        if tag:
            self.chunks.append(f"tag {tag}\nfrom :{self.marks}\ntagger {who}\n".encode())
            self._data(tag)
        return self.marks

    def finish(self) -> dict[int, str]:
        """Run fast-import; return mark -> commit."""
        marks = self.path / "marks"
        result = subprocess.run(
            ["git", "-C", str(self.path), "fast-import", "--quiet", f"--export-marks={marks}"],
            input=b"".join(self.chunks), capture_output=True, env={**os.environ, **GIT_ENV})
        if result.returncode != 0:
            raise RuntimeError(f"fast-import in {self.path}: {result.stderr.decode()}")
        self.chunks = []
        out = {}
        for line in marks.read_text().splitlines():
            mark, sha = line.split()
            out[int(mark[1:])] = sha
        marks.unlink()
        return out


def _format_patch(before: dict[str, str], edits: list[tuple[str, dict[str, str]]],
                  when: int) -> list[str]:
    """Mails for the commits ``edits`` (subject, {path: new text}) on top of
    ``before``, made in a scratch repository holding only those files: the
    index lines name the same blobs, so they apply to the full tree."""
    date = {"GIT_AUTHOR_DATE": f"@{when} +0000", "GIT_COMMITTER_DATE": f"@{when} +0000"}
    with tempfile.TemporaryDirectory(prefix="kps-bench-patch-") as tmp:
        repo = Path(tmp)
        git(repo, "init", "-q", "-b", "main")

        def put(files):
            for rel, text in files.items():
                (repo / rel).parent.mkdir(parents=True, exist_ok=True)
                (repo / rel).write_text(text)
            git(repo, "add", "-A")

        put(before)
        git(repo, "commit", "-q", "-m", "base", env=date)
        for subject, files in edits:
            put(files)
            git(repo, "commit", "-q", "-m", subject, env=date)
        return [git(repo, "format-patch", "-1", "--stdout", f"HEAD~{i - 1}") + "\n"
                for i in range(len(edits), 0, -1)]


# --------------------------------------------------------------------------
# Build files.  Every artifact is "compiled" by this canned recipe: a script
# that prints its name and the checksum of its inputs (and $(EXTRA)).

COMPILE = """\
define compile
\t@mkdir -p $(@D)
\t@sum=$$(cat $(filter-out FORCE,$^) | cksum); \\
\tprintf '#!/bin/sh\\necho %s %s %s\\n' "$(@F)" "$${sum%% *}" "$(EXTRA)" > $@.tmp
\t@chmod 755 $@.tmp && mv $@.tmp $@
endef
"""


def _mk(text: str) -> str:
    """A Makefile from indented text: leading 4-space recipe lines get a tab."""
    lines = []
    for line in textwrap.dedent(text).splitlines():
        lines.append("\t" + line[4:] if line.startswith("    ") else line)
    return COMPILE + "\n".join(lines) + "\n"


PASST_MAKEFILE = _mk("""
    prefix ?= /usr/local
    bindir ?= $(prefix)/bin

    all: passt qrap

    passt: passt.c util.c tap.c
        $(compile)

    qrap: qrap.c
        $(compile)

    install: passt qrap
        mkdir -p $(DESTDIR)$(bindir)
        cp -f passt qrap $(DESTDIR)$(bindir)
        ln -sf passt $(DESTDIR)$(bindir)/pasta

    .PHONY: all install
    """)

CRIO_MAKEFILE = _mk("""
    # As upstream: PREFIX is built from DESTDIR, so an explicit PREFIX must carry it.
    PREFIX ?= $(DESTDIR)/usr/local
    BINDIR ?= $(PREFIX)/bin
    BUILDTAGS ?= seccomp
    EXTRA = $(BUILDTAGS)

    binaries: bin/crio bin/crio-status bin/pinns

    bin/crio: cmd/crio/main.go internal/version/version.go FORCE
        $(compile)

    bin/crio-status: cmd/crio-status/main.go internal/version/version.go FORCE
        $(compile)

    bin/pinns: pinns/src/pinns.c
        $(compile)

    install.bin-nobuild:
        install -D -m 755 bin/crio $(BINDIR)/crio
        install -D -m 755 bin/crio-status $(BINDIR)/crio-status
        install -D -m 755 bin/pinns $(BINDIR)/pinns

    FORCE:
    .PHONY: binaries install.bin-nobuild FORCE
    """)

CNI_PLUGINS = {
    "main": ["bridge", "host-device", "ipvlan", "loopback", "macvlan", "ptp", "vlan"],
    "ipam": ["dhcp", "host-local", "static"],
    "meta": ["bandwidth", "firewall", "portmap", "sbr", "tuning", "vrf"],
}

CNI_BUILD = """\
#!/usr/bin/env bash
# Fixture of upstream's build_linux.sh: one binary per plugin folder.
set -e
cd "$(dirname "$0")"
mkdir -p bin
for d in plugins/meta/* plugins/main/* plugins/ipam/*; do
    [ -d "$d" ] || continue
    name=$(basename "$d")
    sum=$(cat "$d"/*.go | cksum | cut -d' ' -f1)
    { echo '#!/bin/sh'; echo "echo $name $sum $*"; } > "bin/$name.tmp"
    chmod 755 "bin/$name.tmp"
    mv "bin/$name.tmp" "bin/$name"
done
"""

CRITOOLS_MAKEFILE = _mk("""
    VERSION ?= unknown
    EXTRA = $(VERSION)

    crictl: build/bin/crictl

    build/bin/crictl: cmd/crictl/main.go pkg/version/version.go FORCE
        $(compile)

    FORCE:
    .PHONY: crictl FORCE
    """)

KATA_RUNTIME_MAKEFILE = _mk("""
    # Binaries from PREFIX (unset: /usr/local), configs in /usr/share/defaults.
    PREFIX ?= /usr/local
    BINDIR := $(PREFIX)/bin
    DEFAULTSDIR := /usr/share/defaults/kata-containers
    QEMUPATH := $(PREFIX)/bin/qemu-system-x86_64
    VC = $(sort $(wildcard virtcontainers/*.go))

    all: containerd-shim-kata-v2 kata-runtime kata-monitor config/configuration-qemu.toml

    containerd-shim-kata-v2: cmd/containerd-shim-kata-v2/main.go $(VC) FORCE
        $(compile)

    kata-runtime: cmd/kata-runtime/main.go $(VC) FORCE
        $(compile)

    kata-monitor: cmd/kata-monitor/main.go FORCE
        $(compile)

    config/configuration-qemu.toml: config/configuration-qemu.toml.in
        sed 's|@QEMUPATH@|$(QEMUPATH)|' $< > $@

    install:
        install -D -m 0755 containerd-shim-kata-v2 $(DESTDIR)$(BINDIR)/containerd-shim-kata-v2
        install -D -m 0755 kata-runtime $(DESTDIR)$(BINDIR)/kata-runtime
        install -D -m 0755 kata-monitor $(DESTDIR)$(BINDIR)/kata-monitor
        install -D -m 0644 config/configuration-qemu.toml \\
            $(DESTDIR)$(DEFAULTSDIR)/configuration-qemu.toml

    FORCE:
    .PHONY: all install FORCE
    """)

KATA_AGENT_MAKEFILE = _mk("""
    LIBC ?= musl
    SECCOMP ?= yes
    EXTRA = $(LIBC) $(SECCOMP)
    TARGET := target/x86_64-unknown-linux-$(LIBC)/release/kata-agent

    default: $(TARGET)

    $(TARGET): src/main.rs src/version.rs FORCE
        $(compile)

    src/version.rs: src/version.rs.in ../../VERSION
        sed "s|@VERSION@|$$(cat ../../VERSION)|" src/version.rs.in > $@

    FORCE:
    .PHONY: default FORCE
    """)

QEMU_CONFIGURE = """\
#!/bin/sh
# Fixture of QEMU's configure: records its arguments for the build folder.
src=$(cd "$(dirname "$0")" && pwd)
prefix=/usr/local
for arg in "$@"; do
    case "$arg" in --prefix=*) prefix="${arg#--prefix=}" ;; esac
done
printf 'SRC = %s\\nprefix = %s\\nCONFIG_ARGS = %s\\n' "$src" "$prefix" "$*" > config-host.mak
printf 'include config-host.mak\\ninclude $(SRC)/Makefile.build\\n' > Makefile
: > build.ninja
echo "configured for $prefix"
"""

QEMU_MAKEFILE_BUILD = _mk("""
    all: qemu-system-x86_64 tools/virtiofsd/virtiofsd

    QEMU_SOURCES = $(SRC)/softmmu/main.c $(SRC)/net/socket.c $(SRC)/dtc/libfdt/fdt.c
    qemu-system-x86_64: $(QEMU_SOURCES) config-host.mak
        $(compile)

    tools/virtiofsd/virtiofsd: $(SRC)/tools/virtiofsd/passthrough_ll.c
        $(compile)

    install: all
        install -D -m 0755 qemu-system-x86_64 $(DESTDIR)$(prefix)/bin/qemu-system-x86_64
        install -D -m 0755 tools/virtiofsd/virtiofsd $(DESTDIR)$(prefix)/libexec/virtiofsd

    .PHONY: all install
    """)

MBUTO = """\
#!/bin/sh
# mbuto fixture: Minimal Builder Using Terse Options
set -e
link_pairs() {
\tfor pair in "$@"; do
\t\ttarget="${pair%%:*}"
\t\tln -sf "$target" "${pair#*:}"
\tdone
}
echo "mbuto: nothing to do in the fixture"
"""


def _source(kind: str, name: str, lines: int = 40, salt: str = "") -> str:
    """A deterministic source file of a few KB."""
    rng = random.Random(f"{kind}/{name}/{salt}")
    body = "\n".join(rng.choice(CODE) for _ in range(lines))
    return f"// {name} {salt}\n{body}\n"


def _socket_c() -> str:
    blocks = [f"/* net/socket.c block {i} */\n" + _source("qemu", f"socket{i}", 12)
              for i in range(6)]
    return "".join(blocks)


# --------------------------------------------------------------------------
# The upstreams


@dataclass
class Upstreams:
    root: Path
    scale: float = 1.0
    refs: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> {label: ref/commit}
    repos: dict[str, Path] = field(default_factory=dict)
    mbuto_patch: str = ""

    def n(self, count: int) -> int:
        return max(5, int(count * self.scale))

    def make(self) -> Upstreams:
        self.root.mkdir(parents=True, exist_ok=True)
        t = 1_640_000_000
        self._cri_o(t)
        self._cni(t)
        self._critools(t)
        self._mbuto(t)
        kata_patch = self._kata(t)
        qemu_patches = self._qemu(t)
        self._passt(t, kata_patch, qemu_patches)
        return self

    def _two(self, name: str, tree: Tree, v2: dict[str, str], tags: tuple[str, str],
             t: int, fraction: float = 0.01, gitlinks: dict[str, str] | None = None):
        repo = Repo(self.root / name)
        m1 = repo.commit(tree.first(), f"{name} {tags[0]}", t, tag=tags[0], gitlinks=gitlinks)
        m2 = repo.commit(tree.second(v2, fraction), f"{name} {tags[1]}", t + 86400, tag=tags[1])
        marks = repo.finish()
        self.refs[name] = {"old": tags[0], "new": tags[1], "old_commit": marks[m1],
                           "new_commit": marks[m2]}
        self.repos[name] = repo.path

    def _cri_o(self, t: int) -> None:
        tree = Tree(1, self.n(SIZES["cri-o"]),
                    ["vendor/github.com/containers", "vendor/github.com/opencontainers",
                     "vendor/k8s.io", "vendor/golang.org/x", "internal", "pkg", "server",
                     "test", "docs", "contrib"], [".go", ".go", ".go", ".md", ".json", ".bats"])
        tree.special = {
            "Makefile": CRIO_MAKEFILE,
            ".gitignore": "/bin/\n/build/\n*.o\n_output/\n",
            "cmd/crio/main.go": _source("crio", "main"),
            "cmd/crio-status/main.go": _source("crio", "status"),
            "internal/version/version.go": 'package version\n\nconst Version = "1.23.4"\n',
            "pinns/src/pinns.c": _source("crio", "pinns"),
            "README.md": "# cri-o fixture\n",
        }
        self._two("cri-o", tree, {"internal/version/version.go":
                                  'package version\n\nconst Version = "1.23.5"\n'},
                  ("v1.23.4", "v1.23.5"), t)

    def _cni(self, t: int) -> None:
        tree = Tree(2, self.n(SIZES["cni-plugins"]),
                    ["vendor/github.com/containernetworking", "vendor/github.com/vishvananda",
                     "vendor/golang.org/x", "pkg", "integration", "scripts"],
                    [".go", ".go", ".md", ".sh"])
        special = {"build_linux.sh": CNI_BUILD, ".gitignore": "/bin/\n/release-*/\n",
                   "README.md": "# plugins fixture\n"}
        for group, names in CNI_PLUGINS.items():
            for name in names:
                special[f"plugins/{group}/{name}/{name}.go"] = _source("cni", name)
                special[f"plugins/{group}/{name}/main_test.go"] = _source("cni", name + "t", 8)
        tree.special = special
        self._two("cni-plugins", tree, {"plugins/main/bridge/bridge.go":
                                        _source("cni", "bridge", salt="v1.1.1")},
                  ("v1.1.0", "v1.1.1"), t)

    def _critools(self, t: int) -> None:
        tree = Tree(3, self.n(SIZES["cri-tools"]),
                    ["vendor/k8s.io", "vendor/github.com", "vendor/google.golang.org", "pkg",
                     "cmd/critest", "docs", "hack"], [".go", ".go", ".go", ".md", ".yaml"])
        tree.special = {
            "Makefile": CRITOOLS_MAKEFILE,
            ".gitignore": "/build/\n/_output/\n",
            "cmd/crictl/main.go": _source("crictl", "main"),
            "pkg/version/version.go": 'package version\n\nvar Version = "1.22.0"\n',
        }
        self._two("cri-tools", tree, {"cmd/crictl/main.go": _source("crictl", "main", salt="2"),
                                      "pkg/version/version.go":
                                      'package version\n\nvar Version = "1.23.0"\n'},
                  ("v1.22.0", "v1.23.0"), t)

    def _mbuto(self, t: int) -> None:
        repo = Repo(self.root / "mbuto")
        files = {"mbuto": MBUTO, "README": "mbuto fixture\n", "COPYING": "GPL-2.0-or-later\n",
                 "profiles/kata.sh": "# kata profile\n"}
        m1 = repo.commit(files, "mbuto: first", t)
        m2 = repo.commit({"README": "mbuto fixture, second commit\n"}, "mbuto: second",
                         t + 86400)
        marks = repo.finish()
        [self.mbuto_patch] = _format_patch({"mbuto": MBUTO}, [(
            "mbuto: Reset the link target after each pair",
            {"mbuto": MBUTO.replace('\t\tln -sf "$target" "${pair#*:}"\n',
                                    '\t\tln -sf "$target" "${pair#*:}"\n\t\ttarget=\n')})],
            t + 86400 * 2)
        c2 = marks[m2]
        self.refs["mbuto"] = {"old_commit": marks[m1], "new_commit": c2, "new": c2[:10]}
        self.repos["mbuto"] = repo.path

    def _kata(self, t: int) -> str:
        tree = Tree(4, self.n(SIZES["kata-containers"]),
                    ["src/runtime/vendor/github.com", "src/runtime/pkg", "src/agent/vendor",
                     "src/libs", "tools/packaging", "docs", "tests"],
                    [".go", ".go", ".rs", ".md", ".yaml", ".toml"])
        rt = "src/runtime/"
        network = _source("kata", "network", 60)
        tree.special = {
            "VERSION": "2.4.0-alpha0\n",
            rt + "Makefile": KATA_RUNTIME_MAKEFILE,
            rt + ".gitignore": "/containerd-shim-kata-v2\n/kata-runtime\n/kata-monitor\n"
                               "/config/*.toml\n",
            rt + "cmd/containerd-shim-kata-v2/main.go": _source("kata", "shim"),
            rt + "cmd/kata-runtime/main.go": _source("kata", "runtime"),
            rt + "cmd/kata-monitor/main.go": _source("kata", "monitor"),
            rt + "config/configuration-qemu.toml.in": '[hypervisor.qemu]\npath = "@QEMUPATH@"\n',
            rt + "virtcontainers/network.go": network,
            rt + "virtcontainers/qemu.go": _source("kata", "qemu", 60),
            "src/agent/Makefile": KATA_AGENT_MAKEFILE,
            "src/agent/.gitignore": "/target/\n",
            "src/agent/src/main.rs": _source("agent", "main"),
            "src/agent/src/version.rs.in": 'pub const VERSION: &str = "@VERSION@";\n',
        }
        # alpha0 -> alpha1 changes a runtime input that the patch does not touch.
        self._two("kata-containers", tree,
                  {rt + "cmd/kata-monitor/main.go": _source("kata", "monitor", salt="alpha1")},
                  ("2.4.0-alpha0", "2.4.0-alpha1"), t)
        [patch] = _format_patch({rt + "virtcontainers/network.go": network}, [(
            "virtcontainers, agent: Add passt networking model and endpoint",
            {rt + "virtcontainers/network.go":
                 network + "\n// passt networking model\n\tNetXConnectPasstModel\n",
             rt + "virtcontainers/passt_endpoint.go": _source("kata", "passt", 30)})],
            t + 86400 * 3)
        return patch

    def _qemu(self, t: int) -> dict[str, tuple[str, str]]:
        subs = self.root / "qemu-submodules"
        gitlinks = {}
        for i, (path, count) in enumerate(QEMU_SUBMODULES.items()):
            tree = Tree(100 + i, self.n(count), ["src", "include", "tests", "docs"],
                        [".c", ".h", ".py", ".txt"])
            if path == "dtc":
                tree.special = {"libfdt/fdt.c": _source("dtc", "fdt")}
            repo = Repo(subs / path.replace("/", "_"))
            mark = repo.commit(tree.first(), f"{path} import", t)
            gitlinks[path] = (repo.path, repo.finish()[mark])
        for i, path in enumerate(QEMU_OTHER_SUBMODULES):
            repo = Repo(subs / path.replace("/", "_"))
            mark = repo.commit({"README": f"{path}\n"}, f"{path} import", t + i)
            gitlinks[path] = (repo.path, repo.finish()[mark])

        socket = _socket_c()
        tree = Tree(5, self.n(SIZES["qemu"]),
                    ["hw", "target/i386", "target/arm", "include/hw", "tests/qtest", "docs",
                     "block", "migration", "util", "linux-user"],
                    [".c", ".c", ".h", ".rst", ".py", ".json"])
        tree.special = {
            "configure": QEMU_CONFIGURE,
            "Makefile.build": QEMU_MAKEFILE_BUILD,
            ".gitignore": "/build/\n*.pyc\n",
            "VERSION": "6.1.0\n",
            "softmmu/main.c": _source("qemu", "main"),
            "net/socket.c": socket,
            "tools/virtiofsd/passthrough_ll.c": _source("qemu", "virtiofsd"),
            ".gitmodules": "".join(
                f'[submodule "{p}"]\n\tpath = {p}\n\turl = {s}\n'
                for p, (s, _) in gitlinks.items()),
        }
        self._two("qemu", tree, {"VERSION": "6.2.0\n",
                                 "softmmu/main.c": _source("qemu", "main", salt="6.2")},
                  ("v6.1.0", "v6.2.0"), t, gitlinks={p: c for p, (_, c) in gitlinks.items()})
        return {variant: self._qemu_patches(socket, variant, t) for variant in ("", "v2")}

    @staticmethod
    def _qemu_patches(socket: str, variant: str, t: int) -> tuple[str, str]:
        one = socket.replace("/* net/socket.c block 1 */\n",
                             "/* net/socket.c block 1 */\n/* also UNIX domain sockets */\n")
        two = one.replace("/* net/socket.c block 4 */\n",
                          "/* net/socket.c block 4 */\n"
                          f"/* do not ignore EINVAL on connect {variant} */\n")
        p1, p2 = _format_patch({"net/socket.c": socket}, [
            ("net: Allow also UNIX domain sockets to be used as -netdev socket",
             {"net/socket.c": one}),
            ("net: Don't ignore EINVAL on netdev socket connection", {"net/socket.c": two}),
        ], t + 86400 * 3)
        return p1, p2

    def _passt(self, t: int, kata_patch: str, qemu_patches: dict) -> None:
        tree = Tree(6, self.n(SIZES["passt"]), ["doc", "test", "contrib/fedora"],
                    [".c", ".h", ".sh", ".md"])
        kata = ("contrib/kata-containers/"
                "0001-virtcontainers-agent-Add-passt-networking-model-and-.patch")
        q1 = "contrib/qemu/0001-net-Allow-also-UNIX-domain-sockets-to-be-used-as-net.patch"
        q2 = "contrib/qemu/0002-net-Don-t-ignore-EINVAL-on-netdev-socket-connection.patch"
        tree.special = {
            "Makefile": PASST_MAKEFILE,
            ".gitignore": "/passt\n/pasta\n/qrap\n*.o\n",
            "passt.c": _source("passt", "passt"),
            "util.c": _source("passt", "util"),
            "tap.c": _source("passt", "tap"),
            "qrap.c": _source("passt", "qrap"),
            "README.md": "# passt fixture\n",
            kata: kata_patch,
            q1: qemu_patches[""][0],
            q2: qemu_patches[""][1],
        }
        repo = Repo(self.root / "passt")
        m1 = repo.commit(tree.first(), "passt: first", t)
        m2 = repo.commit(tree.second({"passt.c": _source("passt", "passt", salt="2")}, 0.02),
                         "passt: second, pinned", t + 86400)
        m3 = repo.commit({q2: qemu_patches["v2"][1]}, "contrib/qemu: refresh the EINVAL patch",
                         t + 86400 * 2)
        marks = repo.finish()
        self.repos["passt"] = repo.path
        self.refs["passt"] = {"c1": marks[m1], "c2": marks[m2], "c3": marks[m3],
                              "new": marks[m2], "kata_patch": kata, "qemu_patch2": q2}


# --------------------------------------------------------------------------
# The stack file: the real stack.yaml's commands, local upstreams, one
# `needs` edge (kata-containers needs qemu) that the real stack does not have.

STACK = """\
# Benchmark stack: the real stack.yaml's shape and commands, fixture upstreams.
version: 1

settings:
  workdir: build
  destdir: stage
  prefix: /usr/local
  sudo: auto
  jobs: 2

components:
  passt:
    git: {up}/passt
    ref: {passt}
    build: make
    artifacts: [passt, qrap]
    install: make install DESTDIR="$DESTDIR" prefix="$PREFIX"
    installs: [$PREFIX/bin/passt, $PREFIX/bin/pasta, $PREFIX/bin/qrap]

  cri-o:
    git: {up}/cri-o
    ref: v1.23.5
    env:
      GOTOOLCHAIN: local
      GOPROXY: "off"
    build: >-
      make binaries
      BUILDTAGS="containers_image_openpgp containers_image_ostree_stub
      exclude_graphdriver_btrfs exclude_graphdriver_devicemapper btrfs_noversion"
    artifacts: [bin/crio, bin/crio-status, bin/pinns]
    install: make install.bin-nobuild PREFIX="$DESTDIR$PREFIX"
    installs: [$PREFIX/bin/crio, $PREFIX/bin/crio-status, $PREFIX/bin/pinns]

  cni-plugins:
    git: {up}/cni-plugins
    ref: v1.1.1
    env:
      CGO_ENABLED: "0"
      GOTOOLCHAIN: local
      GOPROXY: "off"
    build: >-
      ./build_linux.sh -ldflags "-extldflags -static
      -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=v1.1.1"
    artifacts: [bin/bridge, bin/host-local, bin/loopback, bin/portmap]
    install: install -D -m 0755 -t "$DESTDIR/opt/cni/bin" bin/*
    installs:
{cni_installs}
  cri-tools:
    git: {up}/cri-tools
    ref: v1.23.0
    env:
      GOTOOLCHAIN: local
      GOPROXY: "off"
    build: make crictl VERSION=1.23.0
    artifacts: [build/bin/crictl]
    install: install -D -m 0755 build/bin/crictl "$DESTDIR$PREFIX/bin/crictl"
    installs: [$PREFIX/bin/crictl]

  mbuto:
    git: {up}/mbuto
    ref: {mbuto}
    patches:
      - patches/mbuto/0001-mbuto-reset-the-link-target-after-each-pair.patch

  kata-containers:
    git: {up}/kata-containers
    ref: 2.4.0-alpha1
    needs: [qemu]
    patches:
      - component: passt
        path: {kata_patch}
    parts:
      runtime:
        env:
          GOTOOLCHAIN: local
          GOPROXY: "off"
        build: >-
          env -u PREFIX -u GOPATH make -C src/runtime -j"$JOBS"
          SKIP_GO_VERSION_CHECK=y FEATURE_SELINUX=no
        artifacts:
          - src/runtime/containerd-shim-kata-v2
          - src/runtime/kata-runtime
          - src/runtime/kata-monitor
          - src/runtime/config/configuration-qemu.toml
        install: >-
          env -u PREFIX -u GOPATH make -C src/runtime install
          SKIP_GO_VERSION_CHECK=y FEATURE_SELINUX=no DESTDIR="${{DESTDIR:-/}}"
        installs:
          - /usr/local/bin/containerd-shim-kata-v2
          - /usr/local/bin/kata-runtime
          - /usr/local/bin/kata-monitor
          - /usr/share/defaults/kata-containers/configuration-qemu.toml
      agent:
        env:
          RUSTUP_TOOLCHAIN: "1.58.1"
        build: make -C src/agent LIBC=gnu SECCOMP=no
        artifacts: [src/agent/target/x86_64-unknown-linux-gnu/release/kata-agent]
        install: >-
          install -D -m 0755 src/agent/target/x86_64-unknown-linux-gnu/release/kata-agent
          "$DESTDIR/usr/libexec/kata-agent"
        installs: [/usr/libexec/kata-agent]

  qemu:
    git: {up}/qemu
    ref: v6.2.0
    depth: 1
    submodules:
      - meson
      - ui/keycodemapdb
      - tests/fp/berkeley-softfloat-3
      - tests/fp/berkeley-testfloat-3
      - dtc
      - capstone
      - slirp
    patches:
      - component: passt
        path: contrib/qemu/0001-net-Allow-also-UNIX-domain-sockets-to-be-used-as-net.patch
      - component: passt
        path: contrib/qemu/0002-net-Don-t-ignore-EINVAL-on-netdev-socket-connection.patch
    build: >-
      args="--prefix=$PREFIX --target-list=x86_64-softmmu --enable-virtfs
      --enable-virtiofsd --disable-docs";
      mkdir -p build && cd build &&
      {{ [ -f build.ninja ] && [ "$(cat .kps-configure 2>/dev/null)" = "$args" ] ||
      {{ ../configure $args && echo "$args" > .kps-configure; }}; }} &&
      make -j"$JOBS"
    artifacts: [build/qemu-system-x86_64, build/tools/virtiofsd/virtiofsd]
    install: make -C build install DESTDIR="$DESTDIR"
    installs: [$PREFIX/bin/qemu-system-x86_64, $PREFIX/libexec/virtiofsd]
"""

MBUTO_PATCH_PATH = "patches/mbuto/0001-mbuto-reset-the-link-target-after-each-pair.patch"


def write_stack(project: Path, up: Upstreams) -> Path:
    """A project folder: stack.yaml and the patch beside it."""
    project.mkdir(parents=True, exist_ok=True)
    cni = sorted(n for names in CNI_PLUGINS.values() for n in names)
    text = STACK.format(
        up=up.root, passt=up.refs["passt"]["new"], mbuto=up.refs["mbuto"]["new"],
        kata_patch=up.refs["passt"]["kata_patch"],
        cni_installs="".join(f"      - /opt/cni/bin/{n}\n" for n in cni))
    stack = project / "stack.yaml"
    stack.write_text(text)
    patch = project / MBUTO_PATCH_PATH
    patch.parent.mkdir(parents=True, exist_ok=True)
    patch.write_text(up.mbuto_patch)
    return stack
