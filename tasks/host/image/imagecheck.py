"""imagecheck: refuse a guest image that cannot boot, before Kata tries it.

An image mbuto built once lacked the dynamic linker, and nothing noticed
until the guest failed to start.  So the image is read (initramfs.read) and
checked the way the kernel and the dynamic linker will use it: /init must be
there and runnable, the program it ends with too, and every ELF program and
library must find its interpreter and the libraries it needs inside the
image, never on the host.
"""

from __future__ import annotations

import fnmatch
import io
import posixpath
import re
import shlex
from dataclasses import dataclass

from .initramfs import Entry, Image

AGENT = "/usr/bin/kata-agent"
MAX_PROBLEMS = 25
ELF_MAGIC = b"\x7fELF"
LIB_DIRS = ("/lib64", "/usr/lib64", "/lib", "/usr/lib")
MULTIARCH = {"EM_X86_64": "x86_64-linux-gnu", "EM_AARCH64": "aarch64-linux-gnu"}
SHELL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # dash's, PATH unset
_ET_EXEC, _ET_DYN = 2, 3
_SEPARATORS = {";", ";;", "&", "&&", "|", "||"}
# Words that end a script without naming a program we could look for.
_SHELL_WORDS = {"fi", "done", "esac", "}", "then", "else", "do", "exit", "wait", "true",
                "false", ":", "return", "set", "export", "unset", "echo", "printf", "cd",
                "read", "trap", "shift", "eval", "."}
_PATH_SET = re.compile(r"^[ \t]*(?:export[ \t]+)?PATH=(\S*)", re.M)
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_PROGRAM = re.compile(r"[\w./+-]+")  # a name or path, not a variable, redirection or quote


@dataclass(frozen=True)
class _Elf:
    """What the dynamic linker needs for one program or library."""

    interp: str | None
    needed: tuple[str, ...]
    search: tuple[str, ...]  # DT_RUNPATH, or DT_RPATH when there is none, unexpanded
    machine: str


def problems(image: Image, agent: str | None = AGENT) -> list[str]:
    """Why the image cannot boot, one line each (none: it can): /init first,
    then the agent, then programs and libraries by path; at most
    MAX_PROBLEMS lines, as one missing linker can break every program."""
    found = [*_init_problems(image, agent), *_agent_problems(image, agent),
             *_elf_problems(image)]
    unique = list(dict.fromkeys(found))
    if len(unique) <= MAX_PROBLEMS:
        return unique
    return [*unique[:MAX_PROBLEMS], f"... and {len(unique) - MAX_PROBLEMS} more"]


def _init_problems(image: Image, agent: str | None) -> list[str]:
    """The kernel runs /init: an ELF program (its needs are checked with the
    others) or a #! script, whose interpreter and last program must be in
    the image.  mbuto's kata /init is the fix-up script with, as its last
    line, the program the /init link led to: the agent."""
    init = image.entry("/init")
    if init is None:
        return ["/init is missing"]
    if not init.is_executable:
        return ["/init is not executable"]
    if init.data.startswith(ELF_MAGIC):
        real = image.resolve("/init")
        return _not_the_agent(image, real, real, agent)
    if not init.data.startswith(b"#!"):
        return ["/init is neither an ELF program nor a script starting with #!: "
                "the kernel cannot run it"]
    script = init.data.decode("utf-8", "replace")
    return [*_interpreter_problems(image, script), *_final_problems(image, script, agent)]


def _interpreter_problems(image: Image, script: str) -> list[str]:
    words = script[2:].split("\n", 1)[0].split()
    if not words:
        return ["/init starts with #! but names no interpreter"]
    why = _unrunnable(image, words[0])
    return [f"/init runs {words[0]} (its #! line), which is {why}"] if why else []


def _final_problems(image: Image, script: str, agent: str | None) -> list[str]:
    program = _final_program(script)
    if program is None:
        return []
    if "/" in program:
        why = _unrunnable(image, program)
        if why:
            return [f"/init finally runs {program}, which is {why}"]
        return _not_the_agent(image, program, program, agent)
    folders = _script_path(script)
    found = next((f"{d}/{program}" for d in folders
                  if _unrunnable(image, f"{d}/{program}") is None), None)
    if found is None:
        return [f"/init finally runs {program}, which is not in the image "
                f"(looked in {', '.join(folders)})"]
    return _not_the_agent(image, program, found, agent)


def _not_the_agent(image: Image, shown: str, path: str, agent: str | None) -> list[str]:
    """/init must end in the agent: with mbuto's link bug (patch 0001) /init
    ran the shell instead, an image where everything is present and nothing
    works.  The same bytes count as the agent (a copy, a hard link)."""
    runs = image.entry(path)
    expected = image.entry(agent) if agent else None
    if runs is None or expected is None or runs.data == expected.data:
        return []
    return [f"/init finally runs {shown}, not the agent {agent}"]


def _final_program(script: str) -> str | None:
    """The program the script's last command runs (``exec`` and variable
    assignments skipped), or None when that line names no program we can
    look for: a shell keyword or builtin, a variable, a redirection."""
    words = _last_words(script)
    if not words:
        return None
    last = max((i for i, w in enumerate(words) if w in _SEPARATORS), default=-1)
    command = words[last + 1:]
    while command and (command[0] == "exec" or _ASSIGNMENT.match(command[0])):
        command.pop(0)
    if not command or command[0] in _SHELL_WORDS or not _PROGRAM.fullmatch(command[0]):
        return None
    return command[0]


def _last_words(script: str) -> list[str] | None:
    """The words of the script's last line that holds any (comments and
    blank lines skipped, continued lines joined)."""
    for line in reversed(script.replace("\\\n", "").splitlines()):
        words = _words(line)
        if words != []:
            return words
    return None


def _words(line: str) -> list[str] | None:
    """The shell words of ``line`` (operators apart), or None if it does not
    parse on its own (an open quote: a multi-line string)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:
        return None


def _script_path(script: str) -> list[str]:
    """The folders a bare program name is looked for in: the kernel starts
    /init with no PATH, so the shell's default, unless the script sets one."""
    path = SHELL_PATH
    for match in _PATH_SET.finditer(script):
        value = match.group(1).strip("\"'")
        path = value.replace("${PATH}", path).replace("$PATH", path)
    return [d.rstrip("/") or "/" for d in path.split(":") if d]


def _agent_problems(image: Image, agent: str | None) -> list[str]:
    why = _unrunnable(image, agent) if agent else None
    return [f"the agent {agent} is {why}"] if why else []


def _unrunnable(image: Image, path: str) -> str | None:
    """Why ``path`` cannot be run in the image ("not in the image", "not
    executable"), or None if it can."""
    entry = image.entry(path)
    if entry is None:
        return "not in the image"
    return None if entry.is_executable else "not executable"


def _elf_problems(image: Image) -> list[str]:
    """Interpreter and libraries of every ELF program and library.  Only
    files starting with the ELF magic are parsed, and kernel modules (.ko,
    ET_REL) and core files are told apart by their header alone: most of an
    image is neither, and pyelftools costs about 2 ms a file."""
    conf_dirs = _ld_so_conf_dirs(image)
    found_libs: dict[tuple[str, tuple[str, ...]], bool] = {}
    found = []
    for path in sorted(image.entries):
        entry = image.entries[path]
        if entry.is_file and entry.data.startswith(ELF_MAGIC):
            found.extend(_elf_file_problems(image, entry, conf_dirs, found_libs))
    return found


def _elf_file_problems(image: Image, entry: Entry, conf_dirs: tuple[str, ...],
                       found_libs: dict[tuple[str, tuple[str, ...]], bool]) -> list[str]:
    claimed = _claimed_type(entry.data)
    if claimed not in (_ET_EXEC, _ET_DYN, None):
        return []
    try:
        elf = _read_elf(entry.data)
    except Exception as err:  # pyelftools raises many kinds of error on a damaged file
        if claimed is None and not entry.is_executable:
            return []
        return [f"{entry.path} is a damaged ELF file that cannot run or be loaded ({err})"]
    found = []
    if elf.interp:
        why = _unrunnable(image, elf.interp)
        if why:
            found.append(f"{entry.path} needs {elf.interp}, which is {why}")
    dirs = tuple(dict.fromkeys([*_expand(elf.search, posixpath.dirname(entry.path)),
                                *conf_dirs, *_default_dirs(elf.machine)]))
    for name in elf.needed:
        if not _library_found(image, name, dirs, found_libs):
            where = "" if "/" in name else f" (looked in {', '.join(dirs)})"
            found.append(f"{entry.path} needs {name}, which is not in the image{where}")
    return found


def _claimed_type(data: bytes) -> int | None:
    """e_type as the header states it, or None if the header is too short
    or its byte order unknown: read by hand, so that a damaged file still
    says whether it meant to be a program."""
    if len(data) < 18 or data[5] not in (1, 2):
        return None
    return int.from_bytes(data[16:18], "little" if data[5] == 1 else "big")


def _read_elf(data: bytes) -> _Elf:
    from elftools.elf.elffile import ELFFile  # only when an image is checked

    elf = ELFFile(io.BytesIO(data))
    interp, needed, paths = None, [], {}
    for segment in elf.iter_segments():
        if segment.header.p_type == "PT_INTERP":
            interp = segment.get_interp_name()
        elif segment.header.p_type == "PT_DYNAMIC":
            for tag in segment.iter_tags():
                kind = tag.entry.d_tag
                if kind == "DT_NEEDED":
                    needed.append(tag.needed)
                elif kind == "DT_RUNPATH":
                    paths[kind] = tag.runpath
                elif kind == "DT_RPATH":
                    paths[kind] = tag.rpath
    search = paths.get("DT_RUNPATH", paths.get("DT_RPATH", ""))
    return _Elf(interp, tuple(needed), tuple(search.split(":")), elf.header.e_machine)


def _expand(search: tuple[str, ...], origin: str) -> list[str]:
    """RUNPATH/RPATH folders with $ORIGIN (the file's folder) put in; a
    relative one is relative to where /init runs, the root.  $LIB and
    $PLATFORM depend on the machine and are not followed."""
    folders = []
    for item in search:
        item = item.replace("${ORIGIN}", origin).replace("$ORIGIN", origin)
        if item and "$" not in item:
            folders.append(item if item.startswith("/") else "/" + item)
    return folders


def _default_dirs(machine: str) -> tuple[str, ...]:
    triple = MULTIARCH.get(machine)
    return (*LIB_DIRS, f"/lib/{triple}", f"/usr/lib/{triple}") if triple else LIB_DIRS


def _library_found(image: Image, name: str, dirs: tuple[str, ...],
                   found_libs: dict[tuple[str, tuple[str, ...]], bool]) -> bool:
    """Whether the linker finds ``name``: a name with a slash is a path (from
    the root, where /init runs), any other is looked for in ``dirs``."""
    key = (name, dirs)
    if key not in found_libs:
        paths = ["/" + name.lstrip("/")] if "/" in name else [f"{d}/{name}" for d in dirs]
        found_libs[key] = any(_is_file(image, p) for p in paths)
    return found_libs[key]


def _is_file(image: Image, path: str) -> bool:
    entry = image.entry(path)
    return entry is not None and entry.is_file


def _ld_so_conf_dirs(image: Image) -> tuple[str, ...]:
    """Folders /etc/ld.so.conf in the image lists, its includes followed."""
    folders: list[str] = []
    _read_ld_so_conf(image, "/etc/ld.so.conf", folders, set())
    return tuple(dict.fromkeys(folders))


def _read_ld_so_conf(image: Image, path: str, folders: list[str], seen: set[str]) -> None:
    real = image.resolve(path)
    entry = image.entries.get(real) if real else None
    if entry is None or not entry.is_file or real in seen:
        return
    seen.add(real)
    for line in entry.data.decode("utf-8", "replace").splitlines():
        words = line.split("#", 1)[0].split()
        if words[:1] == ["include"]:
            for pattern in words[1:]:
                pattern = posixpath.join(posixpath.dirname(path), pattern)
                for conf in _glob(image, pattern):
                    _read_ld_so_conf(image, conf, folders, seen)
        else:  # folders; hwcap lines name no folder
            folders.extend(w.rstrip("/") or "/" for w in words if w.startswith("/"))


def _glob(image: Image, pattern: str) -> list[str]:
    """Files of the image matching ``pattern``, wildcards in its last part only."""
    folder, name = posixpath.split(pattern)
    real = image.resolve(folder)
    if real is None:
        return []
    return sorted(path for path in image.entries
                  if posixpath.dirname(path) == real and path != real
                  and fnmatch.fnmatchcase(posixpath.basename(path), name))
