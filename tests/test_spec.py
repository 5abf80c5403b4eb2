"""stack.yaml validation: a catalog of invalid files, a few valid ones, and
one run of doit itself on a bad file.

Each ``specs/invalid_*.yaml`` starts with ``# expect: LINE: FRAGMENT`` lines:
for each one, a reported problem must start with ``stack.yaml:LINE:`` and
contain FRAGMENT.  Patch files the specs name live in ``specs/patches``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.errors import SpecError
from tasks.spec import load_stack

HERE = Path(__file__).parent
ROOT = Path(__file__).resolve().parents[1]
CATALOG = sorted(HERE.glob("specs/invalid_*.yaml"))
EXPECT_RE = re.compile(r"^# expect: (\d+): (.+)$")


def expectations(spec: Path) -> list[tuple[int, str]]:
    found = []
    for line in spec.read_text(encoding="utf-8").splitlines():
        m = EXPECT_RE.match(line)
        if not m:
            break
        found.append((int(m.group(1)), m.group(2)))
    return found


def install(spec: Path, where: Path) -> Path:
    """Copy a catalog file to ``where/stack.yaml``, with the patches folder."""
    target = where / "stack.yaml"
    shutil.copyfile(spec, target)
    patches = spec.parent / "patches"
    if patches.is_dir():
        shutil.copytree(patches, where / "patches")
    return target


def problems_of(path: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_stack(path)
    return info.value.problems


# --------------------------------------------------------------------------
# The catalog


def test_catalog_is_large_enough():
    assert len(CATALOG) >= 40


@pytest.mark.parametrize("spec", CATALOG, ids=[p.stem for p in CATALOG])
def test_invalid_spec(spec: Path, tmp_path: Path):
    expected = expectations(spec)
    assert expected, f"{spec.name} has no '# expect: LINE: FRAGMENT' header"
    problems = problems_of(install(spec, tmp_path))
    assert problems
    report = "\n".join(problems)
    for line in problems:
        assert "Traceback" not in line
        assert "\n" not in line, f"a problem spans several lines:\n{line}"
        assert line.startswith("stack.yaml:"), line
    for number, fragment in expected:
        assert any(p.startswith(f"stack.yaml:{number}:") and fragment in p for p in problems), (
            f"no problem on line {number} containing {fragment!r}; got:\n{report}"
        )


def test_problems_are_sorted_by_line(tmp_path: Path):
    problems = problems_of(install(HERE / "specs/invalid_many_problems.yaml", tmp_path))
    numbers = [int(p.split(":")[1]) for p in problems]
    assert numbers == sorted(numbers)
    assert len(problems) == len(expectations(HERE / "specs/invalid_many_problems.yaml"))


def test_missing_file(tmp_path: Path):
    with pytest.raises(SpecError) as info:
        load_stack(tmp_path / "nope.yaml")
    assert info.value.problems == [f"{tmp_path / 'nope.yaml'}: no such file"]


def test_undecodable_file(tmp_path: Path):
    path = tmp_path / "stack.yaml"
    path.write_bytes(b"version: 1\ncomponents:\n  a: {git: x, ref: \xff}\n")
    with pytest.raises(SpecError) as info:
        load_stack(path)
    (line,) = info.value.problems
    assert line.startswith(f"{path}: cannot read:")


# --------------------------------------------------------------------------
# Valid files

MINIMAL = """\
version: 1
components:
  crictl:
    git: https://github.com/kubernetes-sigs/cri-tools.git
    ref: v1.30.0
"""


def load_text(folder: Path, text: str):
    """Load ``text`` as ``folder/stack.yaml`` (the tests run in tmp_path, so
    a subfolder shows paths resolved against the file, not the cwd)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "stack.yaml"
    path.write_text(text, encoding="utf-8")
    return load_stack(path)


def test_minimal_stack_and_defaults(tmp_path: Path):
    stack = load_text(tmp_path / "conf", MINIMAL)
    assert stack.path == tmp_path / "conf/stack.yaml"
    assert stack.settings.workdir == tmp_path / "conf/build"
    assert stack.settings.prefix == "/usr/local"
    assert stack.settings.destdir == ""
    assert stack.settings.sudo == "auto"
    assert stack.settings.jobs == (os.cpu_count() or 1)
    (crictl,) = stack.components.values()
    assert crictl.name == "crictl"
    assert crictl.git == "https://github.com/kubernetes-sigs/cri-tools.git"
    assert crictl.ref == "v1.30.0"
    assert (crictl.submodules, crictl.depth, crictl.patches, crictl.needs) == (False, 0, (), ())
    assert crictl.line == 3
    (part,) = crictl.parts
    assert part.name is None and part.id == "crictl"


def test_settings_resolved_against_the_stack_folder(tmp_path: Path):
    stack = load_text(tmp_path / "conf", MINIMAL + "settings:\n  workdir: out/../work\n"
                      "  jobs: 3\n  destdir: stage/\n  prefix: /opt/kata/\n  sudo: never\n")
    assert stack.settings.workdir == tmp_path / "conf/work"
    assert stack.settings.jobs == 3
    assert stack.settings.destdir == str(tmp_path / "conf/stage")
    assert stack.settings.prefix == "/opt/kata"
    assert stack.settings.sudo == "never"
    assert stack.target("/opt/kata/bin/x") == tmp_path / "conf/stage/opt/kata/bin/x"


def test_commands_prefix_and_ref_text(tmp_path: Path):
    stack = load_text(tmp_path, """\
version: 1
settings:
  prefix: /opt/kata
components:
  qemu:
    git: https://gitlab.com/qemu-project/qemu.git
    ref: 1.20
    build: "make"
    install: [make install, "true"]
    installs:
      - ${PREFIX}/bin/qemu-system-x86_64
      - $PREFIX/share/qemu/
      - /etc/qemu.conf
    env:
      CFLAGS: "-O2"
      LEVEL: 3
  cri-o:
    git: https://github.com/cri-o/cri-o.git
    ref: 2024-01-15
""")
    qemu = stack.components["qemu"]
    assert qemu.ref == "1.20"
    (part,) = qemu.parts
    assert part.build == ("make",)
    assert part.install == ("make install", "true")
    assert part.installs == ("/opt/kata/bin/qemu-system-x86_64", "/opt/kata/share/qemu",
                             "/etc/qemu.conf")
    assert part.env == (("CFLAGS", "-O2"), ("LEVEL", "3"))
    assert stack.components["cri-o"].ref == "2024-01-15"


@pytest.mark.parametrize("url", [
    "git@github.com:cri-o/cri-o.git",
    "github.com:cri-o/cri-o.git",
    "https://github.com/cri-o/cri-o.git",
    "ssh://git@github.com/cri-o/cri-o.git",
    "git://git.kernel.org/pub/scm/git/git.git",
    "file:///srv/git/cri-o.git",
])
def test_remote_urls_are_kept(tmp_path: Path, url: str):
    stack = load_text(tmp_path, MINIMAL.replace(
        "https://github.com/kubernetes-sigs/cri-tools.git", url))
    assert stack.components["crictl"].git == url


@pytest.mark.parametrize("written, resolved", [
    ("../mirrors/cri-tools", "../mirrors/cri-tools"),
    ("./cri-tools", "cri-tools"),
    ("cri-tools.git", "cri-tools.git"),
])
def test_local_git_path_resolved_against_the_stack_folder(tmp_path: Path, written, resolved):
    folder = tmp_path / "stacks"
    stack = load_text(folder, MINIMAL.replace(
        "https://github.com/kubernetes-sigs/cri-tools.git", written))
    got = Path(stack.components["crictl"].git)
    assert got.is_absolute()
    assert os.path.normpath(got) == os.path.normpath(folder / resolved)


def test_parts_patches_and_needs(tmp_path: Path):
    (tmp_path / "patches").mkdir()
    (tmp_path / "patches/kata.patch").write_text("--- a/x\n+++ b/x\n")
    stack = load_text(tmp_path, """\
version: 1
components:
  passt:
    git: https://passt.top/passt
    ref: "2024_06_24.1ee2eca"
    submodules: yes
    depth: 1
  kata:
    git: https://github.com/kata-containers/kata-containers.git
    ref: "3.5.0"
    needs: [passt, passt]
    patches:
      - patches/kata.patch
      - {path: contrib/kata/0001-passt.patch, component: passt}
    parts:
      runtime:
        build: make -C src/runtime
        artifacts: [src/runtime/containerd-shim-kata-v2]
        installs: [/usr/local/bin/containerd-shim-kata-v2]
      agent:
        build: [make -C src/agent]
""")
    passt, kata = stack.components["passt"], stack.components["kata"]
    assert (passt.submodules, passt.depth) == (True, 1)
    assert kata.needs == ("passt",)
    assert kata.patch_sources() == ("passt",)
    local, remote = kata.patches
    assert local.component is None and local.file == tmp_path / "patches/kata.patch"
    assert remote.component == "passt" and remote.file is None
    assert [p.id for p in kata.parts] == ["kata/runtime", "kata/agent"]
    assert kata.parts[1].build == ("make -C src/agent",)


def test_merge_keys(tmp_path: Path):
    stack = load_text(tmp_path, """\
version: 1
components:
  kata-runtime: &kata
    git: https://github.com/kata-containers/kata-containers.git
    ref: "3.5.0"
    env: {GOFLAGS: -mod=vendor}
    build: make -C src/runtime
  kata-agent:
    ref: "3.6.0"
    <<: *kata
    build: make -C src/agent
""")
    agent = stack.components["kata-agent"]
    assert agent.git == "https://github.com/kata-containers/kata-containers.git"
    assert agent.ref == "3.6.0"
    assert agent.parts[0].build == ("make -C src/agent",)
    assert agent.parts[0].env == (("GOFLAGS", "-mod=vendor"),)
    assert agent.line == 8


def test_real_stack_file_loads():
    stack = load_stack(ROOT / "stack.yaml")
    assert stack.components


# --------------------------------------------------------------------------
# doit itself


@pytest.mark.parametrize("name", [
    "invalid_unknown_component_key",
    "invalid_cycle_3",
    "invalid_yaml_unclosed_bracket",
])
def test_doit_reports_without_traceback(tmp_path: Path, name: str):
    spec = HERE / "specs" / f"{name}.yaml"
    stack = install(spec, tmp_path)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run(
        [sys.executable, "-m", "doit", f"stack={stack}", "list"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output
    for number, fragment in expectations(spec):
        assert any(line.startswith(f"stack.yaml:{number}:") and fragment in line
                   for line in output.splitlines()), output
    assert not (tmp_path / "build").exists()
