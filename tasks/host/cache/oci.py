"""A shared build cache on an OCI registry: a small client of the
distribution HTTP API (issue 12, phase 1: the client; the steps use it later).

One OCI artifact per cached install tree, in ``<prefix>/<component>`` under a
tag derived from the cache key (``tag_for``): a manifest
(``MANIFEST_TYPE``, schemaVersion 2) whose annotations name the component,
ref, commit and a summary of the key inputs (``annotations_for``: what
``oras``, ``skopeo inspect`` or ``crane manifest`` show), a config of our own
media type (``CONFIG_TYPE``, the key inputs as JSON), and one layer, the
staged tree as tar+gzip (``layer.pack``: the same tree, the same bytes).

An artifact's signature (issue 21, made and checked by ``signing``) is an
artifact of its own in the same repository, tagged by cosign's convention
``sha256-<hex>.sig`` after the manifest digest it signs (``signature_tag``;
distribution 2.8 has no referrers API): a config naming that digest
(``SIGNATURE_CONFIG_TYPE``) and one layer, the armored SSH signature
(``SIGNATURE_TYPE``).  ``push`` can sign before it sends anything and sends
the signature first, so that no reader finds the artifact unsigned.

Why not the ``oras`` package: measured, oras 0.2.x ``pull`` wrote a
tampered layer to disk without complaint, and the registry (distribution
2.8) serves a tampered blob as it is stored.  Here every blob is read into
memory and its size and sha256 checked against its descriptor before a byte
of it is used (``CacheCorrupt``), and ``unpack`` checks every entry before
writing any.  It also keeps the dependencies at urllib.  Nothing here starts
a process, so credential helpers (``credsStore``, ``credHelpers``) are not
used: only credentials written in the auth file.  Every request has a short
timeout (5 s); a refused or timed-out connection, a TLS failure or a 5xx
raise ``CacheUnreachable``, one line naming the URL: warn once, build locally.

Credentials come from ``$REGISTRY_AUTH_FILE`` or ``~/.docker/config.json``
(``auths.<host>``: ``auth``, or ``username``/``password``), sent as basic
auth or exchanged for a bearer token (``WWW-Authenticate: Bearer realm=...,
service=..., scope=...``).  No message holds them: every error text goes
through ``_redact``, and Authorization is not carried over a redirect.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import http.client
import json
import os
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ...model import OCI_REPOSITORY, split_cache_url
from .errors import CacheAuthError, CacheCorrupt, CacheError, CacheUnreachable
from .layer import pack, unpack

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.kata-passt-stack.install.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
# A signature artifact (host/cache/signing.py makes and checks what it holds).
SIGNATURE_CONFIG_TYPE = "application/vnd.kata-passt-stack.signature.config.v1+json"
SIGNATURE_TYPE = "application/vnd.kata-passt-stack.ssh-signature.v1"
MAX_SIGNATURE = 64 * 1024
ANNOTATION_PREFIX = "kata-passt-stack."
MAX_MANIFEST = 4 * 1024 * 1024
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


# --------------------------------------------------------------------------
# Names


def parse_url(url: str) -> tuple[str, str]:
    """``oci://host[:port]/repo/prefix`` -> ``("host[:port]", "repo/prefix")``
    (``model.split_cache_url``'s rule, which the spec checked already)."""
    try:
        return split_cache_url(url)
    except ValueError as err:
        raise CacheError(str(err)) from None


def repository(prefix: str, component: str) -> str:
    """``<prefix>/<component>``, lower-case."""
    name = "/".join(p for p in (prefix, component.lower()) if p)
    if not OCI_REPOSITORY.match(name):
        raise CacheError(f"{name!r} is not a repository name")
    return name


def signature_tag(digest: str) -> str:
    """cosign's tag for the signature of ``digest``: ``sha256-<hex>.sig``."""
    algorithm, _, hexd = digest.partition(":")
    return f"{algorithm}-{hexd}.sig"


def canonical(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tag_for(key: dict) -> str:
    """The tag of a cache key: the sha256 of its canonical JSON (64 hex)."""
    return hashlib.sha256(canonical(key)).hexdigest()


def _no_userinfo(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))


def annotations_for(component: str, part: str, ref: str, commit: str, source: str = "",
                    summary: dict | None = None) -> dict[str, str]:
    """The manifest's annotations: the OCI ones where they fit, our own keys
    for the rest (``summary``: short key inputs, e.g. platform, toolchains)."""
    out = {
        "org.opencontainers.image.title": part,
        "org.opencontainers.image.description": f"kata-passt-stack install tree of {part}",
        "org.opencontainers.image.version": ref,
        "org.opencontainers.image.revision": commit,
        ANNOTATION_PREFIX + "component": component,
        ANNOTATION_PREFIX + "part": part,
    }
    if source:
        out["org.opencontainers.image.source"] = _no_userinfo(source)
    for k, v in (summary or {}).items():
        out[ANNOTATION_PREFIX + k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return out


# --------------------------------------------------------------------------
# Manifests


def _manifest_of(config_type: str, config: bytes, layers: list[tuple[str, bytes, dict]],
                 annotations: dict[str, str]) -> bytes:
    """An OCI image manifest (canonical JSON) of a config and layers
    (media type, bytes, annotations)."""
    return canonical({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": config_type, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": kind, "digest": sha256(data), "size": len(data),
                    **({"annotations": notes} if notes else {})}
                   for kind, data, notes in layers],
        "annotations": dict(annotations),
    })


# --------------------------------------------------------------------------
# Credentials


def auth_file_path(auth_file: Path | str | None = None) -> Path:
    given = auth_file or os.environ.get("REGISTRY_AUTH_FILE")
    return Path(given) if given else Path.home() / ".docker" / "config.json"


def _host_of(key: str) -> str:
    key = key.strip()
    if "://" in key:
        key = urllib.parse.urlsplit(key).netloc
    return key.split("/", 1)[0]


def credentials(host: str, auth_file: Path | str | None = None) -> tuple[str, str] | None:
    """(user, password) for ``host`` from the auth file, or None."""
    path = auth_file_path(auth_file)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise CacheError(f"{path}: cannot read the registry auth file "
                         f"({type(err).__name__})") from None
    auths = data.get("auths") if isinstance(data, dict) else None
    for key, entry in (auths or {}).items():
        if _host_of(key) != host or not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise CacheError(f"{path}: the auth entry for {host} is not base64 "
                                 "user:password") from None
            return user, password
        if entry.get("username"):
            return entry["username"], entry.get("password", "")
    return None


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    params.update({k: v for k, v in re.findall(r'(\w+)=([^",\s]+)', rest) if k not in params})
    return scheme.lower(), params


# --------------------------------------------------------------------------
# The client

_Answer = collections.namedtuple("_Answer", "status headers body")


class Registry:
    """A registry (``oci://host[:port]/prefix``), over https unless
    ``plain_http``.  ``uploaded`` and ``skipped`` count the blobs pushes
    sent and found already there."""

    def __init__(self, url: str, plain_http: bool = False, timeout: float = 5,
                 auth_file: Path | str | None = None):
        self.url = url
        self.host, self.prefix = parse_url(url)
        self.base = ("http" if plain_http else "https") + "://" + self.host
        self.timeout = timeout
        self._creds = credentials(self.host, auth_file)
        self._secrets: set[str] = set()
        if self._creds:
            user, password = self._creds
            self._secrets |= {password, base64.b64encode(f"{user}:{password}".encode()).decode()}
        self._auth: dict[str, str] = {}  # repository ("" for /v2/) -> Authorization value
        self.uploaded = self.skipped = 0
        # no proxy for a registry on this machine (a proxy cannot reach it)
        handlers = [urllib.request.ProxyHandler({})] if self._loopback() else []
        self._opener = urllib.request.build_opener(*handlers)

    def _loopback(self) -> bool:
        name = urllib.parse.urlsplit("//" + self.host).hostname or ""
        return name in ("localhost", "::1") or name.startswith("127.")

    def _redact(self, text: str) -> str:
        for secret in sorted(filter(None, self._secrets), key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def _unreachable(self, why) -> CacheUnreachable:
        return CacheUnreachable(self._redact(f"the build cache {self.url} is unreachable: {why}"))

    # -- requests --------------------------------------------------------------

    def _send(self, method: str, url: str, headers: dict, data: bytes | None,
              auth: str | None, limit: int | None = None) -> _Answer:
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        if auth:
            req.add_unredirected_header("Authorization", auth)
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                body = resp.read() if limit is None else resp.read(limit + 1)
                return _Answer(resp.status, resp.headers, body)
        except urllib.error.HTTPError as err:
            with err:
                body = err.read(64 * 1024) if err.fp else b""
            if err.code >= 500:
                raise self._unreachable(f"HTTP {err.code} for {method} "
                                        f"{urllib.parse.urlsplit(url).path}") from None
            return _Answer(err.code, err.headers, body)
        except urllib.error.URLError as err:
            why = err.reason
            raise self._unreachable(
                "connection refused" if isinstance(why, ConnectionRefusedError) else
                f"no answer within {self.timeout:g} s" if isinstance(why, TimeoutError) else
                f"TLS: {why}" if isinstance(why, ssl.SSLError | ssl.CertificateError) else
                why) from None
        except TimeoutError:
            raise self._unreachable(f"no answer within {self.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as err:
            raise self._unreachable(f"{type(err).__name__}: {err}") from None

    def _request(self, method: str, path: str, repo: str = "", headers=None,
                 data: bytes | None = None, limit: int | None = None) -> _Answer:
        url = path if "://" in path else self.base + path
        if urllib.parse.urlsplit(url).netloc != self.host:  # an upload elsewhere: no auth
            return self._send(method, url, dict(headers or {}), data, None, limit)
        headers = dict(headers or {})
        answer = self._send(method, url, headers, data, self._auth.get(repo), limit)
        if answer.status != 401:
            return answer
        header = answer.headers.get("WWW-Authenticate", "")
        self._auth[repo] = self._authorize(header, repo, method)
        answer = self._send(method, url, headers, data, self._auth[repo], limit)
        if answer.status == 401:
            raise CacheAuthError(self._redact(
                f"the build cache {self.url} refuses "
                + ("our credentials" if self._creds else "anonymous access")
                + f" for {method} {urllib.parse.urlsplit(url).path}"),
                hint=None if self._creds else
                "add credentials for this host to ~/.docker/config.json or $REGISTRY_AUTH_FILE")
        return answer

    def _basic(self) -> str:
        return "Basic " + base64.b64encode(":".join(self._creds).encode()).decode()

    def _authorize(self, header: str, repo: str, method: str) -> str:
        scheme, params = _challenge(header)
        if scheme == "basic":
            if not self._creds:
                raise CacheAuthError(
                    f"the build cache {self.url} needs credentials",
                    hint="add them for this host to ~/.docker/config.json or "
                         "$REGISTRY_AUTH_FILE")
            return self._basic()
        if scheme != "bearer" or not params.get("realm"):
            raise CacheError(f"the build cache {self.url} asks for an authentication we do "
                             f"not know: {scheme or 'none'}")
        scope = params.get("scope") or (
            f"repository:{repo}:" + ("pull" if method in ("GET", "HEAD") else "pull,push")
            if repo else "")
        query = {k: v for k, v in (("service", params.get("service")), ("scope", scope)) if v}
        realm = params["realm"]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        answer = self._send("GET", url, {"Accept": "application/json"}, None,
                            self._basic() if self._creds else None, limit=1 << 20)
        if answer.status != 200:
            raise CacheAuthError(self._redact(
                f"the token service of {self.url} answers HTTP {answer.status}"
                + (" to our credentials" if self._creds else " to anonymous access")))
        try:
            doc = json.loads(answer.body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise CacheAuthError(f"the token service of {self.url} sent no token")
        self._secrets.add(token)
        return "Bearer " + token

    def _fail(self, what: str, answer: _Answer) -> CacheError:
        detail = ""
        try:
            errors = json.loads(answer.body).get("errors") or []
            detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
        except (ValueError, AttributeError):
            pass
        return CacheError(self._redact(f"{self.url}: {what}: HTTP {answer.status}"
                                       + (f" ({detail[:300]})" if detail else "")))

    # -- the API ---------------------------------------------------------------

    def ping(self) -> None:
        """``CacheUnreachable`` unless ``/v2/`` answers 200 (or 401: it wants credentials)."""
        answer = self._send("GET", self.base + "/v2/", {}, None, None, limit=1 << 16)
        if answer.status not in (200, 401):
            raise self._unreachable(f"HTTP {answer.status} for /v2/ (not a registry?)")

    def repo(self, component: str) -> str:
        return repository(self.prefix, component)

    def exists(self, repo: str, tag: str) -> str | None:
        """The manifest digest of ``repo:tag``, or None."""
        answer = self._request("HEAD", f"/v2/{repo}/manifests/{tag}", repo,
                               {"Accept": MANIFEST_TYPE})
        if answer.status == 404:
            return None
        if answer.status != 200:
            raise self._fail(f"HEAD {repo}:{tag}", answer)
        return answer.headers.get("Docker-Content-Digest") or \
            sha256(self._manifest(repo, tag)[0])

    def _blob_exists(self, repo: str, digest: str) -> bool:
        answer = self._request("HEAD", f"/v2/{repo}/blobs/{digest}", repo)
        if answer.status in (200, 404):
            return answer.status == 200
        raise self._fail(f"HEAD blob {digest}", answer)

    def _upload(self, repo: str, data: bytes) -> dict:
        digest = sha256(data)
        if self._blob_exists(repo, digest):
            self.skipped += 1
            return {"digest": digest, "size": len(data)}
        answer = self._request("POST", f"/v2/{repo}/blobs/uploads/", repo, data=b"")
        location = answer.headers.get("Location") if answer.status == 202 else None
        if not location:
            raise self._fail(f"starting a blob upload to {repo}", answer)
        location = urllib.parse.urljoin(self.base + "/", location)
        url = location + ("&" if "?" in location else "?") + \
            urllib.parse.urlencode({"digest": digest})
        answer = self._request("PUT", url, repo, {"Content-Type": "application/octet-stream"},
                               data=data)
        if answer.status != 201:
            raise self._fail(f"uploading blob {digest} to {repo}", answer)
        self.uploaded += 1
        return {"digest": digest, "size": len(data)}

    def push(self, repo: str, tag: str, tree: Path, config: dict,
             annotations: dict[str, str],
             sign: Callable[[str], bytes] | None = None) -> str:
        """Push ``tree`` as ``repo:tag`` (blobs already there are not sent
        again); the manifest's digest.  With ``sign`` (the manifest digest
        -> an armored signature), the signature is made before anything is
        sent, and pushed before the artifact: no reader sees it unsigned."""
        if not _TAG_RE.match(tag):
            raise CacheError(f"{tag!r} is not a valid tag")
        config_bytes, layer = canonical(config), pack(tree)
        manifest = _manifest_of(CONFIG_TYPE, config_bytes, [(LAYER_TYPE, layer, {
            "org.opencontainers.image.title": repo.rsplit("/", 1)[-1] + ".tar.gz"})],
            annotations)
        digest = sha256(manifest)
        signature = sign(digest) if sign else None
        if signature is not None:
            self.push_signature(repo, digest, signature)
        self._upload(repo, config_bytes)
        self._upload(repo, layer)
        self._put_manifest(repo, tag, manifest)
        return digest

    def _put_manifest(self, repo: str, tag: str, manifest: bytes) -> None:
        answer = self._request("PUT", f"/v2/{repo}/manifests/{tag}", repo,
                               {"Content-Type": MANIFEST_TYPE}, data=manifest)
        if answer.status != 201:
            raise self._fail(f"pushing the manifest {repo}:{tag}", answer)
        digest, sent = sha256(manifest), answer.headers.get("Docker-Content-Digest")
        if sent and sent != digest:
            raise CacheCorrupt(f"{repo}:{tag}: the registry stored the manifest as {sent}, "
                               f"not {digest}")

    # -- signatures ------------------------------------------------------------

    def push_signature(self, repo: str, digest: str, signature: bytes) -> str:
        """Store ``signature`` (of the manifest ``digest``) beside it, as
        ``repo:sha256-<hex>.sig`` (cosign's tag: found without the OCI
        referrers API, which distribution 2.8 lacks): a manifest whose
        config names the digest signed and whose one layer is the armored
        signature.  Its digest."""
        config = canonical({"signed": digest, "format": "ssh-keygen -Y sign"})
        manifest = _manifest_of(SIGNATURE_CONFIG_TYPE, config, [(SIGNATURE_TYPE, signature, {
            "org.opencontainers.image.title": "signature"})],
            {ANNOTATION_PREFIX + "signed": digest})
        self._upload(repo, config)
        self._upload(repo, signature)
        self._put_manifest(repo, signature_tag(digest), manifest)
        return sha256(manifest)

    def signature(self, repo: str, digest: str) -> tuple[bytes, str | None] | None:
        """The armored signature stored for the manifest ``digest``, and the
        digest its config says it signs (the signature is what counts: the
        config only names another artifact in a refusal); None when there
        is none.  Verified against its digests like any pull."""
        what = f"{repo}:{signature_tag(digest)}"
        answer = self._request("GET", f"/v2/{repo}/manifests/{signature_tag(digest)}", repo,
                               {"Accept": MANIFEST_TYPE}, limit=MAX_MANIFEST)
        if answer.status == 404:
            return None
        if answer.status != 200:
            raise self._fail(f"GET manifest {what}", answer)
        body = answer.body
        sent = answer.headers.get("Docker-Content-Digest")
        if len(body) > MAX_MANIFEST or (sent and sent != sha256(body)):
            raise CacheCorrupt(f"{what}: the manifest is not {sent}; refused")
        try:
            manifest = json.loads(body)
            config_desc, layers = manifest["config"], manifest["layers"]
            ours = len(layers) == 1 and config_desc.get("mediaType") == SIGNATURE_CONFIG_TYPE \
                and layers[0].get("mediaType") == SIGNATURE_TYPE \
                and isinstance(layers[0].get("size"), int) \
                and layers[0]["size"] <= MAX_SIGNATURE
        except (ValueError, KeyError, TypeError, AttributeError):
            ours = False
        if not ours:
            raise CacheCorrupt(f"{what}: not a kata-passt-stack signature")
        try:
            claimed = json.loads(self._blob(repo, config_desc, what)).get("signed")
        except (ValueError, AttributeError):
            claimed = None
        return self._blob(repo, layers[0], what), claimed if isinstance(claimed, str) else None

    def _manifest(self, repo: str, ref: str) -> tuple[bytes, _Answer]:
        answer = self._request("GET", f"/v2/{repo}/manifests/{ref}", repo,
                               {"Accept": MANIFEST_TYPE}, limit=MAX_MANIFEST)
        if answer.status == 404:
            raise CacheError(f"{repo}:{ref} is not in the build cache {self.url}")
        if answer.status != 200:
            raise self._fail(f"GET manifest {repo}:{ref}", answer)
        if len(answer.body) > MAX_MANIFEST:
            raise CacheCorrupt(f"{repo}:{ref}: the manifest is over {MAX_MANIFEST} bytes")
        return answer.body, answer

    def _blob(self, repo: str, desc: dict, what: str) -> bytes:
        digest, size = desc.get("digest"), desc.get("size")
        if not isinstance(digest, str) or not digest.startswith("sha256:") \
                or not isinstance(size, int) or size < 0:
            raise CacheCorrupt(f"{what}: a descriptor without a sha256 digest and size")
        answer = self._request("GET", f"/v2/{repo}/blobs/{digest}", repo, limit=size)
        if answer.status != 200:
            raise self._fail(f"GET blob {digest}", answer)
        if len(answer.body) != size:
            raise CacheCorrupt(f"{what}: blob {digest} is not {size} bytes "
                               f"({len(answer.body)}{'+' * (len(answer.body) > size)}); refused")
        got = sha256(answer.body)
        if got != digest:
            raise CacheCorrupt(f"{what}: blob {digest} has the content of {got}; refused "
                               "(tampered or damaged in the registry)")
        return answer.body

    def pull(self, repo: str, tag: str, dest: Path, digest: str | None = None) -> dict:
        """Fetch ``repo:tag`` (the manifest ``digest`` when pinned), verify the
        manifest and every blob, then unpack the layer into ``dest``; the
        config.  Nothing is written to ``dest`` unless all of it verified."""
        what = f"{repo}:{tag}"
        body, answer = self._manifest(repo, digest or tag)
        got = sha256(body)
        expected = digest or answer.headers.get("Docker-Content-Digest")
        if expected and expected != got:
            raise CacheCorrupt(f"{what}: the manifest is {got}, not {expected}; refused")
        try:
            manifest = json.loads(body)
            config_desc, layers = manifest["config"], manifest["layers"]
            ours = manifest.get("schemaVersion") == 2 and len(layers) == 1 and \
                config_desc.get("mediaType") == CONFIG_TYPE and \
                layers[0].get("mediaType") == LAYER_TYPE
        except (ValueError, KeyError, TypeError, AttributeError):
            ours = False
        if not ours:
            raise CacheCorrupt(f"{what}@{got}: not a kata-passt-stack install artifact")
        config_bytes = self._blob(repo, config_desc, what)
        layer = self._blob(repo, layers[0], what)
        try:
            config = json.loads(config_bytes)
        except ValueError:
            raise CacheCorrupt(f"{what}: the config is not JSON") from None
        unpack(layer, dest)
        return config

