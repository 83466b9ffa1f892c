"""The JSON Schema of innerloop.yaml: generated from the models, shipped in the repository."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from innerloop.config.schema import SCHEMA_DIALECT, json_schema, json_schema_text, packaged_schema_text

REPOSITORY = Path(__file__).resolve().parents[3]
SHIPPED = REPOSITORY / "src" / "innerloop" / "config" / "innerloop.schema.json"  # in the wheel
LINKED = REPOSITORY / "schema" / "innerloop.schema.json"  # what examples/ and checkouts point at
REGENERATE = ".venv/bin/innerloop schema > schema/innerloop.schema.json"


def objects(schema: Any) -> list[dict[str, Any]]:
    """Every object schema in the document (models and nested mappings)."""
    found = []
    if isinstance(schema, dict):
        if schema.get("type") == "object":
            found.append(schema)
        for value in schema.values():
            found += objects(value)
    elif isinstance(schema, list):
        for value in schema:
            found += objects(value)
    return found


def test_the_shipped_schema_is_the_generated_one() -> None:
    assert SHIPPED.read_text(encoding="utf-8") == json_schema_text(), (
        f"{SHIPPED} is out of date with the models; regenerate it with: {REGENERATE}"
    )
    assert packaged_schema_text() == json_schema_text()  # what `innerloop init` copies into a project


def test_the_repository_copy_is_the_packaged_file() -> None:
    # One file, two names: regenerating through either updates both.
    assert LINKED.resolve() == SHIPPED.resolve()


def test_header() -> None:
    schema = json_schema()
    assert list(schema)[:4] == ["$schema", "$id", "title", "description"]
    assert schema["$schema"] == SCHEMA_DIALECT == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].startswith("urn:innerloop:")
    assert schema["title"] == "innerloop.yaml"
    assert schema["required"] == ["version", "name", "services"]


def test_text_is_two_space_json_with_a_trailing_newline() -> None:
    text = json_schema_text()
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert text.splitlines()[1].startswith('  "$schema"')
    assert json.loads(text) == json_schema()


def test_keys_are_in_the_yaml_spelling() -> None:
    defs = json_schema()["$defs"]
    service = defs["Service"]["properties"]
    assert {"dependsOn", "onChange"} <= set(service)
    assert not {"depends_on", "on_change"} & set(service)
    assert "buildArgs" in defs["Image"]["properties"]
    assert "set" in defs["Helm"]["properties"]


def test_every_model_forbids_unknown_keys() -> None:
    defs = json_schema()["$defs"]
    assert set(defs) == {
        "Alerts",
        "ChangeStep",
        "Debug",
        "CustomBuild",
        "Helm",
        "Image",
        "Intercept",
        "Manifests",
        "PortForward",
        "Preview",
        "Registry",
        "Service",
        "SyncRule",
    }
    for name, model in defs.items():
        assert model["additionalProperties"] is False, name
    assert json_schema()["additionalProperties"] is False
    assert json_schema()["properties"]["services"]["additionalProperties"] is False


def test_every_field_has_hover_text() -> None:
    schema = json_schema()
    for model in [schema, *schema["$defs"].values()]:
        assert model.get("description"), model.get("title")
        for name, field in model["properties"].items():
            assert field.get("description"), name


def test_optional_fields_are_not_nullable_for_editors() -> None:
    assert '"null"' not in json_schema_text()


def test_exactly_one_manifest_source_is_expressed() -> None:
    manifests = json_schema()["$defs"]["Manifests"]
    assert (manifests["minProperties"], manifests["maxProperties"]) == (1, 1)
    assert set(manifests["properties"]) == {"files", "kustomize", "helm"}


def test_constraints_editors_can_check() -> None:
    defs = json_schema()["$defs"]
    remote = defs["PortForward"]["properties"]["remote"]["anyOf"]
    assert remote[0] == {"type": "integer", "minimum": 1, "maximum": 65535}
    assert remote[1]["type"] == "string"
    assert defs["SyncRule"]["properties"]["remote"]["pattern"] == "^/"
    assert defs["SyncRule"]["properties"]["mode"]["enum"] == ["one-way", "two-way"]
    assert defs["Service"]["properties"]["restart"]["enum"] == ["process", "none"]
    assert json_schema()["properties"]["version"]["const"] == 1
    assert json_schema()["properties"]["services"]["minProperties"] == 1
