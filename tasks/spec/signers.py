"""The allowed-signers file of ``settings.cache.trust``, as written: git's
format (``gpg.ssh.allowedSignersFile``), which is ssh-keygen's (ALLOWED
SIGNERS in ssh-keygen(1)): ``principals [options] key-type base64-key
[comment]`` a line, ``#`` comments and empty lines ignored.

ssh-keygen's format has no revocation marker (its ``-r`` takes a separate
file); here a line may start with ``@revoked``, as in known_hosts, followed
by such a line or by a bare ``key-type base64-key``: the key is refused
wherever it appears.  The spec reads the file with this module (a problem
a line, with its number) and the build cache (``host/cache/signing``) reads
it again on each pull, by the same rules.  Pure: no file is read here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass

REVOKED = "@revoked"
_KEYTYPE_RE = re.compile(r"^[a-z0-9][a-z0-9@.+-]*$")
_OPTIONS = ("cert-authority", "namespaces", "valid-after", "valid-before")
_FORMAT = "expected 'principals [options] key-type base64-key'"


@dataclass(frozen=True)
class Key:
    type: str
    data: str  # base64, as written

    @property
    def text(self) -> str:
        """``key-type base64``: a line of a revocation list."""
        return f"{self.type} {self.data}"

    @property
    def fingerprint(self) -> str:
        """``SHA256:...``, as ``ssh-keygen -l`` prints it."""
        return fingerprint(base64.b64decode(self.data))


@dataclass(frozen=True)
class Signer:
    line: int  # in the file, from 1
    principals: str  # as written: a comma-separated pattern list
    options: str
    key: Key
    revoked: bool
    text: str  # the line for ssh-keygen (``@revoked`` taken off)


def fingerprint(blob: bytes) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def read_string(data: bytes, at: int) -> tuple[bytes, int]:
    """One SSH wire-format string (uint32 length, bytes) at ``at``; ValueError
    when the data ends first."""
    if at + 4 > len(data):
        raise ValueError("truncated")
    (size,) = struct.unpack(">I", data[at:at + 4])
    end = at + 4 + size
    if end > len(data):
        raise ValueError("truncated")
    return data[at + 4:end], end


def key_problem(keytype: str, data: str) -> str | None:
    """Why ``keytype data`` is not an SSH public key, or None: the base64
    must decode, and the blob must name the same key type."""
    if not _KEYTYPE_RE.match(keytype):
        return f"{keytype[:40]!r} is not a key type (e.g. ssh-ed25519)"
    try:
        blob = base64.b64decode(data, validate=True)
        inner, _ = read_string(blob, 0)
    except (binascii.Error, ValueError):
        return f"the {keytype} key is not valid base64 key data"
    if inner != keytype.encode():
        return (f"the key data is of type {inner.decode('ascii', 'replace')[:40]!r}, "
                f"not {keytype}")
    return None


def _tokens(line: str) -> list[str]:
    """Split on blanks outside double quotes (options may quote a value)."""
    out, current, quoted = [], "", False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        if ch.isspace() and not quoted:
            if current:
                out.append(current)
            current = ""
        else:
            current += ch
    if current:
        out.append(current)
    return out


def _options_problem(options: str) -> str | None:
    for option in re.findall(r'(?:[^,"]|"[^"]*")+', options):
        name = option.split("=", 1)[0].lower()
        if name not in _OPTIONS or (name == "cert-authority") != ("=" not in option):
            return (f"unknown option {option[:40]!r} (known: cert-authority, namespaces=, "
                    "valid-after=, valid-before=)")
    return None


def _looks_like_key(tokens: list[str], at: int) -> bool:
    return len(tokens) > at + 1 and key_problem(tokens[at], tokens[at + 1]) is None


def parse_line(line: str, number: int) -> Signer | str | None:
    """A line of the file: its ``Signer``, None (empty or a comment), or why
    it is not one."""
    body = line.strip()
    if not body or body.startswith("#"):
        return None
    tokens = _tokens(body)
    revoked = tokens[0] == REVOKED
    if revoked:
        tokens = tokens[1:]
        if _looks_like_key(tokens, 0):  # a bare key: revoked for every principal
            key = Key(tokens[0], tokens[1])
            return Signer(number, "*", "", key, True, f"* {key.text}")
        if len(tokens) == 2:
            return key_problem(tokens[0], tokens[1])
    elif tokens[0].startswith("@"):
        return f"unknown marker {tokens[0][:40]!r} (the only one is {REVOKED})"
    if not tokens:
        return f"{REVOKED} names no key"
    if _looks_like_key(tokens, 0):
        return "no principal before the key (git's format: 'principal key-type key')"
    options, at = "", 1
    if not _looks_like_key(tokens, 1) and (_looks_like_key(tokens, 2) or len(tokens) > 3 and (
            "=" in tokens[1] or tokens[1].lower().startswith("cert-authority"))):
        options, at = tokens[1], 2
        why = _options_problem(options)
        if why:
            return why
    if len(tokens) < at + 2:
        return _FORMAT
    why = key_problem(tokens[at], tokens[at + 1])
    if why:
        return why
    text = " ".join(tokens[:at + 2])
    return Signer(number, tokens[0], options, Key(tokens[at], tokens[at + 1]), revoked, text)


def parse(text: str) -> tuple[list[Signer], list[tuple[int, str]]]:
    """Every signer of the file, and ``(line, why)`` for each line that is
    not one."""
    signers, problems = [], []
    for number, line in enumerate(text.splitlines(), 1):
        found = parse_line(line, number)
        if isinstance(found, str):
            problems.append((number, found))
        elif found is not None:
            signers.append(found)
    return signers, problems


def public_key_problem(text: str) -> str | None:
    """Why the first line of ``text`` is not an OpenSSH public key
    (``key-type base64 [comment]``), or None."""
    tokens = text.split()
    if len(tokens) < 2:
        return "not an OpenSSH public key"
    return key_problem(tokens[0], tokens[1])
