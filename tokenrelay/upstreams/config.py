"""The upstream pool's configuration: the deployments, and each model's fallbacks.

From a TOML or YAML file (`TOKENRELAY_UPSTREAMS_FILE`), or, without one, the single
deployment the settings describe (`ANTHROPIC_API_KEY` and `ANTHROPIC_BASE_URL`, or the
built-in simulator). A deployment's key is never in the file itself: it names the
variable or the file that holds it, so the file can be committed and shown.

    [pool]                      # optional
    cooldown_base_s = 1         # first back-off without a retry-after, doubled per failure
    cooldown_max_s = 60
    fallback_mid_answer = false # true: a model may change mid-answer, after a `reset`

    [[deployment]]
    name = "east"
    base_url = "https://api.anthropic.com"
    api_key_env = "ANTHROPIC_KEY_EAST"     # or api_key_file = "/run/secrets/east"
    weight = 3
    models = ["claude-sonnet-4-6", "claude-haiku-4-5"]   # omitted: every model
    rpm = 4000                              # optional, this gateway's own cap (0 = none)
    tpm = 0

    [fallbacks]
    "claude-sonnet-4-6" = ["claude-sonnet-4-5", "claude-haiku-4-5"]
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tokenrelay.config import Settings
from tokenrelay.pricing import ModelTable

Kind = Literal["anthropic", "simulator"]


class UpstreamsConfigError(ValueError):
    """An upstreams file that cannot work; the message says where and why."""


class _DeploymentModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Kind = "anthropic"
    base_url: str | None = None
    api_key_env: str | None = None
    api_key_file: Path | None = None
    weight: float = Field(default=1.0, gt=0)
    models: list[str] = Field(default_factory=list)
    rpm: int = Field(default=0, ge=0)
    tpm: int = Field(default=0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _no_inline_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("api_key" in data or "key" in data):
            raise ValueError(
                "a key is never written in the file: name where it is with api_key_env "
                "(an environment variable) or api_key_file"
            )
        return data

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            parts = urlsplit(value)
            url = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:  # a malformed host, e.g. an unclosed [IPv6
            url = False
        if not url:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            # A URL is shown (GET /api/upstreams, logs): credentials in it are a key inline.
            raise ValueError(
                "must not hold credentials (user:password@): name the key with api_key_env "
                "or api_key_file"
            )
        return value

    @model_validator(mode="after")
    def _key_source(self) -> _DeploymentModel:
        if self.kind == "anthropic" and (self.api_key_env is None) == (self.api_key_file is None):
            raise ValueError("needs exactly one of api_key_env and api_key_file")
        return self


class _PoolModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cooldown_base_s: float = Field(default=1.0, gt=0)
    cooldown_max_s: float = Field(default=60.0, gt=0)
    fallback_mid_answer: bool = False


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pool: _PoolModel = Field(default_factory=_PoolModel)
    deployment: list[_DeploymentModel] = Field(min_length=1)
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeploymentConfig:
    name: str
    kind: Kind
    base_url: str | None
    # Where the key comes from, as shown anywhere: "env:NAME", "file:PATH", or "".
    key_source: str
    api_key: str | None = field(repr=False)  # the secret itself: never logged or shown
    weight: float = 1.0
    models: frozenset[str] = frozenset()  # empty: every model
    rpm: int = 0
    tpm: int = 0

    def serves(self, model: str) -> bool:
        return not self.models or model in self.models


@dataclass(frozen=True, slots=True)
class PoolConfig:
    deployments: tuple[DeploymentConfig, ...]
    fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    cooldown_base_s: float = 1.0
    cooldown_max_s: float = 60.0
    fallback_mid_answer: bool = False
    source: str = "settings"  # the file it came from, for messages


def load(path: Path, environ: Mapping[str, str] | None = None) -> PoolConfig:
    """The pool a file describes; UpstreamsConfigError naming the file and the field."""
    env = os.environ if environ is None else environ
    try:
        text = path.read_text()
    except OSError as exc:
        raise UpstreamsConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        yaml_file = path.suffix in (".yaml", ".yml")
        raw = yaml.safe_load(text) if yaml_file else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise UpstreamsConfigError(f"{path}: not valid {_format(path)}: {_syntax(exc)}") from None
    if not isinstance(raw, dict):
        raise UpstreamsConfigError(f"{path}: expected a table of [[deployment]] entries")
    try:
        parsed = _FileModel.model_validate(raw)
    except ValidationError as exc:
        raise UpstreamsConfigError(f"{path}: {_describe(exc, raw)}") from None
    deployments = tuple(_deployment(d, path, env) for d in parsed.deployment)
    _check(deployments, parsed.fallbacks, path)
    return PoolConfig(
        deployments,
        {model: tuple(chain) for model, chain in parsed.fallbacks.items()},
        cooldown_base_s=parsed.pool.cooldown_base_s,
        cooldown_max_s=parsed.pool.cooldown_max_s,
        fallback_mid_answer=parsed.pool.fallback_mid_answer,
        source=str(path),
    )


def from_settings(settings: Settings, environ: Mapping[str, str] | None = None) -> PoolConfig:
    """The pool the settings describe: the upstreams file, or the one deployment."""
    if settings.upstreams_file is not None:
        return load(settings.upstreams_file, environ)
    if settings.resolved_provider() == "simulator":
        only = DeploymentConfig("simulator", "simulator", None, "", None)
    else:
        key = settings.anthropic_api_key
        secret = key.get_secret_value() if key is not None else None
        if not secret:  # found at start, not when the first request needs it
            raise UpstreamsConfigError(
                "--provider anthropic needs ANTHROPIC_API_KEY (or --provider simulator)"
            )
        only = DeploymentConfig(
            "default", "anthropic", settings.anthropic_base_url, "env:ANTHROPIC_API_KEY", secret
        )
    # One deployment cools down as the retries back off: a retry is its probe.
    return PoolConfig(
        (only,),
        cooldown_base_s=settings.retry_base_delay,
        cooldown_max_s=max(settings.retry_max_delay, settings.retry_base_delay),
    )


def _syntax(exc: Exception) -> str:
    """What is wrong and where, never the text there: PyYAML quotes the line it stopped
    at, which may be a key someone wrote inline."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        if mark is None:
            return problem
        return f"{problem} (at line {mark.line + 1}, column {mark.column + 1})"
    if isinstance(exc, yaml.YAMLError):
        return "syntax error"
    return str(exc)  # tomllib's messages say where, never what is there


def check_models(pool: PoolConfig, known: ModelTable) -> None:
    """Every model a deployment serves or a fallback names is in the price table (else
    its calls would cost nothing in the ledger and the budgets)."""
    for d in pool.deployments:
        unknown = sorted(m for m in d.models if m not in known)
        if unknown:
            raise UpstreamsConfigError(
                f"{pool.source}: deployment {d.name!r}: unknown model {', '.join(unknown)} "
                "(not in the price table)"
            )
    for model, chain in pool.fallbacks.items():
        unknown = sorted(m for m in (model, *chain) if m not in known)
        if unknown:
            raise UpstreamsConfigError(
                f"{pool.source}: fallbacks.{model}: unknown model {', '.join(unknown)} "
                "(not in the price table)"
            )


def _format(path: Path) -> str:
    return "YAML" if path.suffix in (".yaml", ".yml") else "TOML"


def _describe(exc: ValidationError, raw: dict[str, Any]) -> str:
    """Pydantic's errors, each at a path a reader finds in the file
    (deployment "east".weight rather than deployment.0.weight)."""
    lines = []
    for error in exc.errors():
        where = [str(part) for part in error["loc"]]
        if len(where) >= 2 and where[0] == "deployment" and where[1].isdigit():
            entry = (raw.get("deployment") or [])[int(where[1])]
            name = entry.get("name") if isinstance(entry, dict) else None
            where[:2] = [f"deployment {name!r}" if name else f"deployment #{int(where[1]) + 1}"]
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{'.'.join(where) or 'file'}: {message}")
    return "; ".join(lines)


def _deployment(d: _DeploymentModel, path: Path, env: Mapping[str, str]) -> DeploymentConfig:
    key: str | None = None
    source = ""
    if d.api_key_env is not None:
        source = f"env:{d.api_key_env}"
        key = env.get(d.api_key_env)
        if not key:
            raise UpstreamsConfigError(
                f"{path}: deployment {d.name!r}: environment variable {d.api_key_env} is not set"
            )
    elif d.api_key_file is not None:
        source = f"file:{d.api_key_file}"
        try:
            key = d.api_key_file.read_text().strip()
        except OSError as exc:
            raise UpstreamsConfigError(
                f"{path}: deployment {d.name!r}: cannot read api_key_file: {exc.strerror}"
            ) from None
        if not key:
            raise UpstreamsConfigError(f"{path}: deployment {d.name!r}: api_key_file is empty")
    return DeploymentConfig(
        d.name, d.kind, d.base_url, source, key, d.weight, frozenset(d.models), d.rpm, d.tpm
    )


def _check(
    deployments: tuple[DeploymentConfig, ...], fallbacks: dict[str, list[str]], path: Path
) -> None:
    names = [d.name for d in deployments]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UpstreamsConfigError(f"{path}: deployment names must differ: {', '.join(twice)}")
    for model, chain in fallbacks.items():
        if model in chain:
            raise UpstreamsConfigError(f"{path}: fallbacks.{model}: falls back to itself")
        for target in (model, *chain):
            if not any(d.serves(target) for d in deployments):
                raise UpstreamsConfigError(
                    f"{path}: fallbacks.{model}: no deployment serves {target}"
                )
