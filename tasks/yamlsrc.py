"""YAML loading that remembers where every key and value came from.

pydantic reports a location as a tuple of keys (``('components', 'cri-o',
'reff')``); to tell the user *which line* to fix we keep a map from such
tuples to line numbers while building plain Python objects from the YAML node
tree.  Numbers are kept as their source text (``ref: 1.20`` stays ``"1.20"``,
not ``1.2``); pydantic turns the text into an int where an int is wanted.
Duplicate keys, which plain ``yaml.safe_load`` silently drops, are reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

try:  # the C loader is much faster where PyYAML was built with libyaml
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover
    from yaml import SafeLoader as _Loader

_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"


@dataclass
class Located:
    """A YAML document as plain objects, plus the line of every location."""

    data: object
    lines: dict[tuple, int] = field(default_factory=dict)
    duplicates: list[tuple[tuple, int]] = field(default_factory=list)

    def line(self, loc: tuple) -> int:
        """Line of ``loc`` or of its nearest ancestor that has one."""
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get((), 1)


class YamlSyntaxError(Exception):
    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line
        self.message = message


def load(text: str) -> Located:
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        line = mark.line + 1 if mark else 1
        problem = getattr(err, "problem", None) or str(err)
        raise YamlSyntaxError(line, f"invalid YAML: {problem}") from None
    located = Located(None)
    if node is None:
        located.data = {}
        return located
    constructor = yaml.SafeLoader("")
    located.lines[()] = node.start_mark.line + 1
    located.data = _build(node, (), located, constructor)
    return located


def _build(node, loc: tuple, located: Located, constructor):
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            key = _build(key_node, loc, located, constructor)
            if not isinstance(key, str):
                key = str(key)
            here = loc + (key,)
            if key in out:
                located.duplicates.append((here, key_node.start_mark.line + 1))
            located.lines[here] = key_node.start_mark.line + 1
            out[key] = _build(value_node, here, located, constructor)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            here = loc + (index,)
            located.lines[here] = item.start_mark.line + 1
            items.append(_build(item, here, located, constructor))
        return items
    if node.tag in (_INT, _FLOAT):
        return node.value
    return constructor.construct_object(node, deep=True)
