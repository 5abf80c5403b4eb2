"""Fixture upstream repositories and a harness that drives the real dodo.py.

Upstreams are small git repositories made here, shaped like the real ones:
Makefiles honouring DESTDIR and PREFIX, tags for two versions, a patch that
lives in one repository for another (like passt carrying Kata's patch), a
component with parts, one with a submodule.  Everything lives under the
test's ``tmp_path``; installs are staged under ``tmp_path/stage``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GIT_ID = {
    "GIT_AUTHOR_NAME": "Fixture Author",
    "GIT_AUTHOR_EMAIL": "fixture@example.org",
    "GIT_COMMITTER_NAME": "Fixture Author",
    "GIT_COMMITTER_EMAIL": "fixture@example.org",
}


@contextlib.contextmanager
def isolated_git_env(root: Path):
    """What _isolated_env gives each test, for fixtures made once per module
    (before any test's own isolation exists): a HOME under ``root``, no
    system gitconfig, a fixed identity, ``root`` as the working folder."""
    with pytest.MonkeyPatch.context() as mp:
        (root / "home").mkdir(exist_ok=True)
        mp.setenv("HOME", str(root / "home"))
        mp.setenv("GIT_CONFIG_NOSYSTEM", "1")
        for key, value in GIT_ID.items():
            mp.setenv(key, value)
        mp.chdir(root)
        yield


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """A HOME of our own (no user gitconfig), fixed git identity, and no
    stray doit or stack variables from the caller."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for key, value in GIT_ID.items():
        monkeypatch.setenv(key, value)
    for key in ("DESTDIR", "PREFIX", "JOBS", "SRC", "MAKEFLAGS", "XDG_CACHE_HOME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {result.stderr}")
    return result.stdout.strip()


def write(path: Path, text: str, mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    if mode is not None:
        path.chmod(mode)
    return path


def commit_all(repo: Path, message: str, tag: str | None = None) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    if tag:
        git(repo, "tag", "-a", tag, "-m", tag)
    return git(repo, "rev-parse", "HEAD")


ALPHA_MAKEFILE = """\
PREFIX ?= /usr/local
all: bin/alpha
bin/alpha: src/alpha.in
\tmkdir -p bin
\t(echo '#!/bin/sh'; sed 's/^/echo /' src/alpha.in) > bin/alpha
\tchmod 755 bin/alpha
install:
\tinstall -D -m 0755 bin/alpha $(DESTDIR)$(PREFIX)/bin/alpha
"""

BETA_MAKEFILE = """\
PREFIX ?= /usr/local
ALPHA ?= alpha
all: out/beta
out/beta: beta.in $(ALPHA)
\tmkdir -p out
\t$(ALPHA) > out/beta
\tcat beta.in >> out/beta
install:
\tinstall -D -m 0644 out/beta $(DESTDIR)$(PREFIX)/share/beta/beta.txt
"""

GAMMA_MAKEFILE = """\
one: one.in
\tcp one.in one.out
two: two.in
\tcp two.in two.out
"""


# Each fixture repository below is built once per test process, under the
# session's temporary folder, and copied into each test that asks for it: a
# copy takes ~4 ms, a build 10-45 ms of git commands, for hundreds of tests.
# The copy is the test's own to change.
_BUILT: dict[str, Path] = {}
_TEMPLATES: list[Path] = []  # where they are built (the session fixture below)


@pytest.fixture(scope="session", autouse=True)
def _templates(tmp_path_factory):
    _TEMPLATES.append(tmp_path_factory.mktemp("templates"))
    yield
    _TEMPLATES.clear()
    _BUILT.clear()


def made(repo: Path, build) -> Path:
    """``repo``, a copy of the repository ``build(path)`` makes, built once
    (outside a test session: built in place)."""
    if repo.exists():
        return repo
    if not _TEMPLATES:
        build(repo)
        return repo
    template = _BUILT.get(repo.name)
    if template is None:
        template = _TEMPLATES[0] / repo.name
        build(template)
        _BUILT[repo.name] = template
    shutil.copytree(template, repo, symlinks=True)
    return repo


class Upstreams:
    """Builds the fixture upstream repositories under ``root``."""

    def __init__(self, root: Path):
        self.root = root

    def alpha(self) -> Path:
        """Two tags; a Makefile honouring DESTDIR/PREFIX; carries a patch for beta."""
        return made(self.root / "alpha", self._alpha)

    @staticmethod
    def _alpha(repo: Path) -> None:
        git_init(repo)
        write(repo / "Makefile", ALPHA_MAKEFILE)
        write(repo / ".gitignore", "/bin/\n")
        write(repo / "src/alpha.in", "alpha one\n")
        write(repo / "contrib/beta/0001-beta-greets.patch", BETA_PATCH)
        commit_all(repo, "alpha v1", tag="v1")
        write(repo / "src/alpha.in", "alpha two\n")
        commit_all(repo, "alpha v2", tag="v2")

    def beta(self) -> Path:
        """Needs alpha at build time; patched by a patch that lives in alpha."""
        return made(self.root / "beta", self._beta)

    @staticmethod
    def _beta(repo: Path) -> None:
        git_init(repo)
        write(repo / "Makefile", BETA_MAKEFILE)
        write(repo / ".gitignore", "/out/\n")
        write(repo / "beta.in", "beta\n")
        commit_all(repo, "beta v1", tag="v1")

    def gamma(self) -> Path:
        """Two independent parts; outputs not git-ignored."""
        return made(self.root / "gamma", self._gamma)

    @staticmethod
    def _gamma(repo: Path) -> None:
        git_init(repo)
        write(repo / "Makefile", GAMMA_MAKEFILE)
        write(repo / "one.in", "one\n")
        write(repo / "two.in", "two\n")
        commit_all(repo, "gamma", tag="v1")

    def with_submodule(self) -> Path:
        """A superproject whose build reads a file from its submodule (built
        in place: the submodule's url names where its repository is)."""
        repo = self.root / "super"
        if repo.exists():
            return repo
        sub = self.root / "sublib"
        git_init(sub)
        write(sub / "lib.txt", "lib v1\n")
        commit_all(sub, "lib")
        git_init(repo)
        subprocess.run(["git", "-C", str(repo), "-c", "protocol.file.allow=always",
                        "submodule", "add", "-q", str(sub), "lib"], check=True,
                       capture_output=True)
        write(repo / "Makefile", "all:\n\tcat lib/lib.txt > super.out\n")
        write(repo / ".gitignore", "/super.out\n")
        commit_all(repo, "super", tag="v1")
        return repo


BETA_PATCH = """\
From 1111111111111111111111111111111111111111 Mon Sep 17 00:00:00 2001
From: Patch Author <patch@example.org>
Date: Fri, 28 Jan 2022 10:00:00 +0100
Subject: [PATCH] beta: greet politely

---
 beta.in | 1 +
 1 file changed, 1 insertion(+)

diff --git a/beta.in b/beta.in
--- a/beta.in
+++ b/beta.in
@@ -1 +1,2 @@
 beta
+hello from the patch
--
2.30.0
"""


def git_init(repo: Path) -> None:
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")


@dataclass
class Result:
    code: int
    out: str
    err: str
    ran: list[str] = field(default_factory=list)
    uptodate: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.out + self.err


class Project:
    """A stack file under tmp_path and the means to run doit on it."""

    def __init__(self, tmp_path: Path):
        self.root = tmp_path
        self.up = Upstreams(tmp_path / "upstream")
        self.stack_file = tmp_path / "stack.yaml"
        self.stage = tmp_path / "stage"
        self.workdir = tmp_path / "build"

    def src(self, name: str) -> Path:
        return self.workdir / "src" / name

    def staged(self, path: str) -> Path:
        return Path(str(self.stage) + path)

    def write_stack(self, components: str, settings: str = "") -> None:
        text = "version: 1\nsettings:\n  destdir: stage\n  jobs: 2\n"
        text += textwrap.indent(textwrap.dedent(settings), "  ")
        text += "components:\n" + textwrap.indent(textwrap.dedent(components), "  ")
        self.stack_file.write_text(text)

    def edit_stack(self, old: str, new: str) -> None:
        """Replace the first ``old`` in stack.yaml (which must be there)."""
        text = self.stack_file.read_text()
        assert old in text, f"{old!r} not in stack.yaml:\n{text}"
        self.stack_file.write_text(text.replace(old, new, 1))

    def argv(self, *args: str) -> list[str]:
        """The command line of the tool for this project's stack (``python -m
        tasks``, as ./stack.sh runs it), for runs in a process of their own."""
        return [sys.executable, "-m", "tasks", f"stack={self.stack_file}", *args]

    def start(self, *args: str, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
              env: dict | None = None) -> subprocess.Popen:
        """doit in the background, in a process of its own (to interrupt it)."""
        return subprocess.Popen(self.argv(*args), cwd=self.root, stdout=stdout, stderr=stderr,
                                text=True, env={**os.environ, **(env or {})})

    def doit(self, *args: str, expect: int | None = 0, env: dict | None = None,
             timeout: float = 120, process: bool = False) -> Result:
        """Run the tool on this project's stack: in this process (the entry
        point ``python -m tasks`` calls, ``tasks.loader.main``), or with
        ``process`` (or an ``argv`` of the test's own) in a process of its own."""
        if process or "argv" in self.__dict__:
            done = subprocess.run(self.argv(*args), capture_output=True, text=True,
                                  cwd=self.root, env={**os.environ, **(env or {})},
                                  timeout=timeout, errors="replace")
            code, out, err = done.returncode, done.stdout, done.stderr
        else:
            code, out, err = in_process([f"stack={self.stack_file}", *args], cwd=self.root,
                                        env=env, timeout=timeout)
        res = Result(code, out, err)
        for line in out.splitlines() + err.splitlines():
            m = re.match(r"^(\.  |-- )(\S+)$", line)
            if m:
                (res.ran if m.group(1) == ".  " else res.uptodate).append(m.group(2))
        if expect is not None and res.code != expect:
            raise AssertionError(
                f"doit {' '.join(args)} exited {res.code}, expected {expect}\n"
                f"--- stdout\n{res.out}\n--- stderr\n{res.err}")
        return res


class _TimedOut(BaseException):
    """An in-process run took longer than its timeout (a BaseException, so
    that doit's own ``except Exception`` lets it through)."""


def in_process(args: list[str], cwd: Path, env: dict | None = None,
               timeout: float = 120) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``python -m tasks ARGS`` run in this
    process from ``cwd`` with ``env`` added to the environment.  What a run
    may change for the whole process is put back after it: the working
    folder, the environment, the umask, the signal handlers, sys.excepthook,
    sys.stdout and sys.stderr (a run's own state lives in its ``Run``)."""
    from tasks.loader import main

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    mask = os.umask(0o022)
    os.umask(mask)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT,
                                                       signal.SIGALRM)}
    hook = sys.excepthook
    out, err = io.StringIO(), io.StringIO()

    def expired(signum, frame):
        raise _TimedOut()

    os.environ.update(env or {})
    os.chdir(cwd)
    signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(args)
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
    except _TimedOut:
        raise AssertionError(f"doit {' '.join(args)} still ran after {timeout} s\n"
                             f"--- stdout\n{out.getvalue()}\n--- stderr\n{err.getvalue()}"
                             ) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        sys.excepthook = hook
        os.umask(mask)
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return code, out.getvalue(), err.getvalue()


ALPHA = """\
alpha:
  git: {alpha}
  ref: v1
  build: make
  artifacts: [bin/alpha]
  install: make install
  installs: [$PREFIX/bin/alpha]
"""

ALPHA_BETA = """\
alpha:
  git: {alpha}
  ref: v1
  build: make
  artifacts: [bin/alpha]
  install: make install
  installs: [$PREFIX/bin/alpha]
beta:
  git: {beta}
  ref: v1
  needs: [alpha]
  patches:
    - {{component: alpha, path: contrib/beta/0001-beta-greets.patch}}
  build: make ALPHA="$DESTDIR$PREFIX/bin/alpha"
  artifacts: [out/beta]
  install: make install
  installs: [$PREFIX/share/beta/beta.txt]
"""


@pytest.fixture
def project(tmp_path) -> Project:
    return Project(tmp_path)


@pytest.fixture
def ab(project) -> Project:
    """alpha + beta (beta needs alpha and carries alpha's patch)."""
    project.write_stack(ALPHA_BETA.format(alpha=project.up.alpha(), beta=project.up.beta()))
    return project


# --------------------------------------------------------------------------
# The image and the host configs: a Kata-shaped component whose runtime part
# installs the real default configuration-qemu.toml, a QEMU that installs a
# virtiofsd, and an mbuto stand-in that behaves like mbuto (options, output,
# exit status 1).

FIXTURES = Path(__file__).resolve().parent / "fixtures"

KATA_MAKEFILE = """\
.PHONY: all runtime agent install-runtime install-agent
all: runtime agent
runtime: runtime/containerd-shim-kata-v2 runtime/configuration-qemu.toml
runtime/containerd-shim-kata-v2: runtime/shim.in
\tcp runtime/shim.in $@ && chmod 755 $@
runtime/configuration-qemu.toml: runtime/configuration-qemu.toml.in
\tcp runtime/configuration-qemu.toml.in $@
agent: agent/kata-agent
agent/kata-agent: agent/agent.in
\t(echo '#!/bin/sh'; sed 's/^/echo /' agent/agent.in) > $@ && chmod 755 $@
install-runtime:
\tinstall -D -m 0755 runtime/containerd-shim-kata-v2 \\
\t\t$(DESTDIR)/usr/local/bin/containerd-shim-kata-v2
\tinstall -D -m 0644 runtime/configuration-qemu.toml \\
\t\t$(DESTDIR)/usr/share/defaults/kata-containers/configuration-qemu.toml
install-agent:
\tinstall -D -m 0755 agent/kata-agent $(DESTDIR)/usr/libexec/kata-agent
"""

MBUTO_STANDIN = r"""#!/bin/sh -e
# A stand-in for mbuto: its options, what it prints on stdout (the Kata
# lines), its exit status 1 on success, and a real image: a newc cpio with
# the host's shell and the libraries ldd names, the kata-agent found with
# `which` on PATH:/usr/libexec:/sbin:/usr/sbin (a program from a folder
# ending in /usr/libexec goes to /usr/bin, as our patched mbuto does), and
# an /init script that runs the agent last.  Edit the two switches below in
# the checkout to mimic mbuto's bugs.
SKIP_LINKER=no          # yes: leave the dynamic linker out (mbuto's IFS bug)
KEEP_STAGED_PATH=no     # yes: keep the agent at its full host path (unpatched mbuto)
profile=base; out=; comp=none; kver=$(uname -r); mods=/
while getopts c:df:k:m:p:s:vh opt; do
    case $opt in
    c) comp=$OPTARG ;; f) out=$OPTARG ;; k) kver=$OPTARG ;; m) mods=$OPTARG ;;
    p) profile=$OPTARG ;; *) ;;
    esac
done
shift $((OPTIND - 1))
[ -d "$mods/lib/modules/$kver" ] || { echo "no lib/modules/$kver under $mods" >&2; exit 1; }
[ -n "$out" ] || out=$(mktemp)
if [ "$profile" != kata ]; then
    echo "$profile image" > "$out"
    exit 1
fi
agent=$(PATH="$PATH:/usr/libexec:/sbin:/usr/sbin"; command -v kata-agent) || {
    echo "kata-agent not found" >&2; exit 1; }
wd=$(mktemp -d)
trap 'rm -rf "$wd"' EXIT
copy() {  # copy a host file to the same path in the image, links resolved
    mkdir -p "$wd$(dirname "$1")"
    cp -L "$1" "$wd$1"
}
shell=$(readlink -f /bin/sh)
copy "$shell"
mkdir -p "$wd/bin" "$wd/etc"
ln -sf "$shell" "$wd/bin/sh"
for lib in $(ldd "$shell" | awk '$2 == "=>" { print $3 }'); do copy "$lib"; done
if [ "$SKIP_LINKER" != yes ]; then
    for ld in $(ldd "$shell" | awk '$2 != "=>" && $1 ~ /^\// { print $1 }'); do copy "$ld"; done
fi
case "$(dirname "$agent")" in
*/usr/libexec) [ "$KEEP_STAGED_PATH" = yes ] && inimage=$agent || inimage=/usr/bin/kata-agent ;;
*) inimage=$agent ;;
esac
mkdir -p "$wd$(dirname "$inimage")"
cp "$agent" "$wd$inimage"
printf '#!/bin/sh\nmount -t proc proc /proc\n%s\n' "$inimage" > "$wd/init"
chmod 755 "$wd/init"
{ echo "profile=$profile compression=$comp kernel=$kver add=$*"; echo "agent=$agent"; } \
    > "$wd/etc/mbuto.txt"
(cd "$wd" && find . | cpio -o -H newc --quiet) > "$wd.cpio"
case $comp in
none) cat "$wd.cpio" ;; gzip) gzip -c "$wd.cpio" ;; lz4) lz4 -l -c -q "$wd.cpio" ;;
*) echo "compression $comp: not in this stand-in" >&2; exit 1 ;;
esac > "$out"
rm -f "$wd.cpio"
echo "Size: bin 1M lib 1M kmod 1M total 3M" >&2
echo "Kata Containers [hypervisor.qemu] configuration:"
echo
printf '\tkernel = "/boot/vmlinuz-%s"\n' "$kver"
printf '\tinitrd = "%s"\n' "$(realpath "$out")"
false
"""

KATA_COMPONENTS = """\
kata:
  git: {kata}
  ref: v1
  parts:
    runtime:
      build: make runtime
      artifacts: [runtime/containerd-shim-kata-v2, runtime/configuration-qemu.toml]
      install: make install-runtime
      installs:
        - /usr/local/bin/containerd-shim-kata-v2
        - /usr/share/defaults/kata-containers/configuration-qemu.toml
    agent:
      build: make agent
      artifacts: [agent/kata-agent]
      install: make install-agent
      installs: [/usr/libexec/kata-agent]
qemu:
  git: {qemu}
  ref: v1
  install:
    - install -D -m 0755 qemu-system-x86_64 "$DESTDIR$PREFIX/bin/qemu-system-x86_64"
    - install -D -m 0755 virtiofsd "$DESTDIR$PREFIX/libexec/virtiofsd"
  installs: [$PREFIX/bin/qemu-system-x86_64, $PREFIX/libexec/virtiofsd]
mbuto:
  git: {mbuto}
  ref: v1
"""

KATA_IMAGE = """\
image:
  builder: mbuto
  profile: kata
  output: build/kata.img
  compression: lz4
  kernel: 5.10.0-test
  modules_root: {modules}
  add: [strace]
  needs: [kata]
"""


def kata_upstreams(up: Upstreams) -> dict[str, Path]:
    """kata (v1; v2 changes only the agent), qemu and mbuto repositories."""
    return {"kata": made(up.root / "kata", _kata), "qemu": made(up.root / "qemu", _qemu),
            "mbuto": made(up.root / "mbuto", _mbuto)}


def _kata(kata: Path) -> None:
    git_init(kata)
    write(kata / "Makefile", KATA_MAKEFILE)
    write(kata / ".gitignore", "/runtime/containerd-shim-kata-v2\n"
                               "/runtime/configuration-qemu.toml\n/agent/kata-agent\n")
    write(kata / "runtime/shim.in", "#!/bin/sh\necho shim\n")
    (kata / "runtime/configuration-qemu.toml.in").write_bytes(
        (FIXTURES / "kata-2.4.0-alpha1-configuration-qemu.toml").read_bytes())
    write(kata / "agent/agent.in", "agent one\n")
    commit_all(kata, "kata v1", tag="v1")
    write(kata / "agent/agent.in", "agent two\n")
    commit_all(kata, "kata v2: agent only", tag="v2")


def _qemu(qemu: Path) -> None:
    git_init(qemu)
    write(qemu / "qemu-system-x86_64", "#!/bin/sh\necho qemu \"$@\"\n", mode=0o755)
    write(qemu / "virtiofsd", "#!/bin/sh\necho virtiofsd\n", mode=0o755)
    commit_all(qemu, "qemu", tag="v1")


def _mbuto(mbuto: Path) -> None:
    git_init(mbuto)
    write(mbuto / "mbuto", MBUTO_STANDIN, mode=0o755)
    commit_all(mbuto, "mbuto", tag="v1")


def image_tools(root: Path) -> dict[str, str]:
    """Stand-ins for the host tools 'check' wants for mbuto (kmod, and cpio,
    which hands everything but --version to the real cpio that the mbuto
    stand-in uses); the environment that puts them first on PATH."""
    real = shutil.which("cpio")
    write(root / "cpio", "#!/bin/sh\n[ \"$1\" = --version ] && exec echo 'cpio (GNU cpio) 2.13'\n"
          f"exec {real} \"$@\"\n", mode=0o755)
    for name in ("modprobe", "depmod"):
        write(root / name, "#!/bin/sh\necho 'kmod version 30'\n", mode=0o755)
    return {"PATH": f"{root}:{os.environ.get('PATH', os.defpath)}"}


def kernel_modules(root: Path, *versions: str) -> Path:
    """A modules root holding lib/modules/<version> for each version."""
    for version in versions:
        (root / "lib/modules" / version).mkdir(parents=True, exist_ok=True)
    return root


def _decompress(argv, data):
    return subprocess.run(argv, input=data, capture_output=True, check=True).stdout


def image_of(project):
    """The image the kata fixture built, read as the kernel reads it."""
    from tasks.host.image.initramfs import Image

    return Image.from_bytes((project.workdir / "kata.img").read_bytes(), filter=_decompress)


def text_in(project, path: str) -> str:
    """A file of the image, as text: /etc/mbuto.txt says how it was built."""
    return image_of(project).entry(path).data.decode()


@pytest.fixture
def kata(project) -> Project:
    """kata + qemu + mbuto and an image section (kernel 5.10.0-test);
    tests append configs/debug sections to ``project.stack_file`` and run
    doit with ``env=project.tool_env``."""
    repos = kata_upstreams(project.up)
    modules = kernel_modules(project.root / "modroot", "5.10.0-test", "5.15.0-test")
    project.write_stack(KATA_COMPONENTS.format(**repos))
    with open(project.stack_file, "a") as f:
        f.write(KATA_IMAGE.format(modules=modules))
    project.tool_env = image_tools(project.root / "tools")
    return project
