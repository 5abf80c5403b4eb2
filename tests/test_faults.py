"""Faults: kill -9 at any point, Ctrl-C, two runs at once.

The promise: after any interruption the next run finishes with exactly the
result of an uninterrupted run (same installed files, same checkouts, same
stack.lock), and the run after that has nothing to do.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Project, Upstreams, git

SLOW_AB = """\
alpha:
  git: {alpha}
  ref: {alpha_ref}
  build: [sleep 0.3, make]
  artifacts: [bin/alpha]
  install: [make install, sleep 0.2]
  installs: [$PREFIX/bin/alpha]
beta:
  git: {beta}
  ref: v1
  needs: [alpha]
  patches:
    - {{component: alpha, path: contrib/beta/0001-beta-greets.patch}}
  build: [sleep 0.3, make ALPHA="$DESTDIR$PREFIX/bin/alpha"]
  artifacts: [out/beta]
  install: [sleep 0.1, make install]
  installs: [$PREFIX/share/beta/beta.txt]
"""

PHASES = ["fetch:alpha", "fetch:beta", "patch:alpha", "patch:beta",
          "build:alpha", "install:alpha", "build:beta", "install:beta"]


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory) -> Upstreams:
    from conftest import GIT_ID
    old = {k: os.environ.get(k) for k in GIT_ID}
    os.environ.update(GIT_ID)
    try:
        ups = Upstreams(tmp_path_factory.mktemp("upstream"))
        ups.alpha()
        ups.beta()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return ups


def make_project(root: Path, ups: Upstreams, alpha_ref: str = "v1") -> Project:
    root.mkdir(parents=True, exist_ok=True)
    p = Project(root)
    p.up = ups
    p.write_stack(SLOW_AB.format(alpha=ups.alpha(), beta=ups.beta(), alpha_ref=alpha_ref))
    return p


def snapshot(p: Project) -> dict:
    """Everything an uninterrupted run leaves that must come out the same."""
    files = {}
    for path in sorted(p.stage.rglob("*")):
        rel = str(path.relative_to(p.stage))
        if path.is_symlink():
            files[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            files[rel] = path.read_bytes()
    trees = {}
    for name in ("alpha", "beta"):
        src = p.src(name)
        trees[name] = (git(src, "rev-parse", "HEAD"),
                       git(src, "status", "--porcelain", "--untracked-files=all", "--ignored"),
                       sorted(str(f.relative_to(src)) for f in src.rglob("*")
                              if ".git" not in f.relative_to(src).parts))
    return {"files": files, "trees": trees, "lock": (p.root / "stack.lock").read_text()}


def kill_during(p: Project, target: str, delay: float) -> str:
    """Start doit, SIGKILL it ``delay`` seconds after ``target`` starts;
    return the last task that had started."""
    proc = p.start(stderr=subprocess.DEVNULL, env={"PYTHONUNBUFFERED": "1"})
    last = "(startup)"
    try:
        for line in proc.stdout:
            if line.startswith(".  "):
                last = line[3:].strip()
                if last == target:
                    time.sleep(delay)
                    break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
    return last


@pytest.fixture(scope="module")
def references(upstreams, tmp_path_factory):
    """Uninterrupted results: a fresh run, and a re-pin of alpha to v2."""
    fresh = make_project(tmp_path_factory.mktemp("ref-fresh"), upstreams)
    fresh.doit()
    repin = make_project(tmp_path_factory.mktemp("ref-repin"), upstreams)
    repin.doit()
    repin.edit_stack("ref: v1", "ref: v2")
    repin.doit()
    return {"fresh": snapshot(fresh), "repin": snapshot(repin)}


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(24))
def test_kill_9_anywhere_then_resume_to_the_same_result(seed, upstreams, references, tmp_path):
    rng = random.Random(seed)
    repin = seed % 2 == 1
    p = make_project(tmp_path / "p", upstreams)
    if repin:
        p.doit()
        p.edit_stack("ref: v1", "ref: v2")
    phases = PHASES[:] if not repin else ["fetch:alpha", "patch:alpha", "build:alpha",
                                          "install:alpha", "build:beta", "install:beta"]
    target = phases[(seed // 2) % len(phases)]
    delay = rng.uniform(0, 0.35 if target.startswith(("build", "install")) else 0.03)
    kill_during(p, target, delay)

    p.doit()  # resumes
    assert snapshot(p) == references["repin" if repin else "fresh"]
    assert p.doit().ran == []


def test_interrupt_stops_the_build_and_the_next_run_resumes(project):
    alpha = project.up.alpha()
    pidfile = project.root / "child.pid"
    project.write_stack(f"""\
        alpha:
          git: {alpha}
          ref: v1
          build: ['echo $$ > {pidfile}; sleep 30 & wait', make]
          artifacts: [bin/alpha]
        """)
    proc = project.start()
    wait_for(pidfile)
    time.sleep(0.2)
    child = int(pidfile.read_text())
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode != 0
    assert "Traceback" not in out + err, out + err
    # The shell and its sleep are gone, not orphaned.
    time.sleep(0.2)
    assert not _alive(child)
    assert _children_of_group(child) == []  # its sleep went with it
    pidfile.unlink()
    project.edit_stack("build: ['echo $$ > " + str(pidfile) + "; sleep 30 & wait', make]",
                       "build: ['echo $$ > " + str(pidfile) + "', make]")
    res = project.doit()
    assert "build:alpha" in res.ran and "fetch:alpha" not in res.ran


def wait_for(path: Path, timeout: float = 30) -> None:
    """Until a build command of the run in the background wrote ``path``."""
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"the build never wrote {path}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _children_of_group(pgid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def test_a_second_run_refuses_at_once_and_the_first_is_unharmed(project):
    alpha = project.up.alpha()
    flag = project.root / "started"
    release = project.root / "release"  # held until the test is done with it
    hold = (f"touch {flag}; n=0; while [ ! -e {release} ] && [ $n -lt 1200 ]; "
            "do sleep 0.05; n=$((n+1)); done")
    project.write_stack(f"""\
        alpha:
          git: {alpha}
          ref: v1
          build: ['{hold}', make]
          artifacts: [bin/alpha]
          install: make install
          installs: [$PREFIX/bin/alpha]
        """)
    first = project.start()
    wait_for(flag)
    start = time.monotonic()
    second = project.doit(expect=None)
    took = time.monotonic() - start
    assert second.code != 0
    assert "another doit run is working in" in second.text
    assert f"pid {first.pid}" in second.text
    assert took < 2.5, f"the second run took {took:.1f}s to refuse"
    assert second.ran == []
    # Read-only commands still work while a run holds the workdir.
    listing = project.doit("list")
    assert "build" in listing.out
    assert first.poll() is None  # all of the above while the first still ran
    release.touch()
    out, err = first.communicate(timeout=90)
    assert first.returncode == 0, out + err
    assert project.staged("/usr/local/bin/alpha").exists()
    assert project.doit().ran == []


def test_commands_left_running_by_a_killed_run_are_stopped_by_the_next(project):
    alpha = project.up.alpha()
    pidfile = project.root / "orphan.pid"
    project.write_stack(f"""\
        alpha:
          git: {alpha}
          ref: v1
          build: ['echo $$ > {pidfile}; sleep 60', make]
          artifacts: [bin/alpha]
        """)
    proc = project.start(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(pidfile)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    orphan = int(pidfile.read_text())
    assert _alive(orphan)  # kill -9 cannot take its children along
    project.edit_stack("sleep 60", "true")
    res = project.doit()
    assert "stopped a command left running" in res.err
    assert not _alive(orphan)
