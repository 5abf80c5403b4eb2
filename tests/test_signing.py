"""A build cache you can trust (issue 21): artifacts signed on push with
OpenSSH signatures (``settings.cache.sign_key``), verified on pull against
an allowed-signers file (``settings.cache.trust``).

Real keys made by ssh-keygen, a real ssh-agent, real doit, and the real
registry of the cache tests (tests/registry.py): A signs and pushes, B
trusts and pulls.  Refused: unsigned, a signature that is not one or not
for us, another key, a key taken out of the trust file, a revoked key, a
signature moved onto another artifact; each with one warning naming the
part, the digest and why, and a local build.  Without trust, pulls work as
before and the workdir is told once.  No private key material anywhere.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import Upstreams
from registry import LocalRegistry, available
from test_buildcache import blobs, machine, tags_of, warnings

from tasks import run
from tasks.errors import SpecError
from tasks.host.cache import oci, signing
from tasks.spec import load_stack, signers

HAVE_SSH = run.which("ssh-keygen") is not None
needs_ssh = pytest.mark.skipif(not HAVE_SSH, reason="ssh-keygen is not installed "
                               "(apt-get install openssh-client)")
needs_registry = pytest.mark.skipif(not available(), reason="docker-registry is not installed "
                                    "(apt-get install docker-registry)")
PARTS = ("alpha", "delta")


# --------------------------------------------------------------------------
# Helpers


def keygen(folder: Path, name: str, passphrase: str = "") -> Path:
    """A new ed25519 key pair ``folder/name`` and ``folder/name.pub``."""
    folder.mkdir(parents=True, exist_ok=True)
    key = folder / name
    run.query(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", f"{name}@test",
               "-f", str(key)])
    return key


def public(key: Path) -> str:
    """``key-type base64`` of a key pair."""
    return " ".join(Path(f"{key}.pub").read_text().split()[:2])


def fingerprint(key: Path) -> str:
    return run.query(["ssh-keygen", "-l", "-f", f"{key}.pub"]).out.split()[1]


def private_body(key: Path) -> list[str]:
    """The base64 lines of a private key file: what must never leak."""
    lines = key.read_text().splitlines()
    assert lines[0] == "-----BEGIN OPENSSH PRIVATE KEY-----"
    return [li for li in lines[1:-1] if len(li) > 20]


def trust_file(path: Path, *lines: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# who may sign the build cache\n" + "".join(li + "\n" for li in lines))
    return path


def cache(reg: LocalRegistry, push: bool, sign_key: Path | None = None,
          trust: Path | None = None) -> str:
    extra = (f", sign_key: '{sign_key}'" if sign_key else "") + \
        (f", trust: '{trust}'" if trust else "")
    return (f"cache: {{url: '{reg.url()}', push: {str(push).lower()}, plain_http: true"
            f"{extra}}}\n")


def client(reg: LocalRegistry) -> oci.Registry:
    return oci.Registry(reg.url(), plain_http=True)


def artifact(reg: LocalRegistry, part: str) -> tuple[str, str]:
    """(tag, manifest digest) of the one install artifact of ``part``."""
    repo = f"team/kps/{part}"
    (tag,) = [t for t in tags_of(reg, repo) if not t.endswith(".sig")]
    return tag, client(reg).exists(repo, tag)


def refusals(res) -> dict[str, str]:
    """The refusal warning of each part, by part; checks there is one each."""
    out = {}
    for line in warnings(res.text):
        assert "refused" in line, line
        part = line.split("build:", 1)[1].split(":", 1)[0]
        assert part not in out, f"two warnings for {part}:\n{res.text}"
        out[part] = line
    return out


@pytest.fixture
def registry(tmp_path):
    reg = LocalRegistry(tmp_path / "registry").start()
    yield reg
    reg.stop()


@pytest.fixture
def up(tmp_path) -> Upstreams:
    return Upstreams(tmp_path / "upstream")


@pytest.fixture
def keys(tmp_path) -> dict[str, Path]:
    if not HAVE_SSH:
        pytest.skip("ssh-keygen is not installed")
    return {name: keygen(tmp_path / "keys", name) for name in ("alice", "bob", "mallory")}


def signed_by_a(tmp_path, up, registry, key: Path):
    """Machine A builds and pushes every part, signed by ``key``."""
    a = machine(tmp_path / "a", up, cache(registry, push=True, sign_key=key))
    res = a.doit()
    for part in PARTS:
        assert f"install:{part}: pushed to" in res.text and "signed by" in res.text, res.text
    return a


# --------------------------------------------------------------------------
# Against the registry


@needs_registry
def test_a_signed_round_trip(tmp_path, up, registry, keys):
    signed_by_a(tmp_path, up, registry, keys["alice"])
    for part in PARTS:
        tag, digest = artifact(registry, part)
        repo = f"team/kps/{part}"
        # cosign's tag, in the artifact's repository, holding an SSH signature
        # that plain ssh-keygen verifies over the digest's text
        assert sorted(tags_of(registry, repo)) == sorted([tag, "sha256-" + digest[7:] + ".sig"])
        armored, claimed = client(registry).signature(repo, digest)
        assert claimed == digest
        sig = tmp_path / f"{part}.sig"
        sig.write_bytes(armored)
        allowed = trust_file(tmp_path / "plain", f"alice@example.com {public(keys['alice'])}")
        check = run.query(["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I",
                           "alice@example.com", "-n", "kata-passt-stack", "-s", str(sig)],
                          input=digest.encode(), check=False)
        assert check.ok, check.err

    trust = trust_file(tmp_path / "b-keys/allowed_signers",
                       f"alice@example.com {public(keys['alice'])}",
                       f"bob@example.com {public(keys['bob'])}")
    b = machine(tmp_path / "b", up, cache(registry, push=False, trust=trust))
    res = b.doit()
    assert warnings(res.text) == []
    for part in PARTS:
        assert f"build:{part}: from cache" in res.text
        assert f"install:{part}: from cache" in res.text
    assert "signed by alice@example.com" in res.text
    assert not (b.src("alpha") / "bin/alpha").exists()  # nothing built here
    assert "not verified" not in res.text
    stamp = json.loads((b.workdir / "state/stamps/build@alpha.json").read_text())
    assert stamp["from_cache"]["signer"] == {
        "principal": "alice@example.com", "key": f"ssh-ed25519 {fingerprint(keys['alice'])}"}
    shown = b.doit("show:alpha").text
    line = next(li for li in shown.splitlines() if li.strip().startswith("cache:"))
    assert "signed by alice@example.com" in line and fingerprint(keys["alice"]) in line, line
    assert artifact(registry, "alpha")[1] in line
    again = b.doit()
    assert [t for t in again.ran if t.startswith(("build:", "install:"))] == []


@needs_registry
def test_show_says_who_signed_what_a_build_would_pull(tmp_path, up, registry, keys):
    signed_by_a(tmp_path, up, registry, keys["alice"])
    trust = trust_file(tmp_path / "allowed_signers", f"alice@example.com {public(keys['alice'])}")
    b = machine(tmp_path / "b", up, cache(registry, push=False, trust=trust))
    shown = b.doit("show:alpha").text
    assert "cache:      not known before patch:alpha has run" in shown, shown
    b.doit("patch")
    shown = b.doit("show:alpha").text
    line = next(li for li in shown.splitlines() if li.strip().startswith("cache:"))
    assert "would pull" in line and "signed by alice@example.com" in line, line
    assert artifact(registry, "alpha")[1] in line
    assert not (b.workdir / "cache/alpha").exists()  # show pulled nothing

    trust_file(trust, f"bob@example.com {public(keys['bob'])}")
    shown = b.doit("show:alpha").text
    line = next(li for li in shown.splitlines() if li.strip().startswith("cache:"))
    assert "would be refused" in line and "not an allowed signer" in line, line

    c = machine(tmp_path / "c", up, cache(registry, push=False))
    c.doit("patch")
    shown = c.doit("show:alpha").text
    line = next(li for li in shown.splitlines() if li.strip().startswith("cache:"))
    assert "would pull" in line and "not verified (no settings.cache.trust)" in line, line


@needs_registry
def test_an_unsigned_artifact_is_refused_with_one_warning_and_built_locally(
        tmp_path, up, registry, keys):
    a = machine(tmp_path / "a", up, cache(registry, push=True))
    a.doit()
    trust = trust_file(tmp_path / "allowed_signers", f"alice@example.com {public(keys['alice'])}")
    b = machine(tmp_path / "b", up, cache(registry, push=False, trust=trust))
    res = b.doit()
    found = refusals(res)
    assert sorted(found) == sorted(PARTS)
    for part in PARTS:
        digest = artifact(registry, part)[1]
        line = found[part]
        assert line.startswith(f"warning: build:{part}: build cache artifact ")
        assert digest in line and "unsigned" in line and line.endswith("building locally")
        assert line in (b.workdir / f"logs/build-{part}.log").read_text()
    assert "from cache" not in res.text
    assert (b.src("alpha") / "bin/alpha").exists() and (b.src("delta") / "out/delta").exists()
    assert not (b.workdir / "cache/alpha").exists()


@needs_registry
def test_a_signature_by_another_key_is_refused(tmp_path, up, registry, keys):
    signed_by_a(tmp_path, up, registry, keys["mallory"])
    trust = trust_file(tmp_path / "allowed_signers", f"alice@example.com {public(keys['alice'])}")
    b = machine(tmp_path / "b", up, cache(registry, push=False, trust=trust))
    res = b.doit()
    found = refusals(res)
    assert sorted(found) == sorted(PARTS)
    for part, line in found.items():
        assert artifact(registry, part)[1] in line
        assert f"signed by ssh-ed25519 {fingerprint(keys['mallory'])}, which is not an " \
               f"allowed signer in {trust}" in line, line
    assert (b.src("alpha") / "bin/alpha").exists()


def _put_blob(reg: LocalRegistry, repo: str, data: bytes) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    start = urllib.request.Request(f"http://{reg.host}/v2/{repo}/blobs/uploads/", data=b"",
                                   method="POST")
    with opener.open(start, timeout=5) as answer:
        location = urllib.parse.urljoin(f"http://{reg.host}/", answer.headers["Location"])
    query = urllib.parse.urlencode({"digest": oci.sha256(data)})
    put = urllib.request.Request(location + ("&" if "?" in location else "?") + query,
                                 data=data, method="PUT",
                                 headers={"Content-Type": "application/octet-stream"})
    try:
        with opener.open(put, timeout=5):
            pass
    except urllib.error.HTTPError as err:
        raise AssertionError(err.read()) from None


def _get(reg: LocalRegistry, path: str, accept: str = oci.MANIFEST_TYPE) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(f"http://{reg.host}{path}", headers={"Accept": accept})
    with opener.open(request, timeout=5) as answer:
        return answer.read()


@needs_registry
def test_a_signature_moved_onto_another_artifact_is_refused(tmp_path, up, registry, keys):
    """alpha's signature manifest, copied as it is onto delta's signature tag."""
    signed_by_a(tmp_path, up, registry, keys["alice"])
    alpha, delta = artifact(registry, "alpha")[1], artifact(registry, "delta")[1]
    manifest = _get(registry, f"/v2/team/kps/alpha/manifests/{oci.signature_tag(alpha)}")
    for desc in [json.loads(manifest)["config"], *json.loads(manifest)["layers"]]:
        _put_blob(registry, "team/kps/delta",
                  _get(registry, f"/v2/team/kps/alpha/blobs/{desc['digest']}"))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    put = urllib.request.Request(
        f"http://{registry.host}/v2/team/kps/delta/manifests/{oci.signature_tag(delta)}",
        data=manifest, method="PUT", headers={"Content-Type": oci.MANIFEST_TYPE})
    with opener.open(put, timeout=5):
        pass

    trust = trust_file(tmp_path / "allowed_signers", f"alice@example.com {public(keys['alice'])}")
    b = machine(tmp_path / "b", up, cache(registry, push=False, trust=trust))
    res = b.doit()
    found = refusals(res)
    assert list(found) == ["delta"], res.text
    assert delta in found["delta"]
    assert f"the signature is alice@example.com's (ssh-ed25519 {fingerprint(keys['alice'])}) " \
           f"of another artifact, {alpha}" in found["delta"]
    assert "build:alpha: from cache" in res.text and "build:delta: from cache" not in res.text
    assert (b.src("delta") / "out/delta").exists()


@needs_registry
@pytest.mark.parametrize("forged", ["garbage", "namespace", "message"])
def test_a_bad_signature_is_refused(tmp_path, up, registry, keys, forged):
    """Stored under the right tag, by our client: not an SSH signature at
    all; a good one by a trusted key made for git (``-n git``); one by a
    trusted key over other bytes."""
    a = machine(tmp_path / "a", up, cache(registry, push=True))
    a.doit()
    tag, digest = artifact(registry, "alpha")
    message, namespace = (b"something else", "kata-passt-stack") if forged == "message" else \
        (digest.encode(), "git")
    armored = b"-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----\n" \
        if forged == "garbage" else \
        run.query(["ssh-keygen", "-Y", "sign", "-f", str(keys["alice"]), "-n", namespace],
                  input=message).stdout
    client(registry).push_signature("team/kps/alpha", digest, armored)

    trust = trust_file(tmp_path / "allowed_signers", f"alice@example.com {public(keys['alice'])}")
    b = machine(tmp_path / "b", up, cache(registry, push=False, trust=trust))
    res = b.doit("build:alpha")
    found = refusals(res)
    assert list(found) == ["alpha"] and digest in found["alpha"]
    why = {"garbage": "the signature is not an SSH signature",
           "namespace": "is for 'git', not 'kata-passt-stack'",
           "message": f"the signature by alice@example.com (ssh-ed25519 "
                      f"{fingerprint(keys['alice'])}) does not verify over {digest}"}[forged]
    assert why in found["alpha"], found["alpha"]
    assert (b.src("alpha") / "bin/alpha").exists()


@needs_registry
def test_a_key_removed_from_the_allowed_signers_is_refused(tmp_path, up, registry, keys):
    signed_by_a(tmp_path, up, registry, keys["alice"])
    trust = trust_file(tmp_path / "allowed_signers",
                       f"alice@example.com {public(keys['alice'])}",
                       f"bob@example.com {public(keys['bob'])}")
    b = machine(tmp_path / "b", up, cache(registry, push=False, trust=trust))
    assert "build:alpha: from cache" in b.doit().text
    trust_file(trust, f"bob@example.com {public(keys['bob'])}")  # alice leaves the team
    # what B installed stays (a pull is what is verified: the no-op reads no trust file)
    again = b.doit()
    assert [t for t in again.ran if t.startswith(("build:", "install:"))] == []
    c = machine(tmp_path / "c", up, cache(registry, push=False, trust=trust))
    found = refusals(c.doit())
    assert sorted(found) == sorted(PARTS)
    assert "which is not an allowed signer" in found["alpha"]
    assert fingerprint(keys["alice"]) in found["alpha"]
    # on B, forgetting the builds checks again what came from the cache (docs/cache.md)
    b.doit("forget", "build")
    res = b.doit()
    assert sorted(refusals(res)) == sorted(PARTS)
    assert (b.src("alpha") / "bin/alpha").exists()


@needs_registry
@pytest.mark.parametrize("form", ["line", "bare key"])
def test_a_revoked_key_is_refused(tmp_path, up, registry, keys, form):
    """``@revoked`` before a signer's line, or before a bare key, refuses
    the key even where another line still allows it."""
    signed_by_a(tmp_path, up, registry, keys["alice"])
    revoked = f"@revoked alice@example.com {public(keys['alice'])}" if form == "line" else \
        f"@revoked {public(keys['alice'])}"
    trust = trust_file(tmp_path / "allowed_signers",
                       f"alice@example.com {public(keys['alice'])}",
                       f"bob@example.com {public(keys['bob'])}",
                       revoked)
    b = machine(tmp_path / "b", up, cache(registry, push=False, trust=trust))
    found = refusals(b.doit())
    assert sorted(found) == sorted(PARTS)
    assert f"signed by ssh-ed25519 {fingerprint(keys['alice'])}, which allowed_signers:4 " \
           "marks @revoked" in found["alpha"], found["alpha"]
    assert (b.src("alpha") / "bin/alpha").exists()


@needs_registry
def test_without_trust_pulls_work_and_the_workdir_is_told_once(tmp_path, up, registry, keys):
    signed_by_a(tmp_path, up, registry, keys["alice"])
    b = machine(tmp_path / "b", up, cache(registry, push=False))
    res = b.doit()
    assert warnings(res.text) == []
    assert "build:alpha: from cache" in res.text and "build:delta: from cache" in res.text
    notes = [li for li in res.text.splitlines() if "are not verified" in li]
    assert len(notes) == 1, res.text  # two pulls, one note
    assert notes[0].startswith("note: artifacts pulled from the build cache " + registry.url())
    # another pull in this workdir says nothing more
    for path in sorted((b.workdir / "cache/alpha").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
    (b.workdir / "cache/alpha").rmdir()
    res = b.doit()
    assert "build:alpha: from cache" in res.text
    assert "are not verified" not in res.text
    # a new workdir is told again
    c = machine(tmp_path / "c", up, cache(registry, push=False))
    assert sum("are not verified" in li for li in c.doit().text.splitlines()) == 1


@needs_registry
def test_a_signing_machine_replaces_an_unsigned_artifact(tmp_path, up, registry, keys):
    machine(tmp_path / "a", up, cache(registry, push=True)).doit()
    unsigned = artifact(registry, "alpha")[1]
    trust = trust_file(tmp_path / "allowed_signers", f"alice@example.com {public(keys['alice'])}")
    ci = machine(tmp_path / "ci", up, cache(registry, push=True, sign_key=keys["alice"],
                                            trust=trust))
    res = ci.doit()
    assert sorted(refusals(res)) == sorted(PARTS)  # it trusts no unsigned artifact...
    assert "install:alpha: pushed to" in res.text  # ...and pushes its own, signed
    digest = artifact(registry, "alpha")[1]
    assert oci.signature_tag(digest) in tags_of(registry, "team/kps/alpha")
    assert digest == unsigned  # the same inputs made the same bytes
    b = machine(tmp_path / "b", up, cache(registry, push=False, trust=trust))
    res = b.doit()
    assert warnings(res.text) == [] and "signed by alice@example.com" in res.text


@needs_registry
def test_a_failed_signature_pushes_nothing(tmp_path, up, registry, keys):
    """A public key whose private half is nowhere (no agent, no file)."""
    lone = tmp_path / "lone.pub"
    lone.write_text(Path(f"{keys['bob']}.pub").read_text())
    a = machine(tmp_path / "a", up, cache(registry, push=True, sign_key=lone))
    res = a.doit(env={"SSH_AUTH_SOCK": ""})
    found = warnings(res.text)
    assert len(found) == 2, res.text
    assert all("not pushed to the build cache: ssh-keygen -Y sign with" in w for w in found)
    assert all("ssh-add" in w for w in found)  # the hint
    assert tags_of(registry, "team/kps/alpha") == [] and blobs(registry) == []
    assert a.staged("/usr/local/bin/alpha").exists()  # the install itself went on


@needs_registry
def test_an_agent_key_signs_and_no_private_key_material_leaks(tmp_path, up, registry, keys):
    """sign_key names the .pub of a key held by ssh-agent (its private file
    gone); then the private key's body is nowhere: not in A's or B's
    workdir, logs, stamps, doit's output or the registry."""
    body = private_body(keys["alice"]) + private_body(keys["bob"])
    sock = tmp_path / "agent.sock"
    agent = run.start(["ssh-agent", "-D", "-a", str(sock)], log=tmp_path / "agent.log")
    try:
        for _ in range(100):
            if sock.exists():
                break
            run.query(["sleep", "0.05"])
        env = {"SSH_AUTH_SOCK": str(sock)}
        run.query(["ssh-add", "-q", str(keys["alice"])], env=env)
        keys["alice"].rename(tmp_path / "elsewhere")  # only the agent holds it now
        pub = Path(f"{keys['alice']}.pub")
        a = machine(tmp_path / "a", up, cache(registry, push=True, sign_key=pub))
        res_a = a.doit(env=env)
    finally:
        run.stop(lambda sig: run.kill(agent.pid, sig), lambda: agent.poll() is not None,
                 grace=5)
        agent.wait()
    assert "install:alpha: pushed to" in res_a.text
    assert f"signed by ssh-ed25519 {fingerprint(keys['alice'])}" in res_a.text
    trust = trust_file(tmp_path / "allowed_signers", f"alice@example.com {public(keys['alice'])}",
                       f"bob@example.com {public(keys['bob'])}")
    b = machine(tmp_path / "b", up, cache(registry, push=False, trust=trust))
    res_b = b.doit()
    assert warnings(res_b.text) == [] and "signed by alice@example.com" in res_b.text
    show = b.doit("show:alpha")
    # and a machine signing with a private key file leaks none of it either
    c = machine(tmp_path / "c", up, cache(registry, push=True, sign_key=keys["bob"]))
    c.edit_stack("    needs: [alpha]\n    build: sh build.sh",
                 "    needs: [alpha]\n    env: {X: c}\n    build: sh build.sh")  # a new key
    res_c = c.doit()
    assert "install:delta: pushed to" in res_c.text and "signed by" in res_c.text
    outputs = [res_a.text, res_b.text, show.text, res_c.text]
    files = [p for root in (a.root, b.root, c.root, registry.storage) for p in root.rglob("*")
             if p.is_file() and not p.is_symlink()]
    assert any(p.name.endswith(".log") for p in files)
    for line in body:
        for text in outputs:
            assert line not in text
        for path in files:
            assert line.encode() not in path.read_bytes(), path
    assert list(a.workdir.glob("state/tmp/verify-*")) == []


# --------------------------------------------------------------------------
# The settings (stack.yaml problems: tests/specs/invalid_cache_*.yaml too)


def stack_with(tmp_path: Path, cache_yaml: str) -> Path:
    path = tmp_path / "stack.yaml"
    path.write_text("version: 1\nsettings:\n  cache:\n" + cache_yaml +
                    "components:\n  passt: {git: https://passt.top/passt, ref: v1}\n")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_stack(path)
    return info.value.problems


@needs_ssh
def test_sign_key_and_trust_resolve_to_absolute_paths(tmp_path, keys):
    (tmp_path / "team").mkdir()
    trust_file(tmp_path / "team/allowed_signers", f"alice@example.com {public(keys['alice'])}")
    stack = load_stack(stack_with(tmp_path, "    url: oci://127.0.0.1:5000/kps\n"
                                            "    sign_key: keys/alice\n"
                                            "    trust: team/allowed_signers\n"))
    assert stack.settings.cache.sign_key == tmp_path / "keys/alice"
    assert stack.settings.cache.trust == tmp_path / "team/allowed_signers"
    # the public half of a key in ssh-agent signs too
    stack = load_stack(stack_with(tmp_path, "    url: oci://127.0.0.1:5000/kps\n"
                                            "    sign_key: keys/alice.pub\n"))
    assert stack.settings.cache.sign_key == tmp_path / "keys/alice.pub"
    assert stack.settings.cache.trust is None


@needs_ssh
def test_a_private_key_others_may_read_is_a_problem(tmp_path, keys):
    os.chmod(keys["alice"], 0o644)
    (problem,) = problems_of(stack_with(tmp_path, "    url: oci://127.0.0.1:5000/kps\n"
                                                  "    sign_key: keys/alice\n"))
    assert problem.startswith("stack.yaml:5: settings.cache.sign_key: the private key ")
    assert "mode 644" in problem and "chmod 600 keys/alice" in problem
    for line in private_body(keys["alice"]):
        assert line not in problem


def test_each_bad_trust_line_is_a_problem_with_its_number(tmp_path):
    key = "ssh-ed25519 " + base64.b64encode(b"\0\0\0\x0bssh-ed25519\0\0\0\x20" + b"k" * 32
                                            ).decode()
    trust_file(tmp_path / "allowed", f"alice@example.com {key}", "bob@example.com ssh-ed25519 !!",
               key, "carol@example.com bogus=1 " + key, f"@trusted dave {key}")
    problems = problems_of(stack_with(tmp_path, "    url: oci://127.0.0.1:5000/kps\n"
                                                "    trust: allowed\n"))
    assert problems == [
        "stack.yaml:5: settings.cache.trust: allowed:3: the ssh-ed25519 key is not valid "
        "base64 key data",
        "stack.yaml:5: settings.cache.trust: allowed:4: no principal before the key (git's "
        "format: 'principal key-type key')",
        "stack.yaml:5: settings.cache.trust: allowed:5: unknown option 'bogus=1' (known: "
        "cert-authority, namespaces=, valid-after=, valid-before=)",
        "stack.yaml:5: settings.cache.trust: allowed:6: unknown marker '@trusted' (the only "
        "one is @revoked)"]


# --------------------------------------------------------------------------
# The signing module


def test_the_allowed_signers_format():
    key = "ssh-ed25519 " + base64.b64encode(b"\0\0\0\x0bssh-ed25519\0\0\0\x20" + b"k" * 32
                                            ).decode()
    rsa = "ssh-rsa " + base64.b64encode(b"\0\0\0\x0bssh-ed25519").decode()
    found, bad = signers.parse(
        "# comment\n\n"
        f"alice@example.com,*@ci.example.com {key} alice's laptop\n"
        f'bob namespaces="kata-passt-stack,git",valid-after=20240101 {key}\n'
        f"carol cert-authority {key}\n"
        f"@revoked eve {key}\n"
        f"@revoked {key}\n"
        f"mallory {rsa}\n"
        "oscar\n")
    assert [(s.line, s.principals, s.options, s.revoked) for s in found] == [
        (3, "alice@example.com,*@ci.example.com", "", False),
        (4, "bob", 'namespaces="kata-passt-stack,git",valid-after=20240101', False),
        (5, "carol", "cert-authority", False),
        (6, "eve", "", True),
        (7, "*", "", True)]
    assert found[0].text == f"alice@example.com,*@ci.example.com {key}"  # no comment
    assert found[3].text == f"eve {key}"  # the marker is ours, not ssh-keygen's
    assert bad == [(8, "the key data is of type 'ssh-ed25519', not ssh-rsa"),
                   (9, "expected 'principals [options] key-type base64-key'")]


@needs_ssh
def test_sign_then_verify(tmp_path, keys):
    digest, other = "sha256:" + "ab" * 32, "sha256:" + "cd" * 32
    armored = signing.sign(keys["alice"], digest)
    sig = signing.parse_signature(armored)
    assert sig.namespace == "kata-passt-stack"
    assert sig.signer() == f"ssh-ed25519 {fingerprint(keys['alice'])}"
    path = trust_file(tmp_path / "allowed", f"alice@example.com {public(keys['alice'])}")
    trust = signing.load_trust(path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    good = signing.verify(trust, armored, digest, scratch)
    assert good.why is None and good.principal == "alice@example.com"
    assert "another artifact, " + digest in signing.verify(trust, armored, other, scratch,
                                                            claimed=digest).why
    assert "does not verify" in signing.verify(trust, armored, other, scratch).why
    assert signing.verify(trust, None, digest, scratch).why.startswith("unsigned")
    assert list(scratch.iterdir()) == []  # its files are removed
    # a line may allow the key for several principals: the first one is named
    several = trust_file(tmp_path / "several",
                         f"alice@example.com,*@ci.example.com {public(keys['alice'])}")
    good = signing.verify(signing.load_trust(several), armored, digest, scratch)
    assert good.why is None and good.principal == "alice@example.com"


@needs_ssh
def test_ssh_keygen_is_given_the_revoked_keys_too(tmp_path, keys):
    """Our own check names the @revoked line; ssh-keygen's -r refuses the
    key as well, should the two ever disagree."""
    digest = "sha256:" + "ab" * 32
    armored = signing.sign(keys["alice"], digest)
    files = {"sig": tmp_path / "sig", "allowed": tmp_path / "allowed",
             "revoked": tmp_path / "revoked"}
    files["sig"].write_bytes(armored)
    files["allowed"].write_text(f"alice@example.com {public(keys['alice'])}\n")
    files["revoked"].write_text(public(keys["alice"]) + "\n")
    trust = signing.Trust(files["allowed"], ())
    sig = signing.parse_signature(armored)
    assert signing._verify(files, False, sig, digest, None, trust).why is None
    assert "does not verify" in signing._verify(files, True, sig, digest, None, trust).why


@needs_ssh
def test_a_key_with_a_passphrase_fails_with_a_hint(tmp_path):
    key = keygen(tmp_path / "keys", "locked", passphrase="correct horse")
    with pytest.raises(signing.SigningError) as info:
        signing.sign(key, "sha256:" + "ab" * 32)
    assert "ssh-keygen -Y sign with" in info.value.message
    assert "ssh-agent" in info.value.hint


def test_a_trust_file_that_turned_bad_refuses(tmp_path):
    path = trust_file(tmp_path / "allowed", "alice@example.com ssh-ed25519 !!")
    with pytest.raises(signing.TrustError) as info:
        signing.load_trust(path)
    assert f"{path}:2:" in info.value.message


@needs_registry
def test_the_no_op_reads_no_key_and_imports_nothing_new(tmp_path, up, registry, keys):
    """With sign_key and trust set, a no-op after pulls imports neither the
    signatures, the registry client nor the spec, and asks no registry (it
    is stopped)."""
    import subprocess

    signed_by_a(tmp_path, up, registry, keys["alice"])
    trust = trust_file(tmp_path / "allowed_signers", f"alice@example.com {public(keys['alice'])}")
    b = machine(tmp_path / "b", up, cache(registry, push=True, sign_key=keys["bob"],
                                          trust=trust))
    assert "signed by alice@example.com" in b.doit().text
    registry.stop()
    argv = b.argv()
    done = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], cwd=b.root,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = {line.split("|")[-1].strip() for line in done.stderr.splitlines()
              if line.startswith("import time:")}
    ours = sorted(m for m in loaded if m.startswith("tasks"))
    assert ours, done.stderr[-2000:]
    # buildcache: the build's check of a pulled part looks for its tree (kept())
    assert [m for m in ours if m.startswith(("tasks.host.cache.", "tasks.spec"))] == \
        ["tasks.host.cache.buildcache"], ours
    assert warnings(done.stdout + done.stderr) == []  # no registry was asked
    out = done.stdout + done.stderr
    assert "-- build:alpha" in out and ".  build:" not in out  # a no-op: all up to date
