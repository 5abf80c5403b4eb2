"""The build cache client (tasks/host/cache/oci.py) against a real registry.

The registry is Debian's ``docker-registry`` (distribution 2.8) on
127.0.0.1 (tests/registry.py); those tests are skipped, saying so, when it
is not installed.  The bearer token flow is tested against a small
http.server stub in this process (distribution's ``token`` auth needs a
token server and signing certificates).
"""

from __future__ import annotations

import base64
import gzip
import http.server
import io
import json
import os
import socket
import stat
import tarfile
import threading
import time
from pathlib import Path

import pytest
import registry as reg

from tasks.errors import StackError
from tasks.host.cache import oci

needs_registry = pytest.mark.skipif(
    not reg.available(), reason="docker-registry (Debian package docker-registry, "
                                "distribution 2.8) is not installed")


@pytest.fixture
def registry(tmp_path):
    r = reg.LocalRegistry(tmp_path / "registry").start()
    yield r
    r.stop()


def client(r: reg.LocalRegistry, tmp_path: Path, **kw) -> oci.Registry:
    kw.setdefault("auth_file", tmp_path / "no-auth.json")
    return oci.Registry(r.url(), plain_http=True, timeout=2, **kw)


def make_tree(root: Path) -> Path:
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "usr/local/lib/x").mkdir(parents=True)
    (root / "usr/local/share/empty").mkdir(parents=True)
    tool = root / "usr/local/bin/tool"
    tool.write_bytes(b"#!/bin/sh\necho hi\n")
    tool.chmod(0o755)
    (root / "usr/local/lib/x/data.bin").write_bytes(os.urandom(70000) + b"\0\xff")
    (root / "usr/local/lib/x/secret").write_text("only me\n")
    (root / "usr/local/lib/x/secret").chmod(0o600)
    (root / "usr/local/lib/libx.so.1").write_bytes(b"\x7fELF fake")
    (root / "usr/local/lib/libx.so").symlink_to("libx.so.1")
    (root / "usr/local/bin/abs").symlink_to("/usr/local/bin/tool")
    (root / "usr/local/lib/x").chmod(0o750)
    return root


def snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = os.lstat(p)
            rel = p.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("f", stat.S_IMODE(st.st_mode), p.read_bytes())
    return out


def layer_of(c: oci.Registry, repo: str, tag: str) -> dict:
    body, _ = c._manifest(repo, tag)
    return json.loads(body)


# --------------------------------------------------------------------------
# Against the real registry


@needs_registry
def test_push_then_pull_gives_identical_files_and_modes(registry, tmp_path):
    tree = make_tree(tmp_path / "tree")
    c = client(registry, tmp_path)
    c.ping()
    repo = c.repo("Passt")
    assert repo == "team/kps/passt"
    tag = oci.tag_for({"k": 1})
    ann = oci.annotations_for("passt", "passt", "2024_08_21", "abc123",
                              "https://user:tok@example.org/passt.git", {"platform": "debian-12"})
    digest = c.push(repo, tag, tree, {"key": {"k": 1}}, ann)
    assert c.exists(repo, tag) == digest
    dest = tmp_path / "dest"
    config = c.pull(repo, tag, dest)
    assert config == {"key": {"k": 1}}
    assert snapshot(dest) == snapshot(tree)
    assert snapshot(dest)["usr/local/lib/x"] == ("d", 0o750)
    manifest = layer_of(c, repo, tag)
    assert manifest["mediaType"] == oci.MANIFEST_TYPE
    assert manifest["config"]["mediaType"] == oci.CONFIG_TYPE
    assert manifest["annotations"]["org.opencontainers.image.revision"] == "abc123"
    assert manifest["annotations"]["org.opencontainers.image.source"] == \
        "https://example.org/passt.git"
    assert manifest["annotations"]["kata-passt-stack.platform"] == "debian-12"
    # pinned by digest, too
    assert c.pull(repo, tag, tmp_path / "dest2", digest=digest) == config


@needs_registry
def test_a_second_push_of_the_same_content_uploads_no_blob(registry, tmp_path):
    tree = make_tree(tmp_path / "tree")
    c = client(registry, tmp_path)
    repo = c.repo("passt")
    first = c.push(repo, "a" * 64, tree, {"k": 1}, {})
    assert (c.uploaded, c.skipped) == (2, 0)
    for path in tree.rglob("*"):  # newer mtimes: the layer must not change
        os.utime(path, follow_symlinks=False)
    again = client(registry, tmp_path)
    assert again.push(repo, "a" * 64, tree, {"k": 1}, {}) == first
    assert (again.uploaded, again.skipped) == (0, 2)
    assert again.push(repo, "b" * 64, tree, {"k": 1}, {}) == first
    assert (again.uploaded, again.skipped) == (0, 4)


@needs_registry
def test_exists_for_a_missing_tag_is_none(registry, tmp_path):
    c = client(registry, tmp_path)
    repo = c.repo("passt")
    assert c.exists(repo, "f" * 64) is None
    c.push(repo, "e" * 64, make_tree(tmp_path / "tree"), {}, {})
    assert c.exists(repo, "f" * 64) is None
    assert c.exists(repo, "e" * 64) is not None


@needs_registry
@pytest.mark.parametrize("blob,how", [("layer", "flip"), ("layer", "truncate"),
                                      ("layer", "grow"), ("config", "flip")])
def test_a_tampered_blob_is_refused_and_nothing_is_written(registry, tmp_path, blob, how):
    c = client(registry, tmp_path)
    repo = c.repo("passt")
    tag = "c" * 64
    c.push(repo, tag, make_tree(tmp_path / "tree"), {"key": "v"}, {})
    m = layer_of(c, repo, tag)
    desc = m["layers"][0] if blob == "layer" else m["config"]
    data = registry.blob_file(desc["digest"])
    raw = bytearray(data.read_bytes())
    if how == "flip":
        raw[len(raw) // 2] ^= 0x01
    elif how == "truncate":
        raw = raw[:-10]
    else:
        raw += b"x" * 10
    data.write_bytes(bytes(raw))
    dest = tmp_path / "dest"
    with pytest.raises(oci.CacheCorrupt) as err:
        c.pull(repo, tag, dest)
    assert repo in str(err.value) and desc["digest"] in str(err.value)
    assert isinstance(err.value, StackError)
    assert not dest.exists()


@needs_registry
def test_a_stopped_registry_is_unreachable_quickly(registry, tmp_path):
    c = client(registry, tmp_path)
    c.ping()
    registry.stop()
    for call in (c.ping, lambda: c.exists("team/kps/passt", "a" * 64),
                 lambda: c.pull("team/kps/passt", "a" * 64, tmp_path / "d")):
        started = time.monotonic()
        with pytest.raises(oci.CacheUnreachable) as err:
            call()
        assert time.monotonic() - started < 2
        text = str(err.value)
        assert "\n" not in text and registry.url() in text and "refused" in text
    assert not (tmp_path / "d").exists()


def test_a_silent_server_times_out_quickly(tmp_path):
    with socket.socket() as s:  # accepts (the kernel's backlog), never answers
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        c = oci.Registry(f"oci://127.0.0.1:{s.getsockname()[1]}/kps", plain_http=True,
                         timeout=0.5, auth_file=tmp_path / "none.json")
        started = time.monotonic()
        with pytest.raises(oci.CacheUnreachable, match="no answer within 0.5 s"):
            c.ping()
        assert time.monotonic() - started < 2


def write_auth(path: Path, host: str, user: str, password: str, key=None) -> Path:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {key or host: {"auth": token}}}))
    return path


@needs_registry
@pytest.mark.skipif(not reg.htpasswd_available(),
                    reason="htpasswd (apache2-utils) is not installed: no bcrypt hashes")
def test_credentials_from_the_auth_file_are_sent_and_never_shown(tmp_path, monkeypatch):
    password = "s3cret-Pa55word"
    r = reg.LocalRegistry(tmp_path / "registry", users={"builder": password}).start()
    try:
        anon = client(r, tmp_path)
        anon.ping()  # 401 is reachable
        with pytest.raises(oci.CacheAuthError):
            anon.exists("team/kps/passt", "a" * 64)
        auth = write_auth(tmp_path / "auth.json", r.host, "builder", password,
                          key=f"http://{r.host}/v2/")
        monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth))
        c = oci.Registry(r.url(), plain_http=True, timeout=2)
        tree = make_tree(tmp_path / "tree")
        c.push("team/kps/passt", "a" * 64, tree, {}, {})
        c.pull("team/kps/passt", "a" * 64, tmp_path / "dest")
        assert snapshot(tmp_path / "dest") == snapshot(tree)
        wrong = "n0t-the-Pa55word"
        bad = oci.Registry(r.url(), plain_http=True, timeout=2, auth_file=write_auth(
            tmp_path / "bad.json", r.host, "builder", wrong))
        errors = []
        for call in (lambda: bad.exists("team/kps/passt", "a" * 64),
                     lambda: bad.push("team/kps/passt", "b" * 64, tree, {}, {})):
            with pytest.raises(oci.CacheAuthError) as err:
                call()
            errors.append(err.value)
        r.stop()
        with pytest.raises(oci.CacheUnreachable) as err:
            c.exists("team/kps/passt", "a" * 64)
        errors.append(err.value)
        for e in errors:
            text = str(e) + repr(e) + repr(e.args)
            for secret in (password, wrong, base64.b64encode(f"builder:{password}".encode())
                           .decode(), base64.b64encode(f"builder:{wrong}".encode()).decode()):
                assert secret not in text
    finally:
        r.stop()


# --------------------------------------------------------------------------
# The bearer token flow, against a stub


class Stub(http.server.BaseHTTPRequestHandler):
    token = "tok-VERY-SECRET-123"
    user, password = "ci", "hunter2-password"
    seen: list[tuple[str, str, str]] = []
    reject_token = False

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.handle_any()

    def do_HEAD(self):
        self.handle_any()

    def handle_any(self):
        auth = self.headers.get("Authorization", "")
        type(self).seen.append((self.command, self.path, auth))
        host = self.headers["Host"]
        if self.path.startswith("/token"):
            good = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            if auth != good:
                return self.answer(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}')
            return self.answer(200, json.dumps({"token": self.token}).encode())
        if auth != f"Bearer {self.token}" or self.reject_token:
            scope = "repository:team/kps/passt:pull"
            return self.answer(401, b"", {"WWW-Authenticate": (
                f'Bearer realm="http://{host}/token",service="stub",scope="{scope}"')})
        return self.answer(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')

    def answer(self, code, body, headers=None):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


@pytest.fixture
def stub():
    Stub.seen = []
    Stub.reject_token = False
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_the_bearer_flow_sends_basic_to_the_realm_and_the_token_to_the_registry(
        stub, tmp_path):
    auth = write_auth(tmp_path / "auth.json", stub, Stub.user, Stub.password,
                      key=f"https://{stub}")
    c = oci.Registry(f"oci://{stub}/team/kps", plain_http=True, timeout=2, auth_file=auth)
    assert c.exists("team/kps/passt", "a" * 64) is None
    basic = "Basic " + base64.b64encode(f"{Stub.user}:{Stub.password}".encode()).decode()
    token_calls = [s for s in Stub.seen if s[1].startswith("/token")]
    assert len(token_calls) == 1 and token_calls[0][2] == basic
    assert "scope=repository%3Ateam%2Fkps%2Fpasst%3Apull" in token_calls[0][1]
    assert "service=stub" in token_calls[0][1]
    assert Stub.seen[-1] == ("HEAD", "/v2/team/kps/passt/manifests/" + "a" * 64,
                             f"Bearer {Stub.token}")
    # the token is reused: one more call, no new token request
    c.exists("team/kps/passt", "b" * 64)
    assert len([s for s in Stub.seen if s[1].startswith("/token")]) == 1


@pytest.mark.parametrize("case", ["wrong password", "token refused"])
def test_bearer_failures_never_show_a_secret(stub, tmp_path, case):
    password = Stub.password if case == "token refused" else "wrong-Pa55"
    Stub.reject_token = case == "token refused"
    auth = write_auth(tmp_path / "auth.json", stub, Stub.user, password)
    c = oci.Registry(f"oci://{stub}/team/kps", plain_http=True, timeout=2, auth_file=auth)
    with pytest.raises(oci.CacheAuthError) as err:
        c.exists("team/kps/passt", "a" * 64)
    text = str(err.value) + repr(err.value.args)
    assert stub in text
    for secret in (password, Stub.token, base64.b64encode(f"ci:{password}".encode()).decode()):
        assert secret not in text


# --------------------------------------------------------------------------
# pack and unpack


def test_pack_is_deterministic_and_owned_by_root(tmp_path):
    tree = make_tree(tmp_path / "tree")
    first = oci.pack(tree)
    for path in tree.rglob("*"):
        os.utime(path, (12345, 12345), follow_symlinks=False)
    assert oci.pack(tree) == first
    assert first[4:8] == b"\0\0\0\0"  # gzip mtime 0
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members} == \
        {(0, 0, "root", "root", 0)}
    modes = {m.name: m.mode for m in members}
    assert modes["usr/local/bin/tool"] == 0o755 and modes["usr/local/lib/x/secret"] == 0o600


def evil(*entries) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, kind, extra in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = extra
                tar.addfile(info)
            elif kind == tarfile.REGTYPE:
                info.size = len(extra)
                tar.addfile(info, io.BytesIO(extra))
            else:
                tar.addfile(info)
    return gzip.compress(raw.getvalue(), mtime=0)


F, D, L, H = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE


@pytest.mark.parametrize("entries", [
    [("ok", F, b"1"), ("../x", F, b"x")],
    [("ok", F, b"1"), ("/tmp/abs", F, b"x")],
    [("a/../../x", F, b"x")],
    [("l", L, "../../../etc"), ],
    [("a/l", L, "/../etc")],
    [("l", L, "sub"), ("l/x", F, b"x")],
    [("l/x", F, b"x"), ("l", L, "/etc")],
    [("f/x", F, b"x"), ("f", F, b"file")],
    [("h", H, "/etc/passwd")],
    [("h", H, "../outside")],
    [("dev", tarfile.CHRTYPE, None)],
    [("fifo", tarfile.FIFOTYPE, None)],
    [("twice", F, b"1"), ("twice", L, "/etc/passwd")],
], ids=lambda e: "+".join(n for n, _, _ in e))
def test_unpack_refuses_unsafe_entries_before_writing_any(tmp_path, entries):
    dest = tmp_path / "dest"
    with pytest.raises(oci.CacheCorrupt):
        oci.unpack(evil(*entries), dest)
    assert not dest.exists()
    assert not (tmp_path / "x").exists() and not (tmp_path / "outside").exists()


def test_unpack_keeps_links_that_stay_inside(tmp_path):
    data = evil(("usr", D, None), ("usr/a", F, b"A"), ("usr/h", H, "usr/a"),
                ("usr/l", L, "a"), ("usr/abs", L, "/usr/a"), ("usr/up", L, "../usr/a"))
    oci.unpack(data, tmp_path / "dest")
    assert (tmp_path / "dest/usr/h").read_bytes() == b"A"
    assert os.readlink(tmp_path / "dest/usr/abs") == "/usr/a"


def test_unpack_refuses_garbage_and_a_full_dest(tmp_path):
    with pytest.raises(oci.CacheCorrupt):
        oci.unpack(b"not gzip at all", tmp_path / "d1")
    (tmp_path / "d2").mkdir()
    (tmp_path / "d2/old").write_text("keep")
    with pytest.raises(oci.CacheError, match="not empty"):
        oci.unpack(oci.pack(make_tree(tmp_path / "tree")), tmp_path / "d2")
    assert sorted(p.name for p in (tmp_path / "d2").iterdir()) == ["old"]


@pytest.mark.parametrize("url,expected", [
    ("oci://registry.example.com/team/kps", ("registry.example.com", "team/kps")),
    ("oci://127.0.0.1:5000/kps/", ("127.0.0.1:5000", "kps")),
    ("oci://[::1]:5000/a/b", ("[::1]:5000", "a/b")),
])
def test_parse_url(url, expected):
    assert oci.parse_url(url) == expected


@pytest.mark.parametrize("url", ["https://r.example/kps", "oci://user:pw@r.example/kps",
                                 "oci://r.example/Team", "oci:///kps", "oci://r.example/a//b"])
def test_parse_url_refuses(url):
    with pytest.raises(oci.CacheError) as err:
        oci.parse_url(url)
    assert "pw" not in str(err.value)


def test_tag_for_is_a_valid_stable_tag():
    assert oci.tag_for({"b": 1, "a": [2]}) == oci.tag_for({"a": [2], "b": 1})
    assert oci.tag_for({"a": 1}) != oci.tag_for({"a": 2})
    assert len(oci.tag_for({})) == 64


# --------------------------------------------------------------------------
# Speed


@needs_registry
def test_pull_speed_of_a_20_mb_tree(registry, tmp_path):
    tree = tmp_path / "big"
    for i in range(20):
        (tree / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
        (tree / f"d{i % 4}/f{i}").write_bytes(os.urandom(1 << 20))
    c = client(registry, tmp_path)
    c.timeout = 30
    started = time.monotonic()
    c.push(c.repo("big"), "t", tree, {}, {})
    pushed = time.monotonic() - started
    size = layer_of(c, c.repo("big"), "t")["layers"][0]["size"]
    started = time.monotonic()
    c.pull(c.repo("big"), "t", tmp_path / "dest")
    pulled = time.monotonic() - started
    mb = size / 1e6
    print(f"\nlayer {mb:.1f} MB: push {pushed:.2f} s ({mb / pushed:.0f} MB/s incl. pack), "
          f"pull {pulled:.2f} s ({mb / pulled:.0f} MB/s incl. verify+unpack)")
    assert snapshot(tmp_path / "dest") == snapshot(tree)
