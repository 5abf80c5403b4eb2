"""stack.yaml: read it with line numbers, validate it, resolve it.

``validate()`` reads the file (``yamlsrc``), checks it against the pydantic
models (``schema``), turns every problem into one line (``problems``), and
resolves it into the frozen ``tasks.model.Stack`` (``resolve``).  Every
problem is reported at once, one line each: ``stack.yaml:12:
components.cri-o.reff: unknown key (did you mean 'ref'?)``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from ..errors import SpecError
from ..model import Stack
from . import yamlsrc
from .problems import Problems
from .resolve import resolve, resolve_sections
from .schema import (
    ComponentFile,
    ConfigFile,
    DebugFile,
    ImageFile,
    PodFile,
    SettingsFile,
    SmokeFile,
    StackFile,
)


def load_stack(path, project: Path | None = None) -> Stack:
    """Read, validate and resolve a stack file (``SpecError`` listing every
    problem found).  The run uses ``tasks.stackcache``, which skips all
    this while nothing changed."""
    return validate(path, project)[0]


def validate(path, project: Path | None = None) -> tuple[Stack, list[tuple[str, bool]]]:
    """Read, validate and resolve a stack file; raise ``SpecError`` listing
    every problem found.  ``project`` is this tool's folder: relative pod
    templates not found beside the stack file are looked up there.  Also
    returns the files whose existence the result depends on."""
    path = Path(path).absolute()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(path, [f"{path}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(path, [f"{path}: cannot read: {err}"]) from None
    try:
        located = yamlsrc.load(text)
    except yamlsrc.YamlSyntaxError as err:
        raise SpecError(path, [f"{path.name}:{err.line}: {err.message}"]) from None

    problems = Problems(path.name, located)
    for loc, line in located.duplicates:
        problems.add(loc, "duplicate key (the later one would win silently)", line=line)
    if not isinstance(located.data, dict):
        problems.add((), "the file must be a mapping with 'version' and 'components'")
        raise problems.error(path)
    # Top-level x-* keys are for YAML anchors (x-go-env: &goenv), as in
    # docker-compose: accepted, and ignored.
    data = {k: v for k, v in located.data.items()
            if not (isinstance(k, str) and k.startswith("x-"))}
    try:
        model = StackFile.model_validate(data)
        settings, components = model.settings, model.components
        names = set(components)
        sections = model
    except ValidationError as err:
        for e in err.errors(include_url=False):
            problems.add_pydantic(e)
        # Keep going with the parts that are valid, so that one run reports
        # the cross-field problems too.
        settings, components, names = _valid_parts(data)
        sections = _valid_sections(data)
    stack = resolve(path, settings, components, names, located, problems)
    stack = resolve_sections(stack, sections, names, project, problems, components)
    if problems:
        raise problems.error(path)
    return stack, problems.checked


def _valid_parts(data: dict):
    try:
        settings = SettingsFile.model_validate(data.get("settings") or {})
    except ValidationError:
        settings = SettingsFile()
    raw = data.get("components")
    components, names = {}, set()
    if isinstance(raw, dict):
        names = set(raw)
        for name, body in raw.items():
            try:
                components[name] = ComponentFile.model_validate(body)
            except ValidationError:
                pass
    return settings, components, names


def _valid_sections(data: dict) -> StackFile:
    """The image, configs, pod, debug and smoke sections that validate on their own."""
    out = {}
    for key, model in (("image", ImageFile), ("pod", PodFile), ("debug", DebugFile),
                       ("smoke", SmokeFile)):
        try:
            if data.get(key) is not None:
                out[key] = model.model_validate(data[key])
        except ValidationError:
            pass
    configs = {}
    if isinstance(data.get("configs"), dict):
        for name, body in data["configs"].items():
            try:
                configs[name] = ConfigFile.model_validate(body)
            except ValidationError:
                pass
    return StackFile.model_construct(version=1, settings=SettingsFile(), components={},
                                     image=out.get("image"), configs=configs,
                                     pod=out.get("pod"), debug=out.get("debug", DebugFile()),
                                     smoke=out.get("smoke"))
