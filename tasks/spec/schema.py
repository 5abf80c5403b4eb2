"""stack.yaml as written: the pydantic models.

As in copier, these mirror the file exactly (``extra="forbid"``, so a typo
is an error, not a silently ignored key) and are separate from what the
code uses at run time (``tasks/model.py``); ``resolve.py`` turns one into
the other.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WrapValidator,
)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
PART_RE = NAME_RE
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_ENV = ("SRC", "DESTDIR", "PREFIX", "JOBS")
BOOL_HINT = "YAML reads yes/no/on/off/true/false as a boolean: quote the value"


# --------------------------------------------------------------------------
# The file, as written


def _as_list(value):
    """``build: make`` means ``build: [make]``."""
    if isinstance(value, str):
        return [value]
    return value


def _patch_entry(value):
    if isinstance(value, str):
        return {"path": value}
    return value


def _env_value(value):
    if isinstance(value, bool):
        raise ValueError(BOOL_HINT)
    if value is None:
        raise ValueError("empty value: write '' for an empty string")
    if isinstance(value, (int, float)):
        return str(value)
    return value


def _either(message: str) -> WrapValidator:
    """One line for a union that fails: pydantic would report each member
    apart (``submodules.bool: ...`` and ``submodules: ...``)."""
    def validate(value, handler):
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(message + got(value)) from None
    return WrapValidator(validate)


Commands = Annotated[tuple[str, ...], BeforeValidator(_as_list)]
EnvValue = Annotated[str, BeforeValidator(_env_value)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class PatchEntry(_Strict):
    path: str = Field(min_length=1)
    component: str | None = None


class PartFile(_Strict):
    build: Commands = ()
    artifacts: tuple[str, ...] = ()
    install: Commands = ()
    installs: tuple[str, ...] = ()
    env: dict[str, EnvValue] = {}
    requires: tuple[str, ...] = ()  # prerequisites checked by 'doit check'


class ComponentFile(PartFile):
    git: str = Field(min_length=1)
    ref: str = Field(min_length=1)
    submodules: Annotated[bool | tuple[str, ...],
                          _either("must be true, false or a list of submodule paths")] = False
    depth: int = Field(0, ge=0)
    patches: tuple[Annotated[PatchEntry, BeforeValidator(_patch_entry)], ...] = ()
    needs: tuple[str, ...] = ()
    parts: dict[str, PartFile] | None = None


class CacheFile(_Strict):
    """``settings.cache``: a shared build cache on an OCI registry."""
    url: str = Field(min_length=1)  # oci://host[:port]/repo/prefix (checked in resolve)
    push: bool = False
    plain_http: bool = False
    sign_key: str | None = Field(None, min_length=1)  # signs what is pushed (checked in resolve)
    trust: str | None = Field(None, min_length=1)  # allowed signers of what is pulled


class SettingsFile(_Strict):
    workdir: str = Field("build", min_length=1)
    destdir: str = ""
    prefix: str = "/usr/local"
    sudo: Literal["auto", "never"] = "auto"
    jobs: int = Field(0, ge=0)
    cache: CacheFile | None = None


def _version(value):
    if value != 1:
        raise ValueError(f"unsupported version {value}: this tool reads version 1")
    return value


class ImageFile(_Strict):
    builder: str = "mbuto"
    profile: str = "kata"
    output: str = Field("build/kata.img", min_length=1)
    compression: Literal["none", "gzip", "lz4", "lzma", "lzo", "auto"] = "lz4"
    kernel: str = Field("auto", min_length=1)
    modules_root: str = Field("/", min_length=1)
    add: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()


class ConfigFile(_Strict):
    path: str = Field(min_length=1)
    format: Literal["toml", "json", "yaml"]
    base: str | None = None
    set: dict[str, Any] = {}
    unset: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    create_only: bool = False  # write it only when the file does not exist yet


class PodFile(_Strict):
    runtime: str = Field("kata", min_length=1)
    image: str = Field("docker.io/library/busybox:latest", min_length=1)
    command: tuple[str, ...] = ("sleep", "6000")
    pod_config: str = "configs/pod-config.json"
    container_config: str = "configs/container-busybox.json"
    crio_args: tuple[str, ...] = ("--log-level", "debug")
    ping: bool = True
    socket: str = "/var/run/crio/crio.sock"
    start_timeout: int = Field(60, gt=0)


def _smoke_command(value):
    """``- make check`` means ``- {run: make check}``."""
    if isinstance(value, str):
        return {"run": value}
    return value


def _pod_check(value):
    """``run_pod: true`` means ``run_pod: {}``; false drops it."""
    if value is True:
        return {}
    if value is False:
        return None
    return value


Expect = Annotated[tuple[Annotated[str, Field(min_length=1)], ...], BeforeValidator(_as_list)]


class SmokeCommandFile(_Strict):
    run: str = Field(min_length=1)
    expect: Expect = ()


class SmokePodFile(_Strict):
    expect: Expect = ()  # what the container's `ip addr show` must print


class SmokeFile(_Strict):
    """``smoke``: the stack's end-to-end check (``doit smoke``)."""
    image_boot: bool = False
    run_pod: Annotated[SmokePodFile | None, BeforeValidator(_pod_check)] = None
    commands: tuple[Annotated[SmokeCommandFile, BeforeValidator(_smoke_command)], ...] = ()
    timeout: int = Field(600, gt=0)


class DebugFile(_Strict):
    qemu_log: bool = False
    agent_debug_console: bool = False


class StackFile(_Strict):
    version: Annotated[int, AfterValidator(_version)]
    settings: SettingsFile = SettingsFile()
    components: dict[str, ComponentFile] = Field(min_length=1)
    image: ImageFile | None = None
    configs: dict[str, ConfigFile] = {}
    pod: PodFile | None = None
    debug: DebugFile = DebugFile()
    smoke: SmokeFile | None = None


def got(value) -> str:
    """`` (got ...)`` for a message about a value of the wrong shape."""
    if isinstance(value, dict):
        return " (got a mapping)"
    if isinstance(value, list):
        return " (got a list)"
    return f" (got {value!r})"
