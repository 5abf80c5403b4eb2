"""A real registry for the tests: Debian's ``docker-registry`` (distribution
2.8), on 127.0.0.1 only, storing under the test's tmp dir.

``LocalRegistry(folder).start()`` writes a config, starts ``docker-registry
serve CONFIG`` through ``tasks.run.start`` (the one place that starts
processes), waits until ``/v2/`` answers, and ``stop()`` ends it by its pid
(SIGTERM, then SIGKILL).  With ``users`` it uses htpasswd auth (bcrypt
hashes made by apache2-utils' ``htpasswd -B``).
"""

from __future__ import annotations

import shutil
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from tasks import run

BINARY = "docker-registry"


def available() -> bool:
    return shutil.which(BINARY) is not None


def htpasswd_available() -> bool:
    return shutil.which("htpasswd") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRegistry:
    def __init__(self, folder: Path, users: dict[str, str] | None = None):
        self.folder = folder
        self.users = users or {}
        self.storage = folder / "storage"
        self.log = folder / "registry.log"
        self.port = 0
        self.proc = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, prefix: str = "team/kps") -> str:
        return f"oci://{self.host}/{prefix}"

    def blob_file(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes."""
        hexd = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"

    def _config(self) -> Path:
        auth = ""
        if self.users:
            lines = []
            for user, password in self.users.items():
                out = run.capture(["htpasswd", "-nbB", user, password]).strip()
                lines.append(out)
            passwd = self.folder / "htpasswd"
            passwd.write_text("\n".join(lines) + "\n")
            auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {passwd}\n"
        config = self.folder / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.storage}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n" + auth)
        return config

    def start(self, wait: float = 20) -> LocalRegistry:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc = run.start([BINARY, "serve", str(self._config())], log=self.log)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{BINARY} exited with {self.proc.returncode}: "
                                   f"{self.log.read_text()[-2000:]}")
            try:
                with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                        f"http://{self.host}/v2/", timeout=1):
                    return self
            except urllib.error.HTTPError as err:
                err.close()
                if err.code == 401:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{BINARY} did not answer on {self.host} within {wait} s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        run.stop(lambda sig: run.kill(proc.pid, sig), lambda: proc.poll() is not None,
                 grace=5)
        if proc.poll() is None:  # pragma: no cover - SIGKILL did not take
            run.kill(proc.pid, signal.SIGKILL)
        proc.wait()
