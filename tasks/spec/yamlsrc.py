"""YAML loading that remembers where every key and value came from.

pydantic reports a location as a tuple of keys (``('components', 'cri-o',
'reff')``); to tell the user *which line* to fix we keep a map from such
tuples to line numbers while building plain Python objects from the YAML node
tree.  Numbers and dates are kept as their source text (``ref: 1.20`` stays
``"1.20"``, not ``1.2``); pydantic turns the text into an int where an int is
wanted.  The values written into config files (``configs.*.set``) keep
YAML's own types.  Duplicate keys, which plain ``yaml.safe_load`` silently drops, are
reported; ``<<`` merge keys work as in ``yaml.safe_load``.
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
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"


MAX_NODES = 50_000  # a stack file has a few hundred; aliases must not explode


@dataclass
class Located:
    """A YAML document as plain objects, plus the line of every location."""

    data: object
    lines: dict[tuple, int] = field(default_factory=dict)
    duplicates: list[tuple[tuple, int]] = field(default_factory=list)
    built: int = 0

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
    except yaml.reader.ReaderError as err:  # a character YAML does not allow
        char = err.character if isinstance(err.character, str) else chr(err.character)
        line = text.count("\n", 0, max(text.find(char), 0)) + 1
        raise YamlSyntaxError(
            line, f"invalid YAML: unacceptable character #x{ord(char):04x}: {err.reason}"
        ) from None
    except yaml.YAMLError as err:
        raise YamlSyntaxError(*_describe(err, text)) from None
    located = Located(None)
    if node is None:
        located.data = {}
        return located
    constructor = yaml.SafeLoader("")
    located.lines[()] = node.start_mark.line + 1
    located.data = _build(node, (), located, constructor, set())
    return located


def _describe(err: yaml.YAMLError, text: str) -> tuple[int, str]:
    """The line and a one-line message for a syntax error."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    # at the end of the stream the mark sits on the line after the last one
    last = max(1, text.count("\n") + (not text.endswith("\n")))
    line = min(mark.line + 1, last) if mark else 1
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    message = f"invalid YAML: {problem}"
    context, cmark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and cmark and cmark.line + 1 != line:
        message += f" ({context} on line {cmark.line + 1})"
    source = text.split("\n")[line - 1] if text else ""
    if "\t" in source[: len(source) - len(source.lstrip())] and "tab" not in message:
        message += " (a tab in the indentation: indent with spaces)"
    return line, message


def _typed(loc: tuple) -> bool:
    """Values written into config files keep YAML's own types (``timeout: 10``
    must stay a number there), unlike the stack's own fields."""
    return len(loc) >= 3 and loc[0] == "configs" and loc[2] == "set"


def _build(node, loc: tuple, located: Located, constructor, active: set):
    located.built += 1
    if located.built > MAX_NODES:
        raise YamlSyntaxError(node.start_mark.line + 1, "invalid YAML: aliases expand to more "
                              f"than {MAX_NODES} values (an alias bomb?)")
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        if id(node) in active:  # an alias inside the very node it names
            # (an alias has no line of its own: name the key that holds it)
            where = loc[:-1] if loc and isinstance(loc[-1], int) else loc
            raise YamlSyntaxError(located.line(where),
                                  "invalid YAML: an alias refers to a node that contains it")
        active = active | {id(node)}
    if isinstance(node, yaml.MappingNode):
        out = _merged(node, loc, located, constructor, active)
        seen = set()
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                continue
            key = _build(key_node, loc, located, constructor, active)
            if not isinstance(key, str):
                key = str(key)
            here = loc + (key,)
            if key in seen:
                located.duplicates.append((here, key_node.start_mark.line + 1))
            seen.add(key)
            located.lines[here] = key_node.start_mark.line + 1
            out[key] = _build(value_node, here, located, constructor, active)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            here = loc + (index,)
            located.lines[here] = item.start_mark.line + 1
            items.append(_build(item, here, located, constructor, active))
        return items
    if node.tag in (_INT, _FLOAT, _TIMESTAMP) and not _typed(loc):
        return node.value
    try:
        return constructor.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, KeyError, AttributeError) as err:
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        problem = getattr(err, "problem", None) or f"cannot read {node.value!r} as {tag}"
        raise YamlSyntaxError(node.start_mark.line + 1, f"invalid YAML: {problem}") from None


def _merged(node, loc: tuple, located: Located, constructor, active: set) -> dict:
    """What ``<<: *base`` merge keys bring in, as ``yaml.safe_load`` reads
    them: the first mapping listed wins, and keys written beside ``<<`` win
    over all of them."""
    out = {}
    for key_node, value_node in node.value:
        if key_node.tag != _MERGE:
            continue
        sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        for source in reversed(sources):
            if not isinstance(source, yaml.MappingNode):
                raise YamlSyntaxError(source.start_mark.line + 1, "invalid YAML: '<<' "
                                      "takes a mapping or a list of mappings")
            out.update(_build(source, loc, located, constructor, active))
    return out
