"""Fixture upstream repositories and a harness that drives the real dodo.py.

Upstreams are small git repositories made here, shaped like the real ones:
Makefiles honouring DESTDIR and PREFIX, tags for two versions, a patch that
lives in one repository for another (like passt carrying Kata's patch), a
component with parts, one with a submodule.  Everything lives under the
test's ``tmp_path``; installs are staged under ``tmp_path/stage``.
"""

from __future__ import annotations

import os
import re
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
    for key in ("DESTDIR", "PREFIX", "JOBS", "SRC", "MAKEFLAGS"):
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


class Upstreams:
    """Builds the fixture upstream repositories under ``root``."""

    def __init__(self, root: Path):
        self.root = root

    def alpha(self) -> Path:
        """Two tags; a Makefile honouring DESTDIR/PREFIX; carries a patch for beta."""
        repo = self.root / "alpha"
        if repo.exists():
            return repo
        git_init(repo)
        write(repo / "Makefile", ALPHA_MAKEFILE)
        write(repo / ".gitignore", "/bin/\n")
        write(repo / "src/alpha.in", "alpha one\n")
        write(repo / "contrib/beta/0001-beta-greets.patch", BETA_PATCH)
        commit_all(repo, "alpha v1", tag="v1")
        write(repo / "src/alpha.in", "alpha two\n")
        commit_all(repo, "alpha v2", tag="v2")
        return repo

    def beta(self) -> Path:
        """Needs alpha at build time; patched by a patch that lives in alpha."""
        repo = self.root / "beta"
        if repo.exists():
            return repo
        git_init(repo)
        write(repo / "Makefile", BETA_MAKEFILE)
        write(repo / ".gitignore", "/out/\n")
        write(repo / "beta.in", "beta\n")
        commit_all(repo, "beta v1", tag="v1")
        return repo

    def gamma(self) -> Path:
        """Two independent parts; outputs not git-ignored."""
        repo = self.root / "gamma"
        if repo.exists():
            return repo
        git_init(repo)
        write(repo / "Makefile", GAMMA_MAKEFILE)
        write(repo / "one.in", "one\n")
        write(repo / "two.in", "two\n")
        commit_all(repo, "gamma", tag="v1")
        return repo

    def with_submodule(self) -> Path:
        """A superproject whose build reads a file from its submodule."""
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

    def doit(self, *args: str, expect: int | None = 0, env: dict | None = None,
             timeout: float = 120) -> Result:
        cmd = [sys.executable, "-m", "doit", "-f", str(ROOT / "dodo.py"),
               f"stack={self.stack_file}", *args]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=self.root,
                                env={**os.environ, **(env or {})}, timeout=timeout,
                                errors="replace")
        res = Result(result.returncode, result.stdout, result.stderr)
        for line in result.stdout.splitlines() + result.stderr.splitlines():
            m = re.match(r"^(\.  |-- )(\S+)$", line)
            if m:
                (res.ran if m.group(1) == ".  " else res.uptodate).append(m.group(2))
        if expect is not None and res.code != expect:
            raise AssertionError(
                f"doit {' '.join(args)} exited {res.code}, expected {expect}\n"
                f"--- stdout\n{res.out}\n--- stderr\n{res.err}")
        return res


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
