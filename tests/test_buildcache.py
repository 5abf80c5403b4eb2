"""The shared build cache (settings.cache; tasks/host/cache/buildcache.py), end
to end: real git, real make, real doit, and a real registry (Debian's
docker-registry, tests/registry.py).

Two or more "machines" share the fixture upstreams: each has its own
workdir and destdir (another tmp subfolder), so nothing but the registry
joins them.  Machine A builds and pushes; a fresh machine B builds nothing
and installs the same bytes; an edit on B builds locally; an unreachable
registry, a tampered layer, a tree changed on disk after its pull, push:
false, credentials, and a bad cache url.  A build whose output holds one of
A's paths (checkout, workdir, stage; text, binary, link target, realpath)
is not pushed: B builds it itself.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import ALPHA, ALPHA_BETA, Project, Upstreams, commit_all, git, git_init, write
from registry import LocalRegistry, available, htpasswd_available

pytestmark = pytest.mark.skipif(not available(), reason="docker-registry is not installed "
                                "(apt-get install docker-registry)")

DELTA = """\
delta:
  git: {delta}
  ref: v1
  needs: [alpha]
  build: sh build.sh
  artifacts: [out/delta, out/link]
  install: mkdir -p "$DESTDIR$PREFIX/share/delta" && cp -a out/. "$DESTDIR$PREFIX/share/delta/"
  installs: [$PREFIX/share/delta/delta, $PREFIX/share/delta/link]
"""


def delta_repo(up: Upstreams) -> Path:
    """Needs alpha (so its key holds alpha's tree); stages an executable,
    a read-only file and a symbolic link."""
    repo = up.root / "delta"
    if repo.exists():
        return repo
    git_init(repo)
    write(repo / "build.sh", "mkdir -p out\ncp delta.in out/delta\nchmod 0750 out/delta\n"
                             "printf 'ro\\n' > out/ro && chmod 0444 out/ro\n"
                             "ln -sfn delta out/link\n")
    write(repo / ".gitignore", "/out/\n")
    write(repo / "delta.in", "#!/bin/sh\necho delta\n")
    commit_all(repo, "delta v1", tag="v1")
    return repo


def machine(root: Path, up: Upstreams, cache: str = "") -> Project:
    """A machine of its own (workdir, destdir, stack file) over the shared upstreams."""
    root.mkdir(parents=True, exist_ok=True)
    m = Project(root)
    m.up = up
    stack = ALPHA_BETA.format(alpha=up.alpha(), beta=up.beta()) + \
        DELTA.format(delta=delta_repo(up))
    m.write_stack(stack, cache)
    return m


def cache_setting(reg: LocalRegistry, push: bool) -> str:
    return f"cache: {{url: '{reg.url()}', push: {str(push).lower()}, plain_http: true}}\n"


def files_of(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: content and mode, or the link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = os.lstat(path)
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    return out


def catalog(reg: LocalRegistry) -> list[str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{reg.host}/v2/_catalog", timeout=5) as answer:
        return json.load(answer)["repositories"]


def manifest_of(reg: LocalRegistry, repo: str) -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{reg.host}/v2/{repo}/tags/list", timeout=5) as answer:
        (tag,) = json.load(answer)["tags"]
    request = urllib.request.Request(
        f"http://{reg.host}/v2/{repo}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    with opener.open(request, timeout=5) as answer:
        return json.load(answer)


def blobs(reg: LocalRegistry) -> list[Path]:
    folder = reg.storage / "docker/registry/v2/blobs"
    return sorted(folder.rglob("data")) if folder.exists() else []


@pytest.fixture
def registry(tmp_path):
    reg = LocalRegistry(tmp_path / "registry").start()
    yield reg
    reg.stop()


@pytest.fixture
def up(tmp_path) -> Upstreams:
    return Upstreams(tmp_path / "upstream")


def warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("warning:")]


def test_a_pushes_b_builds_nothing_and_installs_the_same_bytes(tmp_path, up, registry):
    a = machine(tmp_path / "a", up, cache_setting(registry, push=True))
    res = a.doit()
    assert "install:alpha: pushed to" in res.text and "install:delta: pushed to" in res.text
    assert "build:beta: not cached: its build commands name $DESTDIR" in res.text
    assert sorted(catalog(registry)) == ["team/kps/alpha", "team/kps/delta"]
    manifest = manifest_of(registry, "team/kps/alpha")
    notes = manifest["annotations"]
    assert notes["org.opencontainers.image.revision"] == git(a.src("alpha"), "rev-parse", "HEAD")
    assert notes["kata-passt-stack.part"] == "alpha" and len(notes["kata-passt-stack.key"]) == 64
    assert manifest["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    # nothing of A's paths in what was pushed (config and annotations)
    for blob in blobs(registry):
        data = blob.read_bytes()
        if data[:1] == b"{":
            assert str(a.root).encode() not in data, data[:400]

    b = machine(tmp_path / "b", up, cache_setting(registry, push=False))
    res = b.doit()
    assert "build:alpha: from cache" in res.text and "build:delta: from cache" in res.text
    assert "install:alpha: from cache" in res.text and "install:delta: from cache" in res.text
    assert warnings(res.text) == []
    # no build command ran for the cached parts: no artifact in B's checkouts
    assert not (b.src("alpha") / "bin/alpha").exists()
    assert not (b.src("delta") / "out").exists()
    assert (b.src("beta") / "out/beta").exists()  # not cached: built locally
    assert files_of(b.stage) == files_of(a.stage)
    assert files_of(b.stage)["usr/local/share/delta/link"] == ("link", "delta")
    assert files_of(b.stage)["usr/local/share/delta/delta"][1] == 0o750
    assert "build:alpha: from cache" in (b.workdir / "logs/build-alpha.log").read_text()
    stamp = json.loads((b.workdir / "state/stamps/install@alpha.json").read_text())
    assert stamp["from_cache"].startswith("sha256:")  # for doit status
    built = json.loads((b.workdir / "state/stamps/build@alpha.json").read_text())
    assert built["from_cache"]["manifest"] == stamp["from_cache"]
    summary = res.err[res.err.index("summary:"):]
    assert re.search(r"install:alpha\s+\S+\s+ok \(from cache\)", summary), summary
    status = b.doit("status").out
    line = next(li for li in status.splitlines() if li.startswith("alpha "))
    assert "built (from cache), installed (from cache)" in line, status

    again = b.doit()
    assert [t for t in again.ran if t.startswith(("build:", "install:"))] == []
    assert len(catalog(registry)) == 2  # push: false on B


def test_an_edit_on_b_builds_that_part_locally(tmp_path, up, registry):
    machine(tmp_path / "a", up, cache_setting(registry, push=True)).doit()
    b = machine(tmp_path / "b", up, cache_setting(registry, push=False))
    b.doit("patch")
    write(b.src("delta") / "delta.in", "#!/bin/sh\necho edited on b\n")
    res = b.doit()
    assert "build:alpha: from cache" in res.text
    assert "build:delta: from cache" not in res.text
    assert (b.src("delta") / "out/delta").exists()  # built here
    assert warnings(res.text) == []
    assert "edited on b" in b.staged("/usr/local/share/delta/delta").read_text()


def test_an_unreachable_registry_is_one_warning_and_a_local_build(tmp_path, up, registry):
    url = registry.url()
    registry.stop()
    c = machine(tmp_path / "c", up, cache_setting(registry, push=True))
    res = c.doit()
    found = warnings(res.text)
    assert len(found) == 1, res.text
    assert url in found[0] and "unreachable" in found[0]
    assert "from cache" not in res.text
    assert c.staged("/usr/local/bin/alpha").exists()
    assert (c.src("alpha") / "bin/alpha").exists()


def test_a_tampered_layer_is_refused_and_built_locally(tmp_path, up, registry):
    a = machine(tmp_path / "a", up, cache_setting(registry, push=True))
    a.doit()
    layers = [b for b in blobs(registry) if b.read_bytes()[:2] == b"\x1f\x8b"]
    assert len(layers) == 2
    for layer in layers:
        data = bytearray(layer.read_bytes())
        data[len(data) // 2] ^= 0xFF
        layer.write_bytes(bytes(data))
    b = machine(tmp_path / "b", up, cache_setting(registry, push=False))
    res = b.doit()
    found = warnings(res.text)
    assert len(found) == 2, res.text
    for part in ("alpha", "delta"):
        line = next(w for w in found if f"build:{part}:" in w)
        assert "refused" in line and "sha256:" in line
        assert line in (b.workdir / f"logs/build-{part}.log").read_text()  # kept in the log
    assert "from cache" not in res.text
    assert (b.src("alpha") / "bin/alpha").exists()  # built locally
    assert files_of(b.stage) == files_of(a.stage)
    assert not (b.workdir / "cache" / "alpha").exists()


def test_a_pulled_tree_changed_on_disk_is_not_installed(tmp_path, up, registry):
    machine(tmp_path / "a", up, cache_setting(registry, push=True)).doit()
    b = machine(tmp_path / "b", up, cache_setting(registry, push=False))
    res = b.doit("build:alpha")
    assert "build:alpha: from cache" in res.text
    pulled = b.workdir / "cache/alpha/usr/local/bin/alpha"
    pulled.write_text("#!/bin/sh\necho tampered\n")
    res = b.doit("install:alpha", expect=None)
    assert res.code != 0
    assert "changed on disk since it was pulled" in res.text
    assert not b.staged("/usr/local/bin/alpha").exists()
    res = b.doit("install:alpha")  # the next run pulls it again, verified
    assert "build:alpha: from cache" in res.text
    assert "tampered" not in b.staged("/usr/local/bin/alpha").read_text()


def test_push_false_pushes_nothing(tmp_path, up, registry):
    m = machine(tmp_path / "m", up, cache_setting(registry, push=False))
    res = m.doit()
    assert catalog(registry) == []
    assert blobs(registry) == []
    assert "pushed" not in res.text and warnings(res.text) == []


@pytest.mark.skipif(not htpasswd_available(), reason="htpasswd (apache2-utils) is not installed")
def test_credentials_never_appear_in_output_or_logs(tmp_path, up):
    password = "s3cret-Pa55-w0rd"
    reg = LocalRegistry(tmp_path / "registry", users={"kps": password}).start()
    try:
        def auth_file(name: str, pw: str) -> Path:
            token = base64.b64encode(f"kps:{pw}".encode()).decode()
            path = tmp_path / name
            path.write_text(json.dumps({"auths": {reg.host: {"auth": token}}}))
            return path

        good, bad = auth_file("good.json", password), auth_file("bad.json", "wrong-" + password)
        a = machine(tmp_path / "a", up, cache_setting(reg, push=True))
        res_a = a.doit(env={"REGISTRY_AUTH_FILE": str(good)})
        assert "install:alpha: pushed to" in res_a.text
        b = machine(tmp_path / "b", up, cache_setting(reg, push=True))
        res_b = b.doit(env={"REGISTRY_AUTH_FILE": str(bad)})
        assert warnings(res_b.text), res_b.text  # refused credentials: a warning, a local build
        assert (b.src("alpha") / "bin/alpha").exists()
    finally:
        reg.stop()
    secrets = [password, "wrong-" + password]
    secrets += [base64.b64encode(f"kps:{s}".encode()).decode() for s in secrets]
    for text in (res_a.text, res_b.text):
        for secret in secrets:
            assert secret not in text
    for workdir in (a.workdir, b.workdir):
        for path in workdir.rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                for secret in secrets:
                    assert secret.encode() not in data, path


def test_a_bad_cache_url_is_a_spec_problem(tmp_path, up):
    m = machine(tmp_path / "m", up, "cache: {url: 'oci://kps:pw@registry.example/team'}\n")
    res = m.doit("list", expect=None)
    assert res.code != 0
    assert "settings.cache.url" in res.text and "credentials do not go in the url" in res.text
    assert "pw@" not in res.text.replace("oci://kps:pw@", "")


def test_the_key_holds_the_platform_and_no_path(tmp_path, up, monkeypatch):
    """Unit-level: the key of one part on two machines with other paths is
    the same; another toolchain version or platform gives another key."""
    from tasks.host.cache import buildcache
    from tasks.spec import load_stack
    from tasks.workspace import Workspace
    a = machine(tmp_path / "a", up, "cache: {url: 'oci://127.0.0.1:1/x'}\n")
    b = machine(tmp_path / "b", up, "cache: {url: 'oci://127.0.0.1:1/x'}\n")
    keys = []
    for m in (a, b):
        ws = Workspace(load_stack(m.stack_file))
        part = ws.component("alpha").parts[0]
        key, why = buildcache.key_for(ws, part, {"tree": "t", "submodules": {}})
        assert why is None
        keys.append(key)
        assert str(m.root) not in json.dumps(key)
    assert keys[0] == keys[1]
    monkeypatch.setattr(buildcache, "platform_of",
                        lambda: {"id": "other", "version_id": "1", "machine": "x"})
    ws = Workspace(load_stack(a.stack_file))
    other, _ = buildcache.key_for(ws, ws.component("alpha").parts[0],
                                  {"tree": "t", "submodules": {}})
    assert other != keys[0]


def test_the_key_holds_the_toolchain_versions_check_found(tmp_path, up):
    """A part with requirements is keyed on the versions check recorded for
    it; without a record it is not cached (never keyed on a guess)."""
    import dataclasses

    from tasks.action import task_id
    from tasks.host.cache import buildcache
    from tasks.spec import load_stack
    from tasks.workspace import Workspace
    m = machine(tmp_path / "m", up, "cache: {url: 'oci://127.0.0.1:1/x'}\n")
    ws = Workspace(load_stack(m.stack_file))
    part = dataclasses.replace(ws.component("alpha").parts[0], requires=("make",))
    content = {"tree": "t", "submodules": {}}
    key, why = buildcache.key_for(ws, part, content)
    assert key is None and why == "check recorded no toolchain versions for it"
    keys = []
    for version in ("4.3", "4.4"):
        ws.stamps.write(task_id("check"), {}, versions={"alpha": {"make": version}})
        key, why = buildcache.key_for(ws, part, content)
        assert why is None and key["toolchains"] == {"make": version}
        keys.append(key)
    assert keys[0] != keys[1]


def test_check_records_the_versions_of_each_parts_requirements(tmp_path, up):
    m = machine(tmp_path / "m", up, "cache: {url: 'oci://127.0.0.1:1/x'}\n")
    m.edit_stack("    installs: [$PREFIX/bin/alpha]\n",
                 "    installs: [$PREFIX/bin/alpha]\n    requires: [make]\n")
    m.doit("check")
    stamp = json.loads((m.workdir / "state/stamps/check.json").read_text())
    version = stamp["versions"]["alpha"]["make"]
    assert version[0].isdigit(), stamp["versions"]


HERE = """\
here:
  git: {here}
  ref: v1
  build: sh build.sh
  artifacts: [out/where]
  install: mkdir -p "$DESTDIR$PREFIX/share/here" && cp -a out/. "$DESTDIR$PREFIX/share/here/"
  installs: [$PREFIX/share/here/where]
"""


def here_machine(root: Path, up: Upstreams, build: str, settings: str) -> Project:
    """A machine with alpha (clean) and ``here``, whose build is ``build``
    (run in its checkout; it writes out/where and maybe more under out/)."""
    repo = up.root / "here"
    if not repo.exists():
        git_init(repo)
        write(repo / "build.sh", "set -e\nmkdir -p out\n" + build)
        write(repo / ".gitignore", "/out/\n")
        commit_all(repo, "here v1", tag="v1")
    root.mkdir(parents=True, exist_ok=True)
    m = Project(root)
    m.up = up
    m.write_stack(ALPHA.format(alpha=up.alpha()) + HERE.format(here=repo), settings)
    return m


def tags_of(reg: LocalRegistry, repo: str) -> list[str]:
    """The repository's tags, through the registry's API (none: unknown)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{reg.host}/v2/{repo}/tags/list", timeout=5) as answer:
            return json.load(answer).get("tags") or []
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return []
        raise


def pushed_bytes(reg: LocalRegistry) -> list[bytes]:
    """Every blob as pushed, its layers unpacked."""
    out = []
    for blob in blobs(reg):
        data = blob.read_bytes()
        out.append(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
    return out


def not_pushed(res, file: str, path: Path | str, more: int = 0) -> str:
    """The one warning line for ``here``, checked word for word."""
    tail = f" (and {more} more file{'s' if more > 1 else ''})" if more else ""
    expected = (f"warning: install:here: not pushed to the build cache: {file} holds this "
                f"machine's path {path}{tail}")
    assert warnings(res.text) == [expected], res.text
    return expected


def test_a_build_that_writes_its_checkout_path_is_not_pushed_and_b_builds_it(
        tmp_path, up, registry):
    a = here_machine(tmp_path / "a", up, 'echo "built in $(pwd)" > out/where\n',
                     cache_setting(registry, push=True))
    res = a.doit()
    line = not_pushed(res, "usr/local/share/here/where", a.src("here"))
    assert line in (a.workdir / "logs/install-here.log").read_text()
    assert "install:alpha: pushed to" in res.text  # a clean part is still shared
    assert "install:here: pushed" not in res.text
    assert catalog(registry) == ["team/kps/alpha"]
    assert tags_of(registry, "team/kps/here") == []
    assert not any(str(a.root).encode() in data for data in pushed_bytes(registry))
    # the install itself went on and merged
    assert a.staged("/usr/local/share/here/where").read_text() == f"built in {a.src('here')}\n"

    b = here_machine(tmp_path / "b", up, "", cache_setting(registry, push=False))
    res = b.doit()
    assert "build:alpha: from cache" in res.text and "install:alpha: from cache" in res.text
    assert "build:here: from cache" not in res.text
    assert b.staged("/usr/local/share/here/where").read_text() == f"built in {b.src('here')}\n"
    assert warnings(res.text) == []


def test_a_binary_holding_the_workdir_path_is_not_pushed(tmp_path, up, registry):
    """NUL bytes around the path, which straddles the scan's 1 MiB chunks;
    a second file holding it is counted."""
    build = ("head -c 1048570 /dev/zero > out/where\n"
             "printf '%s\\000\\377' \"$(cd ../.. && pwd)\" >> out/where\n"
             "printf '\\177ELF\\000%s\\000' \"$(cd ../.. && pwd)\" > out/where2\n"
             "printf 'clean\\000' > out/other\n")
    a = here_machine(tmp_path / "a", up, build, cache_setting(registry, push=True))
    res = a.doit()
    not_pushed(res, "usr/local/share/here/where", a.workdir, more=1)
    assert b"\0" in a.staged("/usr/local/share/here/where").read_bytes()
    assert catalog(registry) == ["team/kps/alpha"]
    assert tags_of(registry, "team/kps/here") == []


def test_a_link_to_the_stage_is_not_pushed(tmp_path, up, registry):
    build = 'echo clean > out/where\n'
    a = here_machine(tmp_path / "a", up, build, cache_setting(registry, push=True))
    a.edit_stack('"$DESTDIR$PREFIX/share/here/"',
                 '"$DESTDIR$PREFIX/share/here/" && ln -s "$DESTDIR/x" "$DESTDIR/lnk"')
    res = a.doit()
    not_pushed(res, "lnk", a.workdir / "stage/here")
    assert catalog(registry) == ["team/kps/alpha"]


def test_the_real_path_of_a_workdir_through_a_symlink_is_found(tmp_path, up, registry):
    (tmp_path / "a/real").mkdir(parents=True)
    (tmp_path / "a/link").symlink_to("real")
    a = here_machine(tmp_path / "a", up, 'pwd -P > out/where\n',
                     cache_setting(registry, push=True) + "workdir: link\n")
    res = a.doit()
    not_pushed(res, "usr/local/share/here/where", tmp_path.resolve() / "a/real/src/here")
    assert catalog(registry) == ["team/kps/alpha"]


@pytest.mark.parametrize("command, named", [
    ('cc -DTOP="${SRC%/}" x.c', "$SRC"), ("make O=${SRC:-.}/out", "$SRC"),
    ("echo ${#SRC}", "$SRC"), ('cp x "${DESTDIR%/}/x"', "$DESTDIR"),
    ("make SRC=$SRC", "$SRC"), ("make D=${DESTDIR}", "$DESTDIR"),
    ("make O=${SRCDIR}", None), ("echo $SRC_X ${DESTDIR_X}", None)])
def test_a_build_naming_src_or_destdir_in_any_expansion_is_not_cached(tmp_path, up, command,
                                                                       named):
    """``${SRC%/}`` names the checkout as surely as ``$SRC`` does."""
    import dataclasses

    from tasks.host.cache import buildcache
    from tasks.spec import load_stack
    from tasks.workspace import Workspace
    m = machine(tmp_path / "m", up, "cache: {url: 'oci://127.0.0.1:1/x'}\n")
    ws = Workspace(load_stack(m.stack_file))
    part = dataclasses.replace(ws.component("alpha").parts[0], build=(command,))
    why = buildcache.not_cached(ws, part)
    assert why == (f"its build commands name {named}" if named else None)
