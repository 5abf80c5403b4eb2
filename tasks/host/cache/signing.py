"""Signed build cache artifacts (issue 21): OpenSSH signatures, the scheme
git signs commits with, made and checked by ``ssh-keygen -Y`` in the
namespace ``kata-passt-stack``.

What is signed is an artifact's manifest digest as text (``sha256:<hex>``,
no newline): the manifest names the config and the layer by their digests,
so the signature covers every byte that is pulled.  ``sign`` gives
ssh-keygen the key's path, never its content: a private key (without a
passphrase: nothing may prompt in a parallel build) or a public key whose
private half is in ssh-agent (``$SSH_AUTH_SOCK``).  No key material passes
through this process.

``verify`` checks an armored signature against the trust file (``Trust``,
git's allowed-signers format, ``tasks/spec/signers``): the signer's key is
read from the signature (``parse_signature``), refused when a line marks
it ``@revoked``; ssh-keygen then finds its principal (``-Y find-principals``)
and verifies (``-Y verify``, with the revoked keys as ``-r``) over the
digest of the artifact about to be pulled.  A refusal says why in words:
unsigned, not a signature, another namespace, a key not (or no longer)
allowed, a revoked key, a signature of another artifact, or one that does
not verify.  ssh-keygen needs files: the signature and the allowed and
revoked keys are written to a folder of the run's scratch space and removed.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ... import run, session
from ...errors import StackError
from ...spec import signers
from .oci import signature_tag

NAMESPACE = "kata-passt-stack"
ARMOR = ("-----BEGIN SSH SIGNATURE-----", "-----END SSH SIGNATURE-----")
# Nothing may ask for a passphrase: ssh-keygen would open the terminal in
# the middle of a parallel build.  Forced to an askpass that fails, a key
# with a passphrase fails at once (its hint: ssh-agent).
_NO_PROMPT = {"SSH_ASKPASS": "false", "SSH_ASKPASS_REQUIRE": "force"}
_HINT = "install openssh-client (ssh-keygen)"


class SigningError(StackError):
    """A signature could not be made (the key, the agent, ssh-keygen)."""


class TrustError(StackError):
    """The trust file cannot be read or holds a line that is not a signer."""


# --------------------------------------------------------------------------
# Signing


def sign(key: Path, digest: str) -> bytes:
    """The armored signature of ``digest`` (its text) by ``key``."""
    res = run.query(["ssh-keygen", "-Y", "sign", "-f", str(key), "-n", NAMESPACE],
                    input=digest.encode(), env=_NO_PROMPT, check=False, timeout=60,
                    missing_hint=_HINT)
    if not res.ok or ARMOR[0].encode() not in res.stdout:
        said = [li for li in res.err.splitlines() if li.strip()]
        raise SigningError(
            f"ssh-keygen -Y sign with {key} failed"
            + (f": {said[-1].strip()}" if said else f" (exit {res.code})"),
            hint="a key with a passphrase signs through ssh-agent: ssh-add it, and set "
                 "settings.cache.sign_key to its .pub file")
    return res.stdout


# --------------------------------------------------------------------------
# Reading a signature


@dataclass(frozen=True)
class Signature:
    key: signers.Key
    namespace: str
    hash: str

    def signer(self) -> str:
        """``ssh-ed25519 SHA256:...``: the key, as a person compares it."""
        return f"{self.key.type} {self.key.fingerprint}"


def parse_signature(armored: bytes) -> Signature:
    """The key, namespace and hash of an armored SSHSIG (PROTOCOL.sshsig);
    ValueError when it is not one."""
    text = armored.decode("ascii", "replace").strip()
    if not (text.startswith(ARMOR[0]) and text.endswith(ARMOR[1])):
        raise ValueError("not an armored SSH signature")
    body = "".join(text[len(ARMOR[0]):-len(ARMOR[1])].split())
    try:
        blob = base64.b64decode(body, validate=True)
    except binascii.Error:
        raise ValueError("not base64") from None
    if blob[:6] != b"SSHSIG" or blob[6:10] != b"\0\0\0\1":
        raise ValueError("not an SSHSIG of version 1")
    key, at = signers.read_string(blob, 10)
    namespace, at = signers.read_string(blob, at)
    _, at = signers.read_string(blob, at)  # reserved
    algorithm, at = signers.read_string(blob, at)
    signers.read_string(blob, at)  # the signature itself
    keytype, _ = signers.read_string(key, 0)
    return Signature(signers.Key(keytype.decode("ascii", "replace"),
                                 base64.b64encode(key).decode()),
                     namespace.decode("utf-8", "replace"), algorithm.decode("ascii", "replace"))


# --------------------------------------------------------------------------
# The trust file


@dataclass(frozen=True)
class Trust:
    path: Path
    signers: tuple[signers.Signer, ...]

    @property
    def allowed(self) -> list[signers.Signer]:
        return [s for s in self.signers if not s.revoked]

    def revoked_line(self, key: signers.Key) -> int | None:
        """The line that revokes ``key`` (compared by its data), or None."""
        blob = base64.b64decode(key.data)
        for s in self.signers:
            if s.revoked and base64.b64decode(s.key.data) == blob:
                return s.line
        return None


def load_trust(path: Path) -> Trust:
    """The trust file, parsed (again when it changed; once per run, which
    keeps what it parsed: ``session.Run.feature``); ``TrustError`` naming
    its first bad line."""
    current = session.current()
    trusts = current.feature("trusts", dict) if current is not None else {}
    try:
        st = os.stat(path)
        seen = (str(path), st.st_mtime_ns, st.st_size, st.st_ino)
        if seen in trusts:
            return trusts[seen]
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        why = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise TrustError(f"the trust file {path} cannot be read: {why}") from None
    found, problems = signers.parse(text)
    if problems:
        line, why = problems[0]
        raise TrustError(f"the trust file {path}:{line}: {why}")
    trust = trusts[seen] = Trust(Path(path), tuple(found))
    return trust


# --------------------------------------------------------------------------
# Verifying


@dataclass(frozen=True)
class Verdict:
    """``why`` is None when the signature is good; ``principal`` names the
    allowed signer then, and ``signer`` the key when it was read."""
    why: str | None
    principal: str = ""
    signer: str = ""

    def record(self) -> dict:
        return {"principal": self.principal, "key": self.signer}


def verify(trust: Trust, armored: bytes | None, digest: str, scratch: Path,
           claimed: str | None = None) -> Verdict:
    """Is ``armored`` a good signature of ``digest`` by a signer ``trust``
    allows?  ``claimed``: the digest the signature artifact says it signs
    (named in the refusal when it is another's)."""
    if armored is None:
        return Verdict(f"unsigned: no signature {signature_tag(digest)} in the registry")
    try:
        sig = parse_signature(armored)
    except ValueError as err:
        return Verdict(f"the signature is not an SSH signature ({err})")
    who = sig.signer()
    if sig.namespace != NAMESPACE:
        return Verdict(f"the signature by {who} is for {sig.namespace!r}, not {NAMESPACE!r}",
                       signer=who)
    line = trust.revoked_line(sig.key)
    if line is not None:
        return Verdict(f"signed by {who}, which {trust.path.name}:{line} marks @revoked",
                       signer=who)
    allowed = trust.allowed
    if not allowed:
        return Verdict(f"{trust.path} allows no signer", signer=who)
    folder = Path(tempfile.mkdtemp(prefix="verify-", dir=scratch))
    try:
        files = {"sig": folder / "signature", "allowed": folder / "allowed_signers",
                 "revoked": folder / "revoked"}
        files["sig"].write_bytes(armored)
        files["allowed"].write_text("".join(s.text + "\n" for s in allowed))
        revoked = [s.key.text for s in trust.signers if s.revoked]
        files["revoked"].write_text("".join(k + "\n" for k in revoked))
        return _verify(files, bool(revoked), sig, digest, claimed, trust)
    except run.ProgramMissing as err:
        return Verdict(f"cannot verify: {err.message}", signer=who)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _ssh_keygen(args: list[str], message: str | None = None) -> run.Result:
    return run.query(["ssh-keygen", *args], input=message.encode() if message else None,
                     check=False, timeout=30, missing_hint=_HINT)


def _verify(files: dict[str, Path], revoked: bool, sig: Signature, digest: str,
            claimed: str | None, trust: Trust) -> Verdict:
    who = sig.signer()
    found = _ssh_keygen(["-Y", "find-principals", "-s", str(files["sig"]),
                         "-f", str(files["allowed"])])
    # one principal a line: a line of the file may list several
    principals = [li.strip() for li in found.out.splitlines() if li.strip()] if found.ok else []
    if not principals:
        return Verdict(f"signed by {who}, which is not an allowed signer in {trust.path}",
                       signer=who)

    def good(message: str) -> bool:
        args = ["-Y", "verify", "-f", str(files["allowed"]), "-I", principals[0],
                "-n", NAMESPACE, "-s", str(files["sig"])]
        if revoked:
            args += ["-r", str(files["revoked"])]
        return _ssh_keygen(args, message).ok

    if good(digest):
        return Verdict(None, principals[0], who)
    if claimed and claimed != digest and good(claimed):
        return Verdict(f"the signature is {principals[0]}'s ({who}) of another artifact, "
                       f"{claimed}", principals[0], who)
    return Verdict(f"the signature by {principals[0]} ({who}) does not verify over {digest}",
                   principals[0], who)
