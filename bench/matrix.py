"""The change matrix: for each kind of change, the tasks that ran against the
minimal set, written down from the rules (not from what the tool does):

* fetch reruns when git, ref, submodules or depth change;
* patch when the base commit or a patch's content changes;
* build when the checkout's content changes (patched commit + local edits,
  tracked or untracked, a second edit counts, touching does not, build
  outputs in the tree do not), when its commands or env change, when a
  setting its commands name ($PREFIX/$DESTDIR in the text) changes, when an
  artifact is missing, when a component it `needs` was reinstalled with
  different content;
* install when an artifact's content, the install commands, env, destdir or
  prefix change, or an installed file is missing; not because the build
  merely ran again with identical output;
* JOBS changes nothing.

The changes are applied one after the other to one project, each from an
up-to-date state; after each, a second run must do nothing.  What each
fixture artifact is built from is listed in fixtures.py: that is how the
expected installs are known.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fixtures import Upstreams, git, write_stack
from harness import Dance, DoitFailed, Harness

K = "kata-containers"
KR, KA = f"{K}/runtime", f"{K}/agent"
PARTS = ["passt", "cri-o", "cni-plugins", "cri-tools", "mbuto", KR, KA, "qemu"]
ALL_INSTALLS = {f"install:{p}" for p in PARTS}
QEMU_CHANGED = {"build:qemu", "install:qemu", f"build:{KR}", f"build:{KA}"}  # K needs qemu


@dataclass
class Change:
    name: str
    apply: Callable[[], None]
    expected: set[str]
    why: str = ""


class Matrix:
    def __init__(self, h: Harness, up: Upstreams):
        self.h, self.up = h, up
        self.project = write_stack(h.root / "p-matrix", up).parent
        self.stack = self.project / "stack.yaml"

    # -- helpers ---------------------------------------------------------------

    def src(self, name: str, rel: str = "") -> Path:
        return self.project / "build" / "src" / name / rel

    def staged(self, path: str, destdir: str = "stage") -> Path:
        return self.project / (destdir + path)

    def edit_stack(self, old: str, new: str) -> Callable[[], None]:
        def apply():
            text = self.stack.read_text()
            if text.count(old) != 1:
                raise RuntimeError(f"{old!r} is in stack.yaml {text.count(old)} times")
            self.stack.write_text(text.replace(old, new))
        return apply

    def append(self, path: Path, line: str) -> Callable[[], None]:
        def apply():
            with open(path, "a") as f:
                f.write(line)
        return apply

    def replace_in(self, path: Path, old: str, new: str) -> Callable[[], None]:
        def apply():
            text = path.read_text()
            if old not in text:
                raise RuntimeError(f"{old!r} not in {path}")
            path.write_text(text.replace(old, new, 1))
        return apply

    def touch_all(self) -> None:
        for root, dirs, files in os.walk(self.project / "build" / "src"):
            if ".git" in dirs:
                dirs.remove(".git")
            for name in files:
                os.utime(os.path.join(root, name))

    # -- the changes -------------------------------------------------------------

    def changes(self) -> list[Change]:
        up, refs = self.up, self.up.refs
        crio_main = self.src("cri-o", "cmd/crio/main.go")
        bridge = self.src("cni-plugins", "plugins/main/bridge/bridge.go")
        kata_patch = self.src("passt", refs["passt"]["kata_patch"])
        dance = Dance(self.project)
        passt_ref = f"ref: {refs['passt']['c2']}"
        return [
            Change("nothing changed", lambda: None, set()),
            Change("touch every file in every checkout", self.touch_all, set(),
                   "touching does not count"),
            Change("git checkout of another commit and back, every tree", dance, set(),
                   "same content, every mtime moved"),
            Change("local edit (cri-o cmd/crio/main.go)",
                   self.append(crio_main, "// local edit\n"),
                   {"build:cri-o", "install:cri-o"}, "bin/crio is built from main.go"),
            Change("second edit of the same dirty file",
                   self.append(crio_main, "// second edit\n"),
                   {"build:cri-o", "install:cri-o"}),
            Change("untracked file added (cri-o docs/NOTES.md)",
                   lambda: self.src("cri-o", "docs/NOTES.md").write_text("my notes\n"),
                   {"build:cri-o"}, "no artifact reads it: identical output, no install"),
            Change("ignored file added (cri-o bin/scratch.o)",
                   lambda: self.src("cri-o", "bin/scratch.o").write_text("obj\n"), set(),
                   "ignored files are build output"),
            Change("untracked file removed again",
                   lambda: self.src("cri-o", "docs/NOTES.md").unlink(), {"build:cri-o"}),
            Change("local edits undone (git checkout -- .)",
                   lambda: git(self.src("cri-o"), "checkout", "--", "."),
                   {"build:cri-o", "install:cri-o"}),
            Change("installed file deleted (/opt/cni/bin/bridge)",
                   lambda: self.staged("/opt/cni/bin/bridge").unlink(),
                   {"install:cni-plugins"}),
            Change("installed file of one part deleted (/usr/libexec/kata-agent)",
                   lambda: self.staged("/usr/libexec/kata-agent").unlink(), {f"install:{KA}"}),
            Change("artifact deleted (cri-o bin/pinns)",
                   lambda: self.src("cri-o", "bin/pinns").unlink(), {"build:cri-o"},
                   "rebuilt identical: no install"),
            Change("build output in the tree deleted (kata src/agent/src/version.rs, "
                   "not git-ignored)",
                   lambda: self.src(K, "src/agent/src/version.rs").unlink(), set(),
                   "build outputs in the tree do not count"),
            Change("commit in a checkout, same tree (cni-plugins, --allow-empty)",
                   lambda: git(self.src("cni-plugins"), "commit", "-q", "--allow-empty",
                               "-m", "same tree"), set()),
            Change("local edit (cni-plugins bridge.go)", self.append(bridge, "// mine\n"),
                   {"build:cni-plugins", "install:cni-plugins"}),
            Change("that edit committed in the checkout (same content, new tree)",
                   lambda: git(self.src("cni-plugins"), "commit", "-q", "-am", "mine"), set(),
                   "the checkout's content did not change"),
            Change("env change (cri-tools)",
                   self.edit_stack('GOPROXY: "off"\n    build: make crictl',
                                   'GOPROXY: "off"\n      KPS_BENCH: "1"\n'
                                   "    build: make crictl"),
                   {"build:cri-tools", "install:cri-tools"}),
            Change("env change in one part (kata agent RUSTUP_TOOLCHAIN)",
                   self.edit_stack('RUSTUP_TOOLCHAIN: "1.58.1"', 'RUSTUP_TOOLCHAIN: "1.58.0"'),
                   {f"build:{KA}", f"install:{KA}"}),
            Change("build command change (cri-tools VERSION=)",
                   self.edit_stack("make crictl VERSION=1.23.0", "make crictl VERSION=1.23.0-b"),
                   {"build:cri-tools", "install:cri-tools"}, "crictl embeds VERSION"),
            Change("install command change (cri-tools -m 0755 -> 0555)",
                   self.edit_stack("install -D -m 0755 build/bin/crictl",
                                   "install -D -m 0555 build/bin/crictl"),
                   {"install:cri-tools"}),
            Change("jobs 2 -> 3", self.edit_stack("jobs: 2", "jobs: 3"), set(),
                   "JOBS changes nothing"),
            Change("stack.yaml comments and blank lines only",
                   self.edit_stack("components:\n", "components:\n  # a comment\n\n"), set()),
            Change("prefix /usr/local -> /opt/kps",
                   self.edit_stack("prefix: /usr/local", "prefix: /opt/kps"),
                   ALL_INSTALLS | {"build:qemu", f"build:{KR}", f"build:{KA}"},
                   "qemu's build names $PREFIX (and embeds it); kata needs qemu, "
                   "reinstalled elsewhere with other content"),
            Change("prefix back to /usr/local",
                   self.edit_stack("prefix: /opt/kps", "prefix: /usr/local"),
                   ALL_INSTALLS | {"build:qemu", f"build:{KR}", f"build:{KA}"}),
            Change("destdir stage -> stage2",
                   self.edit_stack("destdir: stage", "destdir: stage2"), ALL_INSTALLS,
                   "no build command names $DESTDIR; qemu installs the same content"),
            Change("destdir back to stage",
                   self.edit_stack("destdir: stage2", "destdir: stage"), ALL_INSTALLS),
            Change("needed component reinstalled, same content "
                   "(qemu's installed binary deleted)",
                   lambda: self.staged("/usr/local/bin/qemu-system-x86_64").unlink(),
                   {"install:qemu"}, "kata needs qemu: same content, no kata rebuild"),
            Change("needed component reinstalled, different content "
                   "(qemu softmmu/main.c edited)",
                   self.append(self.src("qemu", "softmmu/main.c"), "/* mine */\n"),
                   QEMU_CHANGED),
            Change("edit inside a submodule (qemu dtc/libfdt/fdt.c)",
                   self.append(self.src("qemu", "dtc/libfdt/fdt.c"), "/* mine */\n"),
                   QEMU_CHANGED, "qemu-system-x86_64 is built from fdt.c"),
            Change("qemu edits undone (checkout and submodule)",
                   lambda: (git(self.src("qemu"), "checkout", "--", "."),
                            git(self.src("qemu", "dtc"), "checkout", "--", ".")),
                   QEMU_CHANGED),
            Change("patch edit (mbuto's patch beside stack.yaml)",
                   self.replace_in(self.project / "patches/mbuto/0001-mbuto-reset-the-link-"
                                   "target-after-each-pair.patch", "+\t\ttarget=\n",
                                   '+\t\ttarget=""\n'),
                   {"patch:mbuto", "build:mbuto"},
                   "mbuto has no build commands, but its build task is keyed on content"),
            Change("patch in another component edited (kata's patch in passt's checkout)",
                   self.replace_in(kata_patch, "+// passt networking model\n",
                                   "+// passt networking model (edited)\n"),
                   {"build:passt", f"patch:{K}", f"build:{KR}", f"build:{KA}",
                    f"install:{KR}"},
                   "passt's binaries do not read contrib/; the agent is not built from "
                   "virtcontainers/"),
            Change("the same patch, only its subject reworded (same diff)",
                   self.replace_in(kata_patch, "Subject: [PATCH] virtcontainers, agent: Add",
                                   "Subject: [PATCH] virtcontainers, agent: add"),
                   {"build:passt", f"patch:{K}"}, "the patched tree is the same"),
            Change("passt edits undone",
                   lambda: git(self.src("passt"), "checkout", "--", "."),
                   {"build:passt", f"patch:{K}", f"build:{KR}", f"build:{KA}",
                    f"install:{KR}"}),
            Change("pin: passt to its parent commit (the patches it carries unchanged)",
                   self.edit_stack(passt_ref, f"ref: {refs['passt']['c1']}"),
                   {"fetch:passt", "patch:passt", "build:passt", "install:passt"},
                   "passt.c differs; kata's and qemu's patches are the same bytes"),
            Change("pin: passt to a commit that refreshes a QEMU patch",
                   self.edit_stack(f"ref: {refs['passt']['c1']}", f"ref: {refs['passt']['c3']}"),
                   {"fetch:passt", "patch:passt", "build:passt", "install:passt",
                    "patch:qemu"} | QEMU_CHANGED),
            Change("pin: passt back (passt.c as at c3, QEMU patch as before)",
                   self.edit_stack(f"ref: {refs['passt']['c3']}", passt_ref),
                   {"fetch:passt", "patch:passt", "build:passt", "patch:qemu"} | QEMU_CHANGED,
                   "c2 and c3 have the same passt.c: no passt install"),
            Change("pin: cri-tools tag -> the same commit by hash",
                   self.edit_stack("ref: v1.23.0", f"ref: {refs['cri-tools']['new_commit']}"),
                   {"fetch:cri-tools"}, "same base commit: nothing else"),
            Change("pin: cri-tools to the older tag",
                   self.edit_stack(f"ref: {refs['cri-tools']['new_commit']}", "ref: v1.22.0"),
                   {"fetch:cri-tools", "patch:cri-tools", "build:cri-tools",
                    "install:cri-tools"}),
            Change("pin: qemu to the older tag (depth 1, submodules)",
                   self.edit_stack("ref: v6.2.0", "ref: v6.1.0"),
                   {"fetch:qemu", "patch:qemu"} | QEMU_CHANGED),
            Change("pin: kata to the older tag (differs in a runtime input only)",
                   self.edit_stack("ref: 2.4.0-alpha1", "ref: 2.4.0-alpha0"),
                   {f"fetch:{K}", f"patch:{K}", f"build:{KR}", f"build:{KA}", f"install:{KR}"},
                   "the agent's inputs are the same: no agent install"),
            Change("git URL of the same repository (a path -> file://)",
                   self.edit_stack(f"git: {up.root}/cri-o", f"git: file://{up.root}/cri-o"),
                   {"fetch:cri-o"}, "same commit: nothing else"),
        ]


def run(h: Harness, up: Upstreams) -> dict:
    m = Matrix(h, up)
    h.doit(m.project)
    if h.doit(m.project).ran:
        raise SystemExit("matrix: the run after the first is not a no-op")
    rows = []
    for change in m.changes():
        try:
            change.apply()
            r = h.doit(m.project)
            ran, error = set(r.ran), None
        except (DoitFailed, RuntimeError, OSError) as err:
            ran, error = set(), str(err)
        again = []
        if error is None:
            try:
                again = h.doit(m.project).ran
            except DoitFailed as err:
                error = f"second run failed: {err}"
        rows.append({"change": change, "ran": ran, "again": again, "error": error})
        ok = not error and ran == change.expected and not again
        print(f"  {'ok ' if ok else 'XX '} {change.name}", flush=True)
    return {"rows": rows}


def report(result: dict) -> list[str]:
    rows = result["rows"]
    minimal = sum(1 for r in rows if not r["error"] and r["ran"] == r["change"].expected)
    lines = []
    for r in rows:
        c = r["change"]
        if r["error"]:
            lines.append(f"FAIL  {c.name}: {r['error'].splitlines()[0]}")
            lines.extend("        " + line for line in r["error"].splitlines()[1:40])
            continue
        extra = sorted(r["ran"] - c.expected)
        missing = sorted(c.expected - r["ran"])
        mark = "ok  " if not extra and not missing else "DIFF"
        lines.append(f"{mark}  {c.name}: ran {', '.join(sorted(r['ran'])) or 'nothing'}")
        if extra:
            lines.append(f"        extra: {', '.join(extra)}")
        if missing:
            lines.append(f"        missing: {', '.join(missing)}")
        if r["again"]:
            lines.append(f"        the run after it was not a no-op: {', '.join(r['again'])}")
    lines.append(f"{minimal}/{len(rows)} minimal"
                 + (f"; {sum(1 for r in rows if r['again'])} not followed by a no-op"
                    if any(r["again"] for r in rows) else ""))
    return lines
