"""Edit a configuration document the way a careful person would.

``render(format, base, values, unset)`` starts from ``base`` (the text of an
installed default, or nothing), merges the nested mapping ``values`` into it
(keys not named stay as they are), removes the ``unset`` dotted keys, and
returns the new text, parsed back to prove it reads as asked.

TOML goes through tomlkit, so every comment, blank line and key spelling of
the base survives; only the managed lines change.  A new key lands right
after its commented-out example (``#debug_console_enabled = true``) when the
table has one, else after the table's first run of keys; an unset key is
commented out in place.  JSON keeps key order and indentation (JSON has no
comments).  YAML goes through PyYAML: key order is kept, comments are not
(a note says so).

A value whose shape does not fit the base (a table where the base has a
string, a string where it has a table, a boolean where it has a number...)
is an ``EditError`` naming the dotted key, what is there and what was asked;
nothing is rendered.
"""

from __future__ import annotations

import datetime
import json
import re
import tomllib
from collections.abc import Mapping, Sequence

import tomlkit
import tomlkit.container  # internals: used only in the "tomlkit internals" section
import tomlkit.items
import yaml
from tomlkit.items import AoT, InlineTable, Table

UNSET_MARK = "# unset by kata-passt-stack"


class EditError(Exception):
    """A value that does not fit the document, or a base that does not parse."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


def render(fmt: str, base: str | None, values: Mapping, unset: Sequence[str] = ()
           ) -> tuple[str, list[str]]:
    """The edited document's text, and notes worth telling the user."""
    editor = {"toml": _Toml, "json": _Json, "yaml": _Yaml}[fmt]()
    notes: list[str] = []
    doc = editor.load(base or "", notes)
    for dotted in unset:
        _unset(editor, doc, dotted, notes)
    _merge(editor, doc, values, [])
    text = editor.dump(doc)
    try:
        parsed = editor.parse(text)
    except Exception as err:  # noqa: BLE001 - any parser error means we made a bad file
        raise EditError(f"the edited document does not parse as {fmt.upper()}: {err}") from None
    _verify(parsed, values, [], fmt)
    for dotted in unset:
        if not any(_is_prefix(dotted, leaf) for leaf in _leaves(values, [])):
            if _lookup(parsed, dotted.split(".")) is not _MISSING:
                raise EditError("still present after unset", dotted)
    return text, notes


# --------------------------------------------------------------------------
# The format-independent part


_MISSING = object()


def _merge(ed, mapping, values: Mapping, path: list[str]) -> None:
    for raw_key, value in values.items():
        key = str(raw_key)
        here = path + [key]
        where = ".".join(here)
        if key not in mapping:
            ed.add(mapping, key, value, where)
            continue
        current = mapping[key]
        if isinstance(value, Mapping):
            if isinstance(current, Mapping):
                _merge(ed, current, value, here)
                continue
            raise EditError(f"the base has {ed.describe(current)} here; stack.yaml asks for "
                            f"{ed.describe(value)}", where)
        if isinstance(current, Mapping):
            raise EditError(f"the base has {ed.describe(current)} here; stack.yaml asks for "
                            f"{ed.describe(value)}", where)
        old = _plain(current)
        if old is not None and _category(old) != _category(value):
            raise EditError(f"the base has {ed.describe(current)} here; stack.yaml asks for "
                            f"{ed.describe(value)}", where)
        if _same(old, value):
            continue  # untouched: keeps the line exactly as it was
        ed.replace(mapping, key, value, where)


def _unset(ed, doc, dotted: str, notes: list[str]) -> None:
    parts = dotted.split(".")
    mapping = doc
    for part in parts[:-1]:
        if not isinstance(mapping, Mapping) or part not in mapping:
            notes.append(f"unset {dotted}: not there, nothing to do")
            return
        mapping = mapping[part]
    if not isinstance(mapping, Mapping) or parts[-1] not in mapping:
        notes.append(f"unset {dotted}: not there, nothing to do")
        return
    ed.unset(mapping, parts[-1])


def _plain(value):
    """A tomlkit item as plain Python (other formats are plain already)."""
    unwrap = getattr(value, "unwrap", None)
    return unwrap() if unwrap else value


def _category(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "table"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, (datetime.date, datetime.time)):
        return "date/time"
    return type(value).__name__


def _same(a, b) -> bool:
    """Equal and of the same kind (True is not 1, 1.0 is not 1)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _describe(value, table_word: str) -> str:
    value = _plain(value)
    kind = _category(value)
    if kind == "table":
        return table_word
    if kind in ("list", "null"):
        return "a list" if kind == "list" else "null"
    shown = json.dumps(value) if isinstance(value, (bool, int, float, str)) else str(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    if isinstance(value, bool):
        return f"a boolean ({shown})"
    if isinstance(value, int):
        return f"an integer ({shown})"
    if isinstance(value, float):
        return f"a number ({shown})"
    if isinstance(value, str):
        return f"a string ({shown})"
    return f"a {kind} ({shown})"


def _leaves(values: Mapping, path: list[str]):
    for key, value in values.items():
        here = path + [str(key)]
        if isinstance(value, Mapping) and value:
            yield from _leaves(value, here)
        else:
            yield ".".join(here)


def _is_prefix(dotted: str, leaf: str) -> bool:
    return leaf == dotted or leaf.startswith(dotted + ".") or dotted.startswith(leaf + ".")


def _lookup(doc, parts: list[str]):
    for part in parts:
        if not isinstance(doc, Mapping) or part not in doc:
            return _MISSING
        doc = doc[part]
    return doc


def _verify(parsed, values: Mapping, path: list[str], fmt: str) -> None:
    """Every value asked for reads back from the written text."""
    for key, value in values.items():
        here = path + [str(key)]
        got = _lookup(parsed, here)
        if isinstance(value, Mapping):
            if not isinstance(got, Mapping):
                raise EditError("does not read back as a table from the edited document",
                                ".".join(here))
            _verify(parsed, value, here, fmt)
        elif not _same(_normalise(got, fmt), _normalise(value, fmt)):
            raise EditError(f"reads back as {got!r} instead of {value!r}", ".".join(here))


def _normalise(value, fmt):
    if fmt == "json" and isinstance(value, tuple):
        return list(value)
    return value


# --------------------------------------------------------------------------
# TOML (tomlkit: comments and layout kept)


class _Toml:
    table_word = "a table"

    def load(self, text: str, notes: list[str]):
        try:
            self.doc = tomlkit.parse(text)
            return self.doc
        except Exception as err:  # noqa: BLE001 - tomlkit raises several kinds
            raise EditError(f"the base is not valid TOML: {err}") from None

    def parse(self, text: str):
        return tomllib.loads(text)

    def dump(self, doc) -> str:
        return tomlkit.dumps(doc)

    def describe(self, value) -> str:
        return _describe(value, self.table_word)

    def replace(self, mapping, key: str, value, where: str) -> None:
        mapping[key] = _toml_item(value, where, inline=isinstance(mapping, InlineTable))

    def add(self, mapping, key: str, value, where: str) -> None:
        inline = isinstance(mapping, InlineTable)
        item = _toml_item(value, where, inline=inline)
        lines = _TomlkitLines.of(mapping)
        if isinstance(item, (Table, AoT)) and lines is not None:
            _add_table(self.doc, mapping, lines, key, item)
            return
        if lines is None or inline:
            mapping[key] = item
            return
        idx = _insert_index(lines, key)
        if idx is None or idx >= len(lines):
            mapping[key] = item
            return
        lines.insert(mapping, idx, key, item)

    def unset(self, mapping, key: str) -> None:
        lines = _TomlkitLines.of(mapping)
        idx = lines.index_of(key) if lines is not None else None
        current = mapping[key]
        if idx is None or isinstance(current, (Table, AoT, InlineTable)) \
                or isinstance(mapping, InlineTable):
            del mapping[key]
            return
        lines.comment_out(mapping, idx, key, UNSET_MARK)


def _toml_item(value, where: str, inline: bool = False):
    if value is None:
        raise EditError("TOML has no null value: use 'unset' to remove a key", where)
    if isinstance(value, Mapping):
        if inline:
            table = tomlkit.inline_table()
            for k, v in value.items():
                table[str(k)] = _toml_item(v, f"{where}.{k}", inline=True)
            return table
        nested = bool(value) and all(isinstance(v, Mapping) for v in value.values())
        table = tomlkit.table(is_super_table=nested)
        for k, v in value.items():
            table[str(k)] = _toml_item(v, f"{where}.{k}")
        return table
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            if v is None:
                raise EditError("TOML has no null value", f"{where}[{i}]")
    try:
        return tomlkit.item(list(value) if isinstance(value, tuple) else value)
    except (TypeError, ValueError) as err:
        raise EditError(f"cannot be written as TOML: {err}", where) from None


def _insert_index(lines: _TomlkitLines, key: str) -> int | None:
    """Where a new ``key`` reads best: right after its commented-out example,
    else after the table's first run of keys; None: let tomlkit append."""
    example = re.compile(r"^#\s*" + re.escape(key) + r"\s*=")
    for i in range(len(lines)):
        text = lines.comment(i)
        if text is not None and example.match(text) and not text.endswith(UNSET_MARK):
            return i + 1
    first = next((i for i in range(len(lines)) if lines.is_value(i)), None)
    if first is None:
        return None
    end = first
    while end < len(lines) and lines.is_value(end):
        end += 1
    return end


def _add_table(doc, mapping, lines: _TomlkitLines, key: str, item) -> None:
    """Add a new table after its last sibling table's own keys: the comment
    block at the end of that sibling introduces whatever header came next
    in the file, so it moves below the new table, still before that header."""
    last = lines.last_item()
    moved = []
    if isinstance(last, Table) and not last.is_super_table():
        sibling = _TomlkitLines.of(last)
        cut = len(sibling)
        while cut > 0 and sibling.is_filler(cut - 1):
            cut -= 1
        if any(sibling.comment(i) is not None for i in range(cut, len(sibling))) \
                and not _at_end_of_file(doc, sibling.text_from(cut)):
            moved = sibling.take_from(cut)
    mapping[key] = item
    if moved and isinstance(item, Table):
        _TomlkitLines.of(item).extend(moved)


def _at_end_of_file(doc, block: str) -> bool:
    """The block ends the file: it belongs to the table above it."""
    return doc.as_string().rstrip().endswith(block.rstrip())


# --------------------------------------------------------------------------
# tomlkit internals: the only code here that uses them.
#
# tomlkit's public API reads and sets values, but has no way to put a new key
# at a chosen line of a table (right after its commented-out example), to turn
# a key's line into a comment in place, or to move a block of comment lines
# from one table to the next.  Those three edits work on what tomlkit keeps
# inside: ``Container.body`` (the table's lines, ``(Key | None, Item)`` pairs
# in file order, with ``Null`` placeholders where keys were removed),
# ``Container._insert_at``, the dict copy a ``Table`` keeps of its container
# (``_insert_at`` does not update it: ``dict.__setitem__`` does), and
# ``Comment``/``Trivia`` items built by hand.  The rest of this module uses
# tomlkit's public API only (parse, dumps, item, table, inline_table, the
# Table/AoT/InlineTable types, is_super_table, as_string).
#
# Tested with tomlkit 0.12.0 to 0.15.2 (tests/test_docedit.py and the docedit
# tests in tests/test_configs.py pin the resulting text); check this class
# first when a newer tomlkit breaks them.

_Container = tomlkit.container.Container
_Comment, _Null = tomlkit.items.Comment, tomlkit.items.Null
_Trivia, _Whitespace = tomlkit.items.Trivia, tomlkit.items.Whitespace


class _TomlkitLines:
    """The lines of one table (or of the document's top level)."""

    def __init__(self, container: _Container):
        self._container = container

    @property
    def _body(self) -> list:
        return self._container.body  # tomlkit's own list, edited in place

    @classmethod
    def of(cls, mapping) -> _TomlkitLines | None:
        """None for a proxy over a table split across the file (let tomlkit
        place keys there)."""
        if isinstance(mapping, _Container):
            return cls(mapping)
        if isinstance(mapping, (Table, InlineTable)):
            return cls(mapping.value)
        return None

    def __len__(self) -> int:
        return len(self._body)

    def index_of(self, key: str) -> int | None:
        """The line of ``key``; None when it has none or several."""
        found = [i for i, (k, _) in enumerate(self._body) if k is not None and k.key == key]
        return found[0] if len(found) == 1 else None

    def is_value(self, i: int) -> bool:
        """A ``key = value`` line (not a table, nor a removed key)."""
        key, item = self._body[i]
        return key is not None and not isinstance(item, (Table, AoT, _Null))

    def is_filler(self, i: int) -> bool:
        """A comment, a blank line or a removed key's placeholder."""
        key, item = self._body[i]
        return key is None and isinstance(item, (_Comment, _Whitespace, _Null))

    def comment(self, i: int) -> str | None:
        """The text of a comment line (``# ...``), else None."""
        key, item = self._body[i]
        return item.trivia.comment if key is None and isinstance(item, _Comment) else None

    def last_item(self):
        """The last line's item, removed keys skipped."""
        return next((item for _, item in reversed(self._body) if not isinstance(item, _Null)),
                    None)

    def text_from(self, i: int) -> str:
        return "".join(item.as_string() for _, item in self._body[i:])

    def take_from(self, i: int) -> list:
        """Remove the lines from ``i`` on and return them (for ``extend``)."""
        taken = self._body[i:]
        del self._body[i:]
        return taken

    def extend(self, taken: list) -> None:
        self._body.extend(taken)

    def insert(self, owner, i: int, key: str, item) -> None:
        """``key = item`` as line ``i`` of ``owner`` (this table or document)."""
        self._container._insert_at(i, key, item)
        if isinstance(owner, Table):  # keep the table's own dict view in step
            dict.__setitem__(owner, key, self._container[key])

    def comment_out(self, owner, i: int, key: str, mark: str) -> None:
        """Replace ``key``'s line ``i`` with ``#<the line as it was>  <mark>``."""
        body_key, item = self._body[i]
        line = (f"#{body_key.as_string()}{body_key.sep}{item.as_string()}"
                f"{item.trivia.comment_ws}{item.trivia.comment}")
        trail = item.trivia.trail if "\n" in item.trivia.trail else "\n"
        comment = _Comment(_Trivia(indent=item.trivia.indent, comment_ws="",
                                   comment=f"{line}  {mark}", trail=trail))
        del owner[key]
        self._body[i] = (None, comment)


# --------------------------------------------------------------------------
# JSON (key order and indentation kept) and YAML (PyYAML: comments lost)


class _Json:
    table_word = "an object"

    def __init__(self):
        self.indent = 4

    def load(self, text: str, notes: list[str]):
        if not text.strip():
            return {}
        try:
            doc = json.loads(text)
        except ValueError as err:
            raise EditError(f"the base is not valid JSON: {err}") from None
        if not isinstance(doc, dict):
            raise EditError("the base is not a JSON object")
        m = re.search(r"^([ \t]+)\S", text, re.M)
        if m:
            self.indent = m.group(1) if "\t" in m.group(1) else len(m.group(1))
        return doc

    def parse(self, text: str):
        return json.loads(text)

    def dump(self, doc) -> str:
        try:
            return json.dumps(doc, indent=self.indent, ensure_ascii=False) + "\n"
        except TypeError as err:
            raise EditError(f"cannot be written as JSON: {err}") from None

    def describe(self, value) -> str:
        return _describe(value, self.table_word)

    def replace(self, mapping, key, value, where) -> None:
        mapping[key] = _plain_copy(value)

    def add(self, mapping, key, value, where) -> None:
        mapping[key] = _plain_copy(value)

    def unset(self, mapping, key) -> None:
        del mapping[key]


class _Yaml(_Json):
    table_word = "a mapping"

    def load(self, text: str, notes: list[str]):
        if not text.strip():
            return {}
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise EditError(f"the base is not valid YAML: {err}") from None
        if doc is None:
            return {}
        if not isinstance(doc, dict):
            raise EditError("the base is not a YAML mapping")
        if re.search(r"(^|\s)#", text):
            notes.append("the base's comments are not kept (YAML is rewritten whole)")
        return doc

    def parse(self, text: str):
        return yaml.safe_load(text) or {}

    def dump(self, doc) -> str:
        return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False,
                              allow_unicode=True)


def _plain_copy(value):
    if isinstance(value, Mapping):
        return {str(k): _plain_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_copy(v) for v in value]
    return value
