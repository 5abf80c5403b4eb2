"""Problems found in a stack file, as ``file:line: location: message``
lines, with pydantic's errors turned into words a person reads."""

from __future__ import annotations

from pathlib import Path

from ..errors import SpecError, did_you_mean
from . import yamlsrc
from .schema import (
    BOOL_HINT,
    ComponentFile,
    ConfigFile,
    DebugFile,
    ImageFile,
    PartFile,
    PatchEntry,
    PodFile,
    SettingsFile,
    StackFile,
    got,
)


class Problems:
    """Collects ``file:line: location: message`` lines."""

    def __init__(self, filename: str, located: yamlsrc.Located):
        self.filename = filename
        self.located = located
        self.lines: list[tuple[int, str]] = []
        # Files whose existence the validation depended on (path, is a
        # file): the loader's cache holds a stack only while they still say so.
        self.checked: list[tuple[str, bool]] = []

    def is_file(self, path: Path) -> bool:
        found = path.is_file()
        self.checked.append((str(path), found))
        return found

    def __bool__(self):
        return bool(self.lines)

    def add(self, loc: tuple, message: str, line: int | None = None) -> None:
        line = line or self.located.line(loc)
        where = ".".join(str(p) for p in loc) or "(top level)"
        entry = (line, f"{self.filename}:{line}: {where}: {message}")
        if entry not in self.lines:
            self.lines.append(entry)

    def add_pydantic(self, e: dict) -> None:
        loc = tuple(p for p in e["loc"] if not _is_internal_loc(p))
        kind = e["type"]
        if kind == "extra_forbidden":
            message = "unknown key"
            parent = _data_at(self.located.data, loc[:-1])
            message += did_you_mean(loc[-1], _known_keys(loc[:-1], parent))
        elif kind == "missing":
            message = "missing required key"
        elif kind == "literal_error":
            message = f"got {e.get('input')!r}: {_lower(e['msg'])}"
        elif kind == "value_error":
            message = str(e.get("ctx", {}).get("error", e["msg"]))
        elif kind in _SHAPES:  # not "a valid tuple" or "instance of ComponentFile"
            message = f"must be {_SHAPES[kind]}" + got(e.get("input"))
            if isinstance(e.get("input"), bool):
                message += f": {BOOL_HINT}"
        elif kind in ("too_short", "string_too_short") and e.get("ctx", {}).get("min_length") == 1:
            message = "must not be empty"
        else:
            message = _lower(e["msg"])
            if "input" in e and not isinstance(e["input"], (dict, list)):
                message += f" (got {e['input']!r})"
        self.add(loc, message)

    def error(self, path: Path) -> SpecError:
        ordered = [text for _, text in sorted(self.lines, key=lambda x: x[0])]
        return SpecError(path, ordered)


_SHAPES = {"tuple_type": "a list", "list_type": "a list", "string_type": "a string",
           "dict_type": "a mapping", "model_type": "a mapping"}


def _is_internal_loc(part) -> bool:
    return isinstance(part, str) and ("[" in part or part.startswith("function-"))


def _lower(msg: str) -> str:
    return msg[:1].lower() + msg[1:]


def _data_at(data, loc):
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _known_keys(loc: tuple, parent) -> list[str]:
    depth = len(loc)
    if depth == 0:
        model = StackFile
    elif loc[0] == "settings" and depth == 1:
        model = SettingsFile
    elif loc[0] == "components" and depth == 2:
        model = ComponentFile
    elif loc[0] == "components" and depth == 4 and loc[2] == "parts":
        model = PartFile
    elif loc[0] == "components" and depth == 4 and loc[2] == "patches":
        model = PatchEntry
    elif loc[0] == "image" and depth == 1:
        model = ImageFile
    elif loc[0] == "configs" and depth == 2:
        model = ConfigFile
    elif loc[0] == "pod" and depth == 1:
        model = PodFile
    elif loc[0] == "debug" and depth == 1:
        model = DebugFile
    else:
        return []
    return list(model.model_fields)
