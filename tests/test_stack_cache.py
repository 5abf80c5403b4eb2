"""stackcache.load(): full validation only when something it depends on changed."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
from conftest import write

from tasks import spec, stackcache
from tasks.errors import SpecError

STACK = """\
version: 1
components:
  a:
    git: https://example.org/a.git
    ref: v1
    patches: [patches/a.patch]
pod:
  pod_config: pod.json
"""


@pytest.fixture
def files(tmp_path):
    write(tmp_path / "patches/a.patch", "--- a/x\n+++ b/x\n")
    write(tmp_path / "project/pod.json", "{}\n")
    write(tmp_path / "project/configs/container-busybox.json", "{}\n")
    path = write(tmp_path / "stack.yaml", STACK)
    return path, tmp_path / "project"


@pytest.fixture
def validations(monkeypatch):
    """Counts the full validations (pydantic) that load() does."""
    calls = []
    real = spec.validate

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(spec, "validate", counted)
    return calls


def test_second_load_uses_the_cache(files, validations):
    path, project = files
    first = stackcache.load(path, project)
    second = stackcache.load(path, project)
    assert len(validations) == 1
    assert second == first
    assert second.pod.pod_config == project / "pod.json"


def test_an_edit_is_validated(files, validations):
    path, project = files
    stackcache.load(path, project)
    path.write_text(STACK.replace("ref: v1", "ref: v2"))
    assert stackcache.load(path, project).components["a"].ref == "v2"
    assert len(validations) == 2


def test_an_invalid_file_is_never_cached(files, validations):
    path, project = files
    path.write_text(STACK.replace("ref: v1", "reff: v1"))
    for _ in range(2):
        with pytest.raises(SpecError):
            stackcache.load(path, project)
    assert len(validations) == 2


def test_a_removed_patch_file_is_reported_again(files, validations):
    path, project = files
    stackcache.load(path, project)
    (path.parent / "patches/a.patch").unlink()
    with pytest.raises(SpecError) as err:
        stackcache.load(path, project)
    assert "patch file not found" in str(err.value)


def test_a_template_appearing_beside_the_stack_file_wins(files, validations):
    path, project = files
    assert stackcache.load(path, project).pod.pod_config == project / "pod.json"
    write(path.parent / "pod.json", "{}\n")
    assert stackcache.load(path, project).pod.pod_config == path.parent / "pod.json"
    assert len(validations) == 2


def test_a_damaged_cache_is_a_miss(files, validations):
    path, project = files
    stackcache.load(path, project)
    cache = stackcache.cache_file(path, path.read_bytes())
    cache.write_bytes(b"not a pickle")
    assert stackcache.load(path, project).components["a"].ref == "v1"
    assert len(validations) == 2
    stackcache.load(path, project)
    assert len(validations) == 2  # rewritten


def test_the_cache_lives_under_the_workdir(files, validations):
    path, project = files
    stackcache.load(path, project)
    cache = stackcache.cache_file(path, path.read_bytes())
    assert cache == path.parent / "build/state/stack.pickle"
    assert (path.parent / "build/state/stack.pickle").is_file()


def test_a_read_only_load_stores_nothing(files, validations):
    path, project = files
    stackcache.load(path, project, store=False)
    assert not (path.parent / "build").exists()


# --------------------------------------------------------------------------
# The code that validated: the modules loaded then, not a list kept by hand


@pytest.fixture
def copied(tmp_path, monkeypatch):
    """``copy(NAME)``: module NAME now reads as a copy under tmp_path (its
    ``__file__``), which the test may edit; the real file stays untouched."""

    def copy(name: str) -> Path:
        module = importlib.import_module(name)
        real = Path(module.__file__)
        mine = tmp_path / "code" / name / real.name
        mine.parent.mkdir(parents=True)
        mine.write_bytes(real.read_bytes())
        monkeypatch.setattr(module, "__file__", str(mine))
        return mine

    return copy


def test_a_change_in_the_url_rules_invalidates_the_cache(files, validations, copied):
    path, project = files
    rules = copied("tasks.spec.urls")
    stackcache.load(path, project)
    stackcache.load(path, project)
    assert len(validations) == 1
    rules.write_text(rules.read_text() + "\n# a rule changed\n")
    stackcache.load(path, project)
    assert len(validations) == 2


def test_a_change_in_any_module_loaded_by_validation_invalidates_the_cache(files, validations,
                                                                          copied):
    path, project = files
    stackcache.load(path, project)
    loaded = sorted(n for n in sys.modules if n == "tasks" or n.startswith("tasks."))
    assert {"tasks.spec", "tasks.spec.urls", "tasks.model"} <= set(loaded)
    stale = []
    for name in loaded:
        if not getattr(sys.modules[name], "__file__", None):
            continue
        mine = copied(name)
        stackcache.cache_file(path, path.read_bytes()).unlink()
        stackcache.load(path, project)  # validated, and kept with the copy's content
        before = len(validations)
        mine.write_text(mine.read_text() + "\n# changed\n")
        stackcache.load(path, project)
        if len(validations) == before:
            stale.append(name)
    assert stale == []
