"""The operator's default image per engine: a setting (MLINFRA_ENGINE_IMAGES, the chart's engineImages),
used for managed stores that name no image of their own."""

from __future__ import annotations

import typing

import pytest
from chart_support import render as helm_render

from mlinfra import config
from mlinfra.api.datastore import DataStore, Engine
from mlinfra.engines import render

pytestmark = pytest.mark.unit


def store(engine: str = "redis", **managed: object) -> DataStore:
    return DataStore.model_validate(
        {
            "metadata": {"name": "kv", "namespace": "ml", "uid": "u", "generation": 1},
            "spec": {"engine": engine, "managed": {"replicas": 1, **managed}},
        }
    )


def test_the_setting_lists_every_engine_of_the_api() -> None:
    assert set(config.ENGINES) == set(typing.get_args(Engine))


def test_parse_engine_images() -> None:
    assert config.parse_engine_images("") == {}
    assert config.parse_engine_images(" redis=m.local/redis:{version} , postgres=m.local/pg:15 ") == {
        "redis": "m.local/redis:{version}",
        "postgres": "m.local/pg:15",
    }


@pytest.mark.parametrize("bad", ["redis", "mysql=x", "redis=", "=x", "redis=a b"])
def test_a_malformed_setting_is_refused_with_its_item(bad: str) -> None:
    with pytest.raises(ValueError, match="MLINFRA_ENGINE_IMAGES"):
        config.parse_engine_images(bad)


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLINFRA_ENGINE_IMAGES", "neo4j=local/neo4j:x")
    assert config.Settings.from_env().engine_images == {"neo4j": "local/neo4j:x"}


def test_image_precedence_spec_then_setting_then_public() -> None:
    defaults = {"redis": "mirror.local/redis:{version}"}
    assert render.image(store()) == "redis:7.2"
    assert render.image(store(), defaults) == "mirror.local/redis:7.2"
    assert render.image(store(version="7.0"), defaults) == "mirror.local/redis:7.0"
    assert render.image(store(image="mine/redis:1"), defaults) == "mine/redis:1"
    assert render.image(store("postgres"), defaults) == "postgres:15"  # not overridden
    [sts] = [o for o in render.render_managed(store(), defaults) if o["kind"] == "StatefulSet"]
    assert {c["image"] for c in sts["spec"]["template"]["spec"]["containers"]} == {"mirror.local/redis:7.2"}


def operator_env(*sets: str) -> dict[str, str]:
    [deploy] = [d for d in helm_render(*sets) if d["kind"] == "Deployment"]
    return {e["name"]: e.get("value", "") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_the_chart_passes_engine_images_to_the_operator() -> None:
    assert "MLINFRA_ENGINE_IMAGES" not in operator_env()
    env = operator_env("engineImages.redis=m/redis:{version}", "engineImages.postgres=m/pg:15")
    parsed = config.parse_engine_images(env["MLINFRA_ENGINE_IMAGES"])
    assert parsed == {"redis": "m/redis:{version}", "postgres": "m/pg:15"}
