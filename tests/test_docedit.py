"""tasks/host/configs/docedit.py: editing TOML, JSON and YAML documents.

Pinned on the real default files of Kata 2.4.0-alpha1 and CRI-O 1.23.5, so
a tomlkit upgrade that changes how lines are placed shows up here.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import tomlkit

from tasks.host.configs import docedit
from tasks.host.configs.docedit import UNSET_MARK, EditError, render

FIXTURES = Path(__file__).resolve().parent / "fixtures"
KATA = (FIXTURES / "kata-2.4.0-alpha1-configuration-qemu.toml").read_text()
CRIO = (FIXTURES / "crio-1.23.5-default.conf").read_text()


def comments(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.lstrip().startswith("#")]


def around(lines: list[str], line: str, before: int = 3, after: int = 3) -> list[str]:
    i = lines.index(line)
    return lines[i - before:i] + lines[i + 1:i + 1 + after]


# --------------------------------------------------------------------------
# TOML on the real Kata file


def test_a_new_key_lands_right_after_its_commented_out_example():
    text, notes = render("toml", KATA, {"agent": {"kata": {"debug_console_enabled": True}}})
    assert notes == []
    lines = text.splitlines()
    example = lines.index("#debug_console_enabled = true")
    assert lines[example + 1] == "debug_console_enabled = true"
    assert text.count("debug_console_enabled") == KATA.count("debug_console_enabled") + 1
    # Only that one line was added.
    assert lines[:example + 1] + lines[example + 2:] == KATA.splitlines()
    assert tomllib.loads(text)["agent"]["kata"]["debug_console_enabled"] is True


def test_an_example_written_with_spaces_after_the_hash_is_found_too():
    text, _ = render("toml", KATA, {"hypervisor": {"qemu": {"confidential_guest": True}}})
    lines = text.splitlines()
    assert lines[lines.index("# confidential_guest = true") + 1] == "confidential_guest = true"


def test_a_new_key_without_an_example_goes_after_the_tables_first_run_of_keys():
    text, _ = render("toml", KATA, {"hypervisor": {"qemu": {"brand_new": 3}}})
    lines = text.splitlines()
    assert lines[lines.index("[hypervisor.qemu]"):][:6] == [
        "[hypervisor.qemu]",
        'path = "/usr/bin/qemu-system-x86_64"',
        'kernel = "/usr/share/kata-containers/vmlinux.container"',
        'image = "/usr/share/kata-containers/kata-containers.img"',
        'machine_type = "q35"',
        "brand_new = 3",
    ]
    assert tomllib.loads(text)["hypervisor"]["qemu"]["brand_new"] == 3


def test_a_key_set_in_place_keeps_its_comment_lines_and_spelling():
    text, _ = render("toml", KATA, {"hypervisor": {"qemu": {"kernel_params": "console=ttyS0"}},
                                    "runtime": {"internetworking_model": "passt"}})
    base, lines = KATA.splitlines(), text.splitlines()
    assert around(lines, 'kernel_params = "console=ttyS0"') == around(base, 'kernel_params = ""')
    # The base wrote this one without spaces; so does the edit.
    assert around(lines, 'internetworking_model="passt"', before=8) == \
        around(base, 'internetworking_model="tcfilter"', before=8)
    assert len(lines) == len(base)
    assert [i for i, (a, b) in enumerate(zip(base, lines, strict=True)) if a != b] == [
        base.index('kernel_params = ""'), base.index('internetworking_model="tcfilter"')]


def test_an_unset_key_is_commented_out_in_place():
    text, notes = render("toml", KATA, {}, ["hypervisor.qemu.image"])
    assert notes == []
    base, lines = KATA.splitlines(), text.splitlines()
    where = base.index('image = "/usr/share/kata-containers/kata-containers.img"')
    assert lines[where] == \
        f'#image = "/usr/share/kata-containers/kata-containers.img"  {UNSET_MARK}'
    assert lines[:where] + lines[where + 1:] == base[:where] + base[where + 1:]
    assert "image" not in tomllib.loads(text)["hypervisor"]["qemu"]


def test_an_unset_line_keeps_its_own_comment():
    text, _ = render("toml", "[t]\nx = 1  # the answer\ny = 2\n", {}, ["t.x"])
    assert text == f"[t]\n#x = 1  # the answer  {UNSET_MARK}\ny = 2\n"


def test_a_commented_out_unset_line_is_not_taken_as_an_example():
    text, _ = render("toml", "[t]\nx = 1\ny = 2\n", {}, ["t.x"])
    text, _ = render("toml", text, {"t": {"x": 5}})
    assert text == f"[t]\n#x = 1  {UNSET_MARK}\ny = 2\nx = 5\n"


def test_unsetting_what_is_not_there_is_a_note():
    text, notes = render("toml", KATA, {}, ["runtime.no_such_key", "nowhere.at_all"])
    assert text == KATA
    assert notes == ["unset runtime.no_such_key: not there, nothing to do",
                     "unset nowhere.at_all: not there, nothing to do"]


def test_every_comment_line_of_the_base_survives_and_the_values_read_back():
    values = {
        "hypervisor": {"qemu": {"path": "/usr/local/bin/qemu-system-x86_64",
                                "kernel": "/boot/vmlinuz", "initrd": "/var/lib/kps/kata.img",
                                "kernel_params": "console=ttyS0", "default_memory": 4096}},
        "agent": {"kata": {"debug_console_enabled": True, "kernel_modules": ["vhost"]}},
        "runtime": {"internetworking_model": "passt", "experimental": ["newstore"]},
        "kps": {"note": "a new table", "level": 2},
    }
    text, notes = render("toml", KATA, values, ["hypervisor.qemu.image"])
    assert notes == []
    assert [c for c in comments(text) if UNSET_MARK not in c] == comments(KATA)
    conf, original = tomllib.loads(text), tomllib.loads(KATA)
    qemu = conf["hypervisor"]["qemu"]
    assert qemu["path"] == "/usr/local/bin/qemu-system-x86_64"
    assert qemu["initrd"] == "/var/lib/kps/kata.img" and "image" not in qemu
    assert qemu["default_memory"] == 4096
    assert conf["agent"]["kata"]["kernel_modules"] == ["vhost"]
    assert conf["runtime"]["experimental"] == ["newstore"]
    assert conf["kps"] == {"note": "a new table", "level": 2}
    # Everything not named reads as it did.
    assert conf["factory"] == original["factory"] and conf["image"] == original["image"]
    for key in original["hypervisor"]["qemu"]:
        if key not in values["hypervisor"]["qemu"] and key != "image":
            assert qemu[key] == original["hypervisor"]["qemu"][key], key


def test_a_new_top_level_table_goes_at_the_end():
    text, _ = render("toml", KATA, {"kps": {"level": 2}})
    assert text.startswith(KATA.rstrip("\n"))
    assert text.splitlines()[-2:] == ["[kps]", "level = 2"]


def test_from_no_base_keys_come_before_tables():
    text, notes = render("toml", None, {"a": {"b": 1}, "c": "d"})
    assert notes == [] and tomllib.loads(text) == {"a": {"b": 1}, "c": "d"}
    lines = [line for line in text.splitlines() if line]
    assert lines == ['c = "d"', "[a]", "b = 1"]


def test_an_edit_of_an_inline_table_stays_inline():
    text, _ = render("toml", "[t]\ny = {a = 1}\n", {"t": {"y": {"b": 2}}})
    assert tomllib.loads(text) == {"t": {"y": {"a": 1, "b": 2}}}
    assert "[t.y]" not in text and text.count("\n") == 2


# --------------------------------------------------------------------------
# TOML on the real CRI-O file


CRIO_KATA = {"crio": {"runtime": {
    "cgroup_manager": "cgroupfs", "conmon_cgroup": "pod",
    "runtimes": {"kata": {"runtime_path": "/usr/local/bin/containerd-shim-kata-v2",
                          "runtime_type": "vm", "runtime_root": "/run/vc"}}}}}


def test_crio_a_new_table_follows_its_sibling_before_the_next_headers_comments():
    text, notes = render("toml", CRIO, CRIO_KATA)
    assert notes == []
    lines = text.splitlines()
    kata = lines.index("[crio.runtime.runtimes.kata]")
    assert lines[kata + 1:kata + 4] == [
        'runtime_path = "/usr/local/bin/containerd-shim-kata-v2"', 'runtime_type = "vm"',
        'runtime_root = "/run/vc"']
    runc = lines.index("[crio.runtime.runtimes.runc]")
    assert runc < kata < lines.index(
        "# crun is a fast and lightweight fully featured OCI runtime and C library for")
    # Between runc's header and kata's, only runc's own lines (as in the base).
    base = CRIO.splitlines()
    b_runc = base.index("[crio.runtime.runtimes.runc]")
    assert lines[runc:kata] == base[b_runc:b_runc + kata - runc]
    assert comments(text) == comments(CRIO)
    conf, original = tomllib.loads(text), tomllib.loads(CRIO)
    runtime = conf["crio"]["runtime"]
    assert runtime["cgroup_manager"] == "cgroupfs" and runtime["conmon_cgroup"] == "pod"
    assert runtime["runtimes"]["kata"] == CRIO_KATA["crio"]["runtime"]["runtimes"]["kata"]
    assert runtime["runtimes"]["runc"] == original["crio"]["runtime"]["runtimes"]["runc"]


def test_crio_rendering_twice_is_stable():
    once, _ = render("toml", CRIO, CRIO_KATA)
    twice, _ = render("toml", once, CRIO_KATA)
    assert twice == once


# --------------------------------------------------------------------------
# Values that do not fit


def test_a_table_where_the_base_has_a_string_names_the_dotted_key():
    with pytest.raises(EditError) as err:
        render("toml", KATA, {"hypervisor": {"qemu": {"path": {"bin": "/x"}}}})
    assert err.value.key == "hypervisor.qemu.path"
    assert str(err.value) == ('hypervisor.qemu.path: the base has a string '
                              '("/usr/bin/qemu-system-x86_64") here; stack.yaml asks for a table')


def test_a_string_where_the_base_has_a_table():
    with pytest.raises(EditError) as err:
        render("toml", KATA, {"hypervisor": {"qemu": "fast"}})
    assert err.value.key == "hypervisor.qemu"
    assert "the base has a table here" in str(err.value) and 'a string ("fast")' in str(err.value)


def test_a_boolean_where_the_base_has_a_number():
    with pytest.raises(EditError) as err:
        render("toml", KATA, {"hypervisor": {"qemu": {"default_memory": True}}})
    assert err.value.key == "hypervisor.qemu.default_memory"
    assert "an integer (2048)" in str(err.value) and "a boolean (true)" in str(err.value)


def test_toml_has_no_null():
    with pytest.raises(EditError) as err:
        render("toml", KATA, {"kps": {"x": None}})
    assert err.value.key == "kps.x" and "no null" in str(err.value)


def test_a_base_that_is_not_toml():
    with pytest.raises(EditError, match="not valid TOML"):
        render("toml", "[broken\n", {"a": 1})


# --------------------------------------------------------------------------
# JSON and YAML


def test_json_keeps_key_order_and_indent():
    base = '{\n  "zeta": 1,\n  "alpha": {\n    "inner": true\n  },\n  "mid": "x"\n}\n'
    text, notes = render("json", base, {"alpha": {"added": 2}, "mid": "y", "new": [1, 2]},
                         ["zeta"])
    assert notes == []
    assert list(json.loads(text)) == ["alpha", "mid", "new"]
    assert text == ('{\n  "alpha": {\n    "inner": true,\n    "added": 2\n  },\n'
                    '  "mid": "y",\n  "new": [\n    1,\n    2\n  ]\n}\n')


def test_json_keeps_a_tab_indent():
    text, _ = render("json", '{\n\t"b": 1\n}', {"a": 2})
    assert text == '{\n\t"b": 1,\n\t"a": 2\n}\n'


def test_json_an_object_where_the_base_has_a_number():
    with pytest.raises(EditError) as err:
        render("json", '{"a": {"b": 1}}', {"a": {"b": {"c": 1}}})
    assert err.value.key == "a.b" and "asks for an object" in str(err.value)


def test_yaml_keeps_key_order_and_says_comments_are_lost():
    base = "# the top\nzeta: 1\nalpha:\n  inner: true  # why\nmid: x\n"
    text, notes = render("yaml", base, {"alpha": {"added": 2}, "new": "n"})
    assert notes == ["the base's comments are not kept (YAML is rewritten whole)"]
    assert "#" not in text
    assert text == "zeta: 1\nalpha:\n  inner: true\n  added: 2\nmid: x\nnew: n\n"


def test_yaml_without_comments_has_no_note():
    text, notes = render("yaml", "b: 1\n", {"a": 2})
    assert notes == [] and text == "b: 1\na: 2\n"


def test_yaml_a_mapping_where_the_base_has_a_number():
    with pytest.raises(EditError) as err:
        render("yaml", "b: 1\n", {"b": {"x": 1}})
    assert err.value.key == "b" and "asks for a mapping" in str(err.value)


def test_tomlkit_lines_insert_keeps_the_tables_dict_view_in_step():
    doc = tomlkit.parse("[t]\na = 1\n#b = 2\nc = 3\n")
    table = doc["t"]
    docedit._TomlkitLines.of(table).insert(table, 2, "b", tomlkit.item(2))
    assert list(dict.keys(table)) == ["a", "c", "b"] and table["b"] == 2
    assert tomlkit.dumps(doc) == "[t]\na = 1\n#b = 2\nb = 2\nc = 3\n"


def test_the_tomlkit_internals_are_in_one_place():
    """Every use of tomlkit's private API sits in the marked section."""
    source = Path(docedit.__file__).read_text()
    section = source.index("# tomlkit internals")
    end = source.index("# JSON (key order")
    outside = source[:section] + source[end:]
    for private in ("._insert_at", "dict.__setitem__", ".body", ".trivia", "Comment(",
                    "Trivia(", "tomlkit.container", "Null"):
        assert private not in outside.replace('import tomlkit.container  #', ''), private
