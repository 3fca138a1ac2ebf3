"""The upstreams file, read (`tokenrelay.upstreams.config.load`, and the model check
`gateway.prepare` adds): a good file in TOML and in YAML gives the same pool, and each
mistake is refused with the exact message, naming the file and the field, in either
format — never with a key in it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import ROOT
from tests.support.docs import code_block
from tests.support.pool import toml_value
from tokenrelay.config import Settings
from tokenrelay.gateway import prepare
from tokenrelay.upstreams.config import (
    DeploymentConfig,
    PoolConfig,
    UpstreamsConfigError,
    load,
)

SECRET = "sk-ant-config-test-4f1c9a7e2b"
ENV = {"KEY_EAST": SECRET, "KEY_WEST": "sk-ant-config-test-west-77d0"}


def toml_of(doc: dict[str, Any]) -> str:
    """`doc` ({"pool": {…}, "deployment": [{…}], "fallbacks": {…}}) as TOML."""
    lines: list[str] = []
    if "pool" in doc:
        lines += ["[pool]", *(f"{k} = {toml_value(v)}" for k, v in doc["pool"].items())]
    if doc.get("deployment") == []:
        lines.append("deployment = []")
    for entry in doc.get("deployment", []):
        lines += ["[[deployment]]", *(f"{k} = {toml_value(v)}" for k, v in entry.items())]
    if "fallbacks" in doc:
        lines.append("[fallbacks]")
        lines += [f"{toml_value(m)} = {toml_value(c)}" for m, c in doc["fallbacks"].items()]
    return "\n".join(lines) + "\n"


@pytest.fixture(params=["toml", "yaml"])
def write(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Writes a document as an upstreams file of the format under test; its path."""

    def write_doc(doc: dict[str, Any]) -> Path:
        path = tmp_path / f"upstreams.{request.param}"
        text = toml_of(doc) if request.param == "toml" else yaml.safe_dump(doc)
        path.write_text(text)
        return path

    return write_doc


def east(**fields: Any) -> dict[str, Any]:
    return {"name": "east", "base_url": "https://east.example", "api_key_env": "KEY_EAST",
            **fields}  # fmt: skip


def west(**fields: Any) -> dict[str, Any]:
    return {"name": "west", "base_url": "http://127.0.0.1:9", "api_key_env": "KEY_WEST", **fields}


def refused(path: Path, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(UpstreamsConfigError) as caught:
        load(path, ENV if environ is None else environ)
    message = str(caught.value)
    assert SECRET not in message
    return message


def test_a_good_file_is_the_pool_it_describes(write: Any, tmp_path: Path) -> None:
    key_file = tmp_path / "west.key"
    key_file.write_text("sk-ant-from-a-file\n")
    path = write({
        "pool": {"cooldown_base_s": 0.5, "cooldown_max_s": 20, "fallback_mid_answer": True},
        "deployment": [
            east(weight=3, models=["claude-sonnet-4-6", "claude-haiku-4-5"], rpm=4000),
            {"name": "west", "base_url": "http://127.0.0.1:9", "api_key_file": str(key_file),
             "tpm": 90000},
        ],
        "fallbacks": {"claude-sonnet-4-6": ["claude-haiku-4-5"]},
    })  # fmt: skip
    assert load(path, ENV) == PoolConfig(
        (
            DeploymentConfig(
                "east",
                "anthropic",
                "https://east.example",
                "env:KEY_EAST",
                SECRET,
                3.0,
                frozenset({"claude-sonnet-4-6", "claude-haiku-4-5"}),
                4000,
                0,
            ),
            DeploymentConfig(
                "west",
                "anthropic",
                "http://127.0.0.1:9",
                f"file:{key_file}",
                "sk-ant-from-a-file",
                1.0,
                frozenset(),
                0,
                90000,
            ),
        ),
        {"claude-sonnet-4-6": ("claude-haiku-4-5",)},
        cooldown_base_s=0.5,
        cooldown_max_s=20.0,
        fallback_mid_answer=True,
        source=str(path),
    )
    # The key is in the config, for the provider, and never in what is printed of it.
    assert SECRET not in repr(load(path, ENV))


def test_a_key_written_in_the_file_is_refused_without_repeating_it(write: Any) -> None:
    path = write({"deployment": [{**east(), "api_key": SECRET}]})
    assert refused(path) == (
        f"{path}: deployment 'east': a key is never written in the file: name where it is "
        "with api_key_env (an environment variable) or api_key_file"
    )
    path = write({"deployment": [{"name": "east", "key": SECRET}]})
    assert refused(path).startswith(f"{path}: deployment 'east': a key is never written")


def test_a_key_in_the_base_url_is_refused_without_repeating_it(write: Any) -> None:
    path = write({"deployment": [east(base_url=f"https://user:{SECRET}@east.example")]})
    assert refused(path) == (
        f"{path}: deployment 'east'.base_url: must not hold credentials (user:password@): "
        "name the key with api_key_env or api_key_file"
    )


def test_a_missing_or_empty_key_variable(write: Any) -> None:
    path = write({"deployment": [east(), west()]})
    assert refused(path, {"KEY_EAST": SECRET}) == (
        f"{path}: deployment 'west': environment variable KEY_WEST is not set"
    )
    assert refused(path, {"KEY_EAST": SECRET, "KEY_WEST": ""}) == (
        f"{path}: deployment 'west': environment variable KEY_WEST is not set"
    )


def test_a_key_file_that_cannot_be_read_or_is_empty(write: Any, tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    path = write({"deployment": [{"name": "east", "api_key_file": str(missing)}]})
    assert refused(path) == (
        f"{path}: deployment 'east': cannot read api_key_file: No such file or directory"
    )
    empty = tmp_path / "empty.key"
    empty.write_text("\n")
    path = write({"deployment": [{"name": "east", "api_key_file": str(empty)}]})
    assert refused(path) == f"{path}: deployment 'east': api_key_file is empty"


def test_exactly_one_key_source(write: Any, tmp_path: Path) -> None:
    path = write({"deployment": [{"name": "east"}]})
    assert refused(path) == (
        f"{path}: deployment 'east': needs exactly one of api_key_env and api_key_file"
    )
    path = write({"deployment": [east(api_key_file=str(tmp_path / "k"))]})
    assert refused(path) == (
        f"{path}: deployment 'east': needs exactly one of api_key_env and api_key_file"
    )


def test_duplicate_names(write: Any) -> None:
    path = write({"deployment": [east(), west(), east(base_url="https://again.example")]})
    assert refused(path) == f"{path}: deployment names must differ: east"


@pytest.mark.parametrize(
    "url", ["localhost:8080", "ftp://east.example", "https://", "east.example/v1", "http://[::1"]
)
def test_a_bad_url(write: Any, url: str) -> None:
    path = write({"deployment": [east(base_url=url)]})
    assert refused(path) == (
        f"{path}: deployment 'east'.base_url: must be an http:// or https:// URL with a host"
    )


@pytest.mark.parametrize(
    ("weight", "why"),
    [(0, "Input should be greater than 0"), (-2, "Input should be greater than 0"),
     ("heavy", "Input should be a valid number, unable to parse string as a number")],
)  # fmt: skip
def test_a_bad_weight(write: Any, weight: Any, why: str) -> None:
    path = write({"deployment": [east(), west(weight=weight)]})
    assert refused(path) == f"{path}: deployment 'west'.weight: {why}"


def test_fields_are_named_where_a_reader_finds_them(write: Any) -> None:
    path = write({"deployment": [east(wieght=2), {"base_url": "https://x.example"}]})
    assert refused(path) == (
        f"{path}: deployment 'east'.wieght: Extra inputs are not permitted; "
        f"deployment #2.name: Field required"
    )
    path = write({"deployment": []})
    assert (
        refused(path)
        == f"{path}: deployment: List should have at least 1 item after validation, not 0"
    )
    path = write({"deployment": [east(name="east coast")]})
    assert refused(path) == (
        f"{path}: deployment 'east coast'.name: String should match pattern '^[A-Za-z0-9_.-]+$'"
    )


def test_a_fallback_to_a_model_no_deployment_serves(write: Any) -> None:
    path = write({
        "deployment": [east(models=["claude-sonnet-4-6"]), west(models=["claude-sonnet-4-6"])],
        "fallbacks": {"claude-sonnet-4-6": ["claude-haiku-4-5"]},
    })  # fmt: skip
    assert (
        refused(path)
        == f"{path}: fallbacks.claude-sonnet-4-6: no deployment serves claude-haiku-4-5"
    )
    path = write({
        "deployment": [east(models=["claude-haiku-4-5"])],
        "fallbacks": {"claude-sonnet-4-6": ["claude-haiku-4-5"]},
    })  # fmt: skip
    assert (
        refused(path)
        == f"{path}: fallbacks.claude-sonnet-4-6: no deployment serves claude-sonnet-4-6"
    )
    path = write({"deployment": [east()], "fallbacks": {"claude-haiku-4-5": ["claude-haiku-4-5"]}})
    assert refused(path) == f"{path}: fallbacks.claude-haiku-4-5: falls back to itself"


def test_an_unknown_model_is_refused_at_start(write: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`gateway.prepare`, which `tokenrelay serve` runs before it listens, checks each
    deployment's models against the price table."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    path = write({"deployment": [east(), west(models=["claude-haiku-4-5", "claude-sonet-4-6"])]})
    with pytest.raises(UpstreamsConfigError) as caught:
        prepare(Settings(upstreams_file=path))
    assert str(caught.value) == (
        f"{path}: deployment 'west': unknown model claude-sonet-4-6 (not in the price table)"
    )
    path = write({"deployment": [east()], "fallbacks": {"claude-haiku-4-5": ["claude-haiku-9"]}})
    with pytest.raises(UpstreamsConfigError) as caught:
        prepare(Settings(upstreams_file=path))
    assert str(caught.value) == (
        f"{path}: fallbacks.claude-haiku-4-5: unknown model claude-haiku-9 (not in the price table)"
    )
    prepared = prepare(Settings(upstreams_file=write({"deployment": [east(), west()]})))
    assert [d.name for d in prepared.upstreams.deployments] == ["east", "west"]


def test_a_syntax_error_says_where_and_never_quotes_the_line(tmp_path: Path) -> None:
    """PyYAML would quote the line it stopped at: here, a key written inline."""
    path = tmp_path / "upstreams.yaml"
    path.write_text(f"deployment:\n  - name: east\n    api_key: {SECRET}: oops\n")
    assert refused(path) == (
        f"{path}: not valid YAML: mapping values are not allowed here (at line 3, column 43)"
    )
    path = tmp_path / "upstreams.toml"
    path.write_text(f'[[deployment]]\nname = "east"\napi_key = {SECRET}\n')
    assert refused(path) == f"{path}: not valid TOML: Invalid value (at line 3, column 11)"
    path = tmp_path / "upstreams.yml"
    path.write_text("- east\n- west\n")
    assert refused(path) == f"{path}: expected a table of [[deployment]] entries"
    assert refused(tmp_path / "absent.toml") == (
        f"{tmp_path / 'absent.toml'}: cannot read: No such file or directory"
    )


def test_the_worked_example_of_operations_md_is_one_pool_in_toml_and_yaml(
    tmp_path: Path,
) -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text[text.index("\n## Upstream pool\n") : text.index("\n## Metrics\n")]
    key_file = tmp_path / "west.key"
    key_file.write_text("sk-ant-west-from-a-file\n")
    environ = {"ANTHROPIC_KEY_EAST": SECRET}
    pools = []
    for language in ("toml", "yaml"):
        path = tmp_path / f"upstreams.{language}"
        example = code_block(section, language)
        path.write_text(example.replace("/run/secrets/anthropic-west", str(key_file)))
        pools.append(dataclasses.replace(load(path, environ), source=""))
    assert pools[0] == pools[1]
    east, west = pools[0].deployments
    assert (east.name, east.weight, sorted(east.models), east.key_source) == (
        "east", 3.0, ["claude-haiku-4-5", "claude-sonnet-4-6"], "env:ANTHROPIC_KEY_EAST"
    )  # fmt: skip
    assert (west.name, west.api_key, west.rpm, west.models) == (
        "west", "sk-ant-west-from-a-file", 600, frozenset()
    )  # fmt: skip
    assert pools[0].fallbacks == {"claude-sonnet-4-6": ("claude-sonnet-4-5", "claude-haiku-4-5")}
