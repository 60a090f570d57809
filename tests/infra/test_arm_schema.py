"""infra/ against the resource providers' schemas (see arm_schema.py for how the check works).

The negative tests copy infra/ to a temporary folder, break one thing the way a person would, and
assert that the checker reports exactly that one thing, naming the resource, the path and the API version.
"""

from __future__ import annotations

import importlib
import re
import shutil
from pathlib import Path

import pytest

from tests.infra.arm_schema import SCHEMAS, Problem, Schema, check_templates, model_class, wire_tree

INFRA = Path(__file__).resolve().parents[2] / "infra"


def test_every_template_matches_its_resource_providers_schema() -> None:
    problems = check_templates(INFRA)
    assert not problems, "\n".join(str(p) for p in problems)


def sdk_api_version(schema: Schema) -> str:
    """The API version a models module carries: from its package name, or from the file the schema names."""
    match = re.search(r"\.v(\d{4})_(\d{2})_(\d{2})(_preview)?\.models$", schema.module)
    if match:
        return "-".join(match.group(1, 2, 3)) + ("-preview" if match.group(4) else "")
    package = importlib.import_module(schema.module.removesuffix(".models"))
    assert package.__file__ is not None
    assert schema.version_source, f"{schema.module}: name the file that states its API version"
    source = (Path(package.__file__).parent / schema.version_source).read_text(encoding="utf-8")
    versions = set(re.findall(r'"(\d{4}-\d{2}-\d{2}(?:-preview)?)"', source))
    assert len(versions) == 1, f"{schema.version_source}: cannot tell one API version from {sorted(versions)}"
    return versions.pop()


@pytest.mark.parametrize(
    ("key", "schema"), sorted(SCHEMAS.items()), ids=lambda v: "@".join(v) if isinstance(v, tuple) else ""
)
def test_pinned_models_carry_the_api_version_the_mapping_claims(key: tuple[str, str], schema: Schema) -> None:
    _, template_version = key
    assert sdk_api_version(schema) == (schema.carries or template_version)
    for name in {schema.body, schema.read_model}:
        assert wire_tree(model_class(schema, name)), f"{schema.module}.{name} has no properties"


def copy_of_infra(tmp_path: Path) -> Path:
    copy = tmp_path / "infra"
    shutil.copytree(INFRA, copy)
    return copy


def edit(infra: Path, file: str, old: str, new: str) -> None:
    path = infra / file
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{file}: the text to change must occur exactly once: {old!r}"
    path.write_text(text.replace(old, new), encoding="utf-8")


def only_problem(infra: Path) -> Problem:
    problems = check_templates(infra)
    assert len(problems) == 1, "\n".join(str(p) for p in problems) or "no problem reported"
    return problems[0]


def test_a_misspelled_property_fails_naming_resource_path_and_api_version(tmp_path: Path) -> None:
    infra = copy_of_infra(tmp_path)
    edit(infra, "modules/function-app.bicep", "    httpsOnly: true\n", "    httpOnly: true\n")
    problem = only_problem(infra)
    assert (problem.file, problem.resource, problem.path) == (
        "modules/function-app.bicep",
        "functionApp",
        "properties.httpOnly",
    )
    assert (problem.resource_type, problem.api_version) == ("Microsoft.Web/sites", "2024-04-01")
    assert "no property 'httpOnly'" in problem.message and "did you mean 'httpsOnly'" in problem.message
    assert "functionApp (Microsoft.Web/sites@2024-04-01): properties.httpOnly:" in str(problem)


@pytest.mark.parametrize(
    ("file", "line", "anchor", "resource", "path", "belongs_at"),
    [
        pytest.param(
            "modules/storage.bicep",
            "allowBlobPublicAccess: false",
            "  kind: 'StorageV2'\n",
            "storageAccount",
            "allowBlobPublicAccess",
            "properties.allowBlobPublicAccess",
            id="storage-property-outside-properties",
        ),
        pytest.param(
            "modules/function-app.bicep",
            "http20Enabled: true",
            "    httpsOnly: true\n",
            "functionApp",
            "properties.http20Enabled",
            "properties.siteConfig.http20Enabled",
            id="site-config-property-one-level-up",
        ),
    ],
)
def test_a_property_at_the_wrong_depth_fails_and_says_where_it_belongs(
    tmp_path: Path, file: str, line: str, anchor: str, resource: str, path: str, belongs_at: str
) -> None:
    infra = copy_of_infra(tmp_path)
    text = (infra / file).read_text(encoding="utf-8")
    [where] = [row for row in text.splitlines(keepends=True) if row.strip() == line]
    edit(infra, file, where, "")  # moved, not copied: only the wrong place remains
    indent = anchor[: len(anchor) - len(anchor.lstrip())]
    edit(infra, file, anchor, f"{anchor}{indent}{line}\n")
    problem = only_problem(infra)
    assert (problem.resource, problem.path) == (resource, path)
    assert problem.message.endswith(f"; it belongs at {belongs_at}")


def test_a_wrong_enum_value_fails_listing_the_allowed_ones(tmp_path: Path) -> None:
    infra = copy_of_infra(tmp_path)
    edit(infra, "modules/storage.bicep", "minimumTlsVersion: 'TLS1_2'", "minimumTlsVersion: 'TLS1.2'")
    problem = only_problem(infra)
    assert (problem.resource, problem.path) == ("storageAccount", "properties.minimumTlsVersion")
    assert (problem.resource_type, problem.api_version) == ("Microsoft.Storage/storageAccounts", "2024-01-01")
    assert problem.message == "'TLS1.2' is not one of ['TLS1_0', 'TLS1_1', 'TLS1_2', 'TLS1_3']"


def test_a_wrong_enum_value_among_a_parameters_allowed_values_fails(tmp_path: Path) -> None:
    infra = copy_of_infra(tmp_path)
    edit(
        infra,
        "modules/storage.bicep",
        "  'Standard_RAGZRS'\n])\nparam skuName",
        "  'Standard_RAGZR'\n])\nparam skuName",
    )
    problem = only_problem(infra)
    assert (problem.resource, problem.path) == ("storageAccount", "sku.name (@allowed of skuName)")
    assert problem.message.startswith("'Standard_RAGZR' is not one of [")


def test_a_literal_of_the_wrong_type_fails(tmp_path: Path) -> None:
    infra = copy_of_infra(tmp_path)
    edit(infra, "modules/function-app.bicep", "http20Enabled: true", "http20Enabled: 'true'")
    problem = only_problem(infra)
    assert problem.path == "properties.siteConfig.http20Enabled"
    assert problem.message == "expected bool (bool), found string 'true'"


def test_a_value_over_the_schemas_length_limit_fails(tmp_path: Path) -> None:
    infra = copy_of_infra(tmp_path)
    edit(infra, "modules/alerts.bicep", "groupShortName: 'referrals'", "groupShortName: 'referrals-ops'")
    problem = only_problem(infra)
    assert (problem.resource, problem.path) == ("actionGroup", "properties.groupShortName")
    assert problem.message == "string 'referrals-ops' is longer than 12"


def test_a_misspelled_key_inside_a_polymorphic_object_fails(tmp_path: Path) -> None:
    infra = copy_of_infra(tmp_path)
    edit(infra, "modules/alerts.bicep", "          metricName: 'Http5xx'\n", "          metric: 'Http5xx'\n")
    problems = {(p.resource, p.path, p.message) for p in check_templates(infra)}
    assert problems == {
        (
            "http5xxAlert",
            "properties.criteria.allOf[0].metric",
            "MetricCriteria has no property 'metric'; did you mean 'metricName'?",
        ),
        ("http5xxAlert", "properties.criteria.allOf[0].metricName", "MetricCriteria requires 'metricName'"),
    }


def test_reading_a_property_the_provider_does_not_return_fails(tmp_path: Path) -> None:
    infra = copy_of_infra(tmp_path)
    edit(infra, "modules/identity.bicep", "= identity.properties.clientId", "= identity.properties.clientID")
    problem = only_problem(infra)
    assert (problem.resource, problem.path) == ("identity", "identity.properties.clientID")
    assert problem.message == "Identity has no property 'clientID' to read"


def test_a_resource_whose_api_version_has_no_pinned_schema_fails(tmp_path: Path) -> None:
    infra = copy_of_infra(tmp_path)
    edit(
        infra,
        "modules/identity.bicep",
        "userAssignedIdentities@2023-01-31' = {",
        "userAssignedIdentities@2024-11-30' = {",
    )
    problem = only_problem(infra)
    assert (problem.resource, problem.api_version) == ("identity", "2024-11-30")
    assert problem.message == "no schema is pinned for this type and API version"
