"""Offline checks of the Bicep templates in infra/.

The Bicep CLI cannot be installed here, so every template is parsed with pycep-parser and the
security and wiring properties the deployment relies on are asserted on the parsed structure.
pycep keeps identifiers and string literals alike as plain strings, and represents expressions as
nested dicts; `render` turns an expression back into a compact, comparable text such as
`identity.properties.clientId` or `guid(storageAccount.id, principalId, roleId)`.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any, cast

import pytest
from pycep import BicepParser

REPO_ROOT = Path(__file__).resolve().parents[2]
INFRA = REPO_ROOT / "infra"
MAIN = INFRA / "main.bicep"
MODULES = INFRA / "modules"
PARAMETERS_FILE = INFRA / "main.parameters.json"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))

# Built-in Azure role definition ids, stated here independently of the templates.
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
STORAGE_TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"

# API versions reviewed for these resource types; a new type or version has to be added here.
KNOWN_API_VERSIONS = {
    "Microsoft.Resources/resourceGroups": {"2024-03-01"},
    "Microsoft.ManagedIdentity/userAssignedIdentities": {"2023-01-31"},
    "Microsoft.OperationalInsights/workspaces": {"2023-09-01"},
    "Microsoft.Insights/components": {"2020-02-02"},
    "Microsoft.Storage/storageAccounts": {"2024-01-01"},
    "Microsoft.Storage/storageAccounts/blobServices": {"2024-01-01"},
    "Microsoft.Storage/storageAccounts/blobServices/containers": {"2024-01-01"},
    "Microsoft.Storage/storageAccounts/tableServices": {"2024-01-01"},
    "Microsoft.Storage/storageAccounts/tableServices/tables": {"2024-01-01"},
    "Microsoft.Authorization/roleAssignments": {"2022-04-01"},
    "Microsoft.Web/serverfarms": {"2024-04-01"},
    "Microsoft.Web/sites": {"2024-04-01"},
    "Microsoft.Web/sites/basicPublishingCredentialsPolicies": {"2024-04-01"},
    "Microsoft.Insights/metricAlerts": {"2018-03-01"},
    "Microsoft.Insights/actionGroups": {"2023-01-01"},
}

# Settings the app code reads (see the project README), with the template expression that feeds each.
APP_SETTINGS_THE_CODE_READS = {
    "REFERRALS_STORAGE__tableServiceUri": "tableServiceUri",
    "REFERRALS_STORAGE__clientId": "identity.properties.clientId",
    "REFERRALS_TABLE": "referralsTableName",
    "AUTH_AUDIENCE": "authAudience",
    "AUTH_TENANT_ID": "authTenantId",
    "AUTH_ALLOWED_TENANTS": "authAllowedTenants",
    "AZURE_CLIENT_ID": "identity.properties.clientId",
    "WEBHOOKS_ALLOW_LOOPBACK": "false",
}

# Settings that Flex Consumption rejects or ignores (runtime and deployment live in functionAppConfig).
FLEX_UNSUPPORTED_SETTINGS = {
    "FUNCTIONS_EXTENSION_VERSION",
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_WORKER_RUNTIME_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTSHARE",
    "SCM_DO_BUILD_DURING_DEPLOYMENT",
    "ENABLE_ORYX_BUILD",
}

# siteConfig properties that Flex Consumption refuses (ARM error 51021, "... for Flex Consumption sites is
# invalid. Please remove or rename ..."), as reported publicly from Flex stamps.
FLEX_REFUSED_SITE_CONFIG = {"ftpsState", "linuxFxVersion"}

# The instance sizes Flex Consumption offers, in MB.
FLEX_INSTANCE_MEMORY_MB = [512, 2048, 4096]

# Markers of shared-key or SAS credentials: none may appear anywhere in the templates.
SECRET_MARKERS = (
    "AccountKey",
    "SharedAccessSignature",
    "SharedAccessKey",
    "DefaultEndpointsProtocol",
    "listKeys",
    "listAccountSas",
    "listServiceSas",
    "InstrumentationKey",
)


@cache
def parse(path: Path) -> dict[str, Any]:
    return cast(dict[str, Any], BicepParser().parse(file_path=path))


def render(value: Any) -> str:
    """Render a pycep expression as compact text (identifiers and literals alike)."""
    if isinstance(value, dict):
        if "operator" in value:
            operator = value["operator"]
            operands = operator["operands"]
            if operator["type"] == "property_accessor":
                return f"{render(operands['operand_1'])}.{render(operands['operand_2'])}"
            return f"{operator['type']}({', '.join(render(o) for o in operands.values())})"
        if "function" in value:
            function = value["function"]
            arguments = [render(a) for a in (function.get("parameters") or {}).values() if a is not None]
            text = f"{function['type']}({', '.join(arguments)})"
            accessor = function.get("property_name")  # pycep < 0.7 only
            if accessor:
                # pycep 0.5 may store a token list as its repr: "[Token('STRING', 'tenantId')]".
                tokens = re.findall(r"Token\('STRING', '(\w+)'\)", str(accessor))
                text += "." + (".".join(tokens) if tokens else render(accessor))
            return text
        return "{" + ", ".join(f"{k}: {render(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(render(v) for v in value) + "]"
    return str(value)


def resources_of(path: Path, resource_type: str) -> dict[str, dict[str, Any]]:
    return {name: resource for name, resource in parse(path)["resources"].items() if resource["type"] == resource_type}


def only_resource(path: Path, resource_type: str, *, existing: bool = False) -> dict[str, Any]:
    matches = [r for r in resources_of(path, resource_type).values() if r["existing"] is existing]
    assert len(matches) == 1, f"expected one {resource_type} in {path.name}, found {len(matches)}"
    return cast(dict[str, Any], matches[0]["config"])


def decorator(declaration: dict[str, Any], kind: str) -> Any:
    for item in declaration.get("decorators") or []:
        if item["type"] == kind:
            return item["argument"]
    return None


def get_ci(mapping: dict[str, Any], key: str) -> Any:
    """ARM property names are case-insensitive."""
    matches = [v for k, v in mapping.items() if k.lower() == key.lower()]
    assert matches, f"{key} is not set"
    return matches[0]


def module_params(module_file: str) -> dict[str, str]:
    """Rendered parameters that main.bicep passes to modules/<module_file>."""
    for module in parse(MAIN)["modules"].values():
        if Path(module["detail"]["path"]).name == module_file:
            return {name: render(value) for name, value in module["config"]["params"].items()}
    raise AssertionError(f"main.bicep does not deploy modules/{module_file}")


def function_app() -> dict[str, Any]:
    return only_resource(MODULES / "function-app.bicep", "Microsoft.Web/sites")


def app_settings() -> dict[str, str]:
    entries = function_app()["properties"]["siteConfig"]["appSettings"]
    names = [entry["name"] for entry in entries]
    assert len(names) == len(set(names)), "duplicate app setting names"
    return {entry["name"]: render(entry["value"]) for entry in entries}


def storage_account() -> dict[str, Any]:
    return only_resource(MODULES / "storage.bicep", "Microsoft.Storage/storageAccounts")


# --- Parsing and structure ---------------------------------------------------------------------


def test_infra_contains_main_template_and_local_modules() -> None:
    assert MAIN in BICEP_FILES
    assert {p.name for p in MODULES.glob("*.bicep")} >= {
        "identity.bicep",
        "monitoring.bicep",
        "storage.bicep",
        "role-assignments.bicep",
        "function-app.bicep",
        "alerts.bicep",
    }


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_bicep_file_parses(path: Path) -> None:
    parsed = parse(path)
    assert parsed.get("resources") or parsed.get("modules"), f"{path.name} declares nothing"


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_module_reference_is_a_local_file_not_a_registry(path: Path) -> None:
    for name, module in parse(path).get("modules", {}).items():
        module_path = module["detail"]["path"]
        assert module["type"] == "local", f"module {name} is not local: {module_path}"
        assert not re.match(r"^(br|ts)[:/]", module_path), f"module {name} uses a registry: {module_path}"
        assert (path.parent / module_path).is_file(), f"module {name} points to a missing file"


def test_main_deploys_at_subscription_scope_into_the_resource_group_it_creates() -> None:
    main = parse(MAIN)
    assert main["globals"]["scope"]["value"] == "subscription"
    groups = resources_of(MAIN, "Microsoft.Resources/resourceGroups")
    assert list(groups) == ["rg"]
    modules = main["modules"]
    assert modules, "main.bicep deploys no modules"
    for name, module in modules.items():
        assert module["config"]["scope"] == "rg", f"module {name} is not deployed into the new group"


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_parameter_has_a_description(path: Path) -> None:
    for name, declaration in parse(path).get("parameters", {}).items():
        description = decorator(declaration, "description")
        assert description and str(description).strip(), f"{path.name}: param {name} has no @description"


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_resource_uses_a_reviewed_stable_api_version(path: Path) -> None:
    for name, resource in parse(path)["resources"].items():
        known = KNOWN_API_VERSIONS.get(resource["type"])
        assert known is not None, f"{path.name}: {name} has unreviewed type {resource['type']}"
        assert resource["api_version"] in known, f"{path.name}: {name} uses {resource['api_version']}"
        assert "preview" not in resource["api_version"]


def test_no_separate_app_settings_resource_so_settings_stay_inline_in_site_config() -> None:
    for path in BICEP_FILES:
        assert not resources_of(path, "Microsoft.Web/sites/config"), f"{path.name} declares sites/config"


# --- Comments and checkov suppressions ---------------------------------------------------------


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_no_hash_comments_because_the_bicep_compiler_rejects_them(path: Path) -> None:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        assert not line.lstrip().startswith("#"), f"{path.name}:{number} is a # comment"


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_checkov_skips_sit_inside_a_resource_body_and_give_a_reason(path: Path) -> None:
    inside_resource = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if re.match(r"^resource \w+ '[^']+'( existing)? = ", line):
            inside_resource = True
        elif line == "}":
            inside_resource = False
        if "checkov:" in line:
            assert re.fullmatch(r"\s*// checkov:skip=CKV2?_[A-Z]+_\d+:\S.{9,}", line), (
                f"{path.name}:{number} is not `// checkov:skip=CKV_X:<reason>`"
            )
            assert inside_resource, f"{path.name}:{number} skip is outside a resource body"


# --- Storage -----------------------------------------------------------------------------------


def test_storage_account_disables_shared_keys_and_public_blob_access() -> None:
    properties = storage_account()["properties"]
    assert properties["allowSharedKeyAccess"] is False
    assert properties["allowBlobPublicAccess"] is False
    assert properties["defaultToOAuthAuthentication"] is True
    assert properties["allowCrossTenantReplication"] is False


def test_storage_account_requires_https_and_tls_1_2() -> None:
    properties = storage_account()["properties"]
    assert properties["supportsHttpsTrafficOnly"] is True
    assert properties["minimumTlsVersion"] == "TLS1_2"


def test_storage_sku_is_a_parameter_that_defaults_to_standard_lrs() -> None:
    assert storage_account()["sku"]["name"] == "skuName"
    assert parse(MODULES / "storage.bicep")["parameters"]["skuName"]["default"] == "Standard_LRS"
    assert parse(MAIN)["parameters"]["storageSkuName"]["default"] == "Standard_LRS"
    assert module_params("storage.bicep")["skuName"] == "storageSkuName"


def test_blob_and_container_soft_delete_are_enabled() -> None:
    path = MODULES / "storage.bicep"
    properties = only_resource(path, "Microsoft.Storage/storageAccounts/blobServices")["properties"]
    for policy in ("deleteRetentionPolicy", "containerDeleteRetentionPolicy"):
        assert properties[policy]["enabled"] is True, policy
        assert properties[policy]["days"] == "softDeleteRetentionDays", policy
    retention = parse(path)["parameters"]["softDeleteRetentionDays"]
    assert decorator(retention, "min_value") >= 1
    assert retention["default"] >= 1


def test_referrals_table_is_created_in_the_table_service() -> None:
    path = MODULES / "storage.bicep"
    table = only_resource(path, "Microsoft.Storage/storageAccounts/tableServices/tables")
    assert table["name"] == "tableName"
    assert resources_of(path, "Microsoft.Storage/storageAccounts/tableServices")[table["parent"]]
    assert parse(path)["parameters"]["tableName"]["default"] == "Referrals"
    assert parse(MAIN)["parameters"]["referralsTableName"]["default"] == "Referrals"
    assert module_params("storage.bicep")["tableName"] == "referralsTableName"


def test_deployment_package_container_is_private() -> None:
    path = MODULES / "storage.bicep"
    container = only_resource(path, "Microsoft.Storage/storageAccounts/blobServices/containers")
    assert container["name"] == "deploymentContainerName"
    assert container["properties"]["publicAccess"] == "None"


def test_table_endpoint_output_is_https_without_trailing_slash() -> None:
    endpoint = render(parse(MODULES / "storage.bicep")["outputs"]["tableEndpoint"]["value"])
    assert endpoint == "https://${storageAccount.name}.table.${environment().suffixes.storage}"
    assert module_params("function-app.bicep")["tableServiceUri"] == "storage.outputs.tableEndpoint"


# --- Identity and role assignments -------------------------------------------------------------


def role_assignments() -> dict[str, dict[str, Any]]:
    return resources_of(MODULES / "role-assignments.bicep", "Microsoft.Authorization/roleAssignments")


def role_constant(role_id: str) -> str:
    variables = parse(MODULES / "role-assignments.bicep")["variables"]
    names = [name for name, variable in variables.items() if variable["value"] == role_id]
    assert len(names) == 1, f"role id {role_id} is not a single named constant"
    return str(names[0])


@pytest.mark.parametrize(
    ("role_id", "scope_type"),
    [
        pytest.param(STORAGE_BLOB_DATA_OWNER, "Microsoft.Storage/storageAccounts", id="blob-data-owner"),
        pytest.param(STORAGE_TABLE_DATA_CONTRIBUTOR, "Microsoft.Storage/storageAccounts", id="table-data-contributor"),
        pytest.param(MONITORING_METRICS_PUBLISHER, "Microsoft.Insights/components", id="metrics-publisher"),
    ],
)
def test_identity_holds_role_on_the_narrowest_scope_with_idempotent_name(role_id: str, scope_type: str) -> None:
    constant = role_constant(role_id)
    role_definition = f"subscription_resource_id(Microsoft.Authorization/roleDefinitions, {constant})"
    matches = [
        r["config"]
        for r in role_assignments().values()
        if render(r["config"]["properties"]["roleDefinitionId"]) == role_definition
    ]
    assert len(matches) == 1, f"expected one assignment of {constant}"
    assignment = matches[0]
    scope = assignment["scope"]
    scope_resource = parse(MODULES / "role-assignments.bicep")["resources"][scope]
    assert scope_resource["type"] == scope_type
    assert scope_resource["existing"] is True
    assert assignment["properties"]["principalId"] == "principalId"
    assert assignment["properties"]["principalType"] == "ServicePrincipal"
    assert render(assignment["name"]) == f"guid({scope}.id, principalId, {constant})"


def test_role_assignments_are_exactly_the_three_data_plane_roles() -> None:
    expected = {STORAGE_BLOB_DATA_OWNER, STORAGE_TABLE_DATA_CONTRIBUTOR, MONITORING_METRICS_PUBLISHER}
    granted = set()
    for path in BICEP_FILES:
        variables = parse(path).get("variables", {})
        for assignment in resources_of(path, "Microsoft.Authorization/roleAssignments").values():
            role = assignment["config"]["properties"]["roleDefinitionId"]
            constant = role["function"]["parameters"]["resource_name_1"]
            granted.add(variables[constant]["value"])
    assert granted == expected


def test_role_assignments_go_to_the_function_app_identity() -> None:
    assert module_params("role-assignments.bicep")["principalId"] == "identity.outputs.principalId"
    outputs = parse(MODULES / "identity.bicep")["outputs"]
    assert render(outputs["principalId"]["value"]) == "identity.properties.principalId"
    assert render(outputs["clientId"]["value"]) == "identity.properties.clientId"


def test_function_app_waits_for_its_role_assignments() -> None:
    for module in parse(MAIN)["modules"].values():
        if Path(module["detail"]["path"]).name == "function-app.bicep":
            assert "roleAssignments" in module["config"]["dependsOn"]
            return
    raise AssertionError("function-app.bicep is not deployed")


def test_function_app_runs_only_as_the_user_assigned_identity() -> None:
    identity = function_app()["identity"]
    assert identity["type"] == "UserAssigned"
    assert list(identity["userAssignedIdentities"]) == ["'${identity.id}'"]
    declared = resources_of(MODULES / "function-app.bicep", "Microsoft.ManagedIdentity/userAssignedIdentities")
    assert declared["identity"]["existing"] is True
    assert declared["identity"]["config"]["name"] == "identityName"
    assert module_params("function-app.bicep")["identityName"] == "identity.outputs.name"


# --- Function app ------------------------------------------------------------------------------


def test_function_app_is_on_a_linux_flex_consumption_fc1_plan() -> None:
    plan = only_resource(MODULES / "function-app.bicep", "Microsoft.Web/serverfarms")
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert plan["properties"]["reserved"] is True
    app = function_app()
    assert app["kind"] == "functionapp,linux"
    assert render(app["properties"]["serverFarmId"]) == "plan.id"


def test_function_app_runtime_is_python_3_13() -> None:
    assert function_app()["properties"]["functionAppConfig"]["runtime"] == {"name": "python", "version": "3.13"}


def test_function_app_is_https_only_with_tls_1_2_and_no_basic_auth_publishing() -> None:
    properties = function_app()["properties"]
    assert properties["httpsOnly"] is True
    assert properties["siteConfig"]["minTlsVersion"] == "1.2"
    assert properties["siteConfig"]["scmMinTlsVersion"] == "1.2"
    policies = resources_of(MODULES / "function-app.bicep", "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    by_name = {p["config"]["name"]: p["config"] for p in policies.values()}
    assert set(by_name) == {"scm"}, "Flex has no FTP: only the SCM (deployment) policy is set"
    assert by_name["scm"]["parent"] == "functionApp"
    assert by_name["scm"]["properties"]["allow"] is False


def test_site_config_holds_nothing_flex_consumption_refuses() -> None:
    assert not FLEX_REFUSED_SITE_CONFIG & set(function_app()["properties"]["siteConfig"])


def test_ftps_state_check_is_skipped_with_the_flex_reason() -> None:
    text = (MODULES / "function-app.bicep").read_text(encoding="utf-8")
    skip = re.search(r"// checkov:skip=CKV_AZURE_78:(.+)", text)
    assert skip is not None, "CKV_AZURE_78 (ftpsState) needs a skip now that ftpsState is gone"
    assert "Flex Consumption" in skip.group(1) and "ftpsState" in skip.group(1)


@pytest.mark.parametrize("path", [MAIN, MODULES / "function-app.bicep"], ids=lambda p: p.name)
def test_instance_memory_is_one_of_the_flex_sizes(path: Path) -> None:
    assert decorator(parse(path)["parameters"]["instanceMemoryMB"], "allowed") == FLEX_INSTANCE_MEMORY_MB


def test_deployment_package_storage_is_authenticated_by_the_user_assigned_identity() -> None:
    storage = function_app()["properties"]["functionAppConfig"]["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["value"] == "${storageAccount.properties.primaryEndpoints.blob}${deploymentContainerName}"
    assert storage["authentication"]["type"] == "UserAssignedIdentity"
    assert render(storage["authentication"]["userAssignedIdentityResourceId"]) == "identity.id"
    assert module_params("function-app.bicep")["deploymentContainerName"] == "storage.outputs.deploymentContainerName"


def test_host_storage_is_identity_based() -> None:
    settings = app_settings()
    assert settings["AzureWebJobsStorage__accountName"] == "storageAccount.name"
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["AzureWebJobsStorage__clientId"] == "identity.properties.clientId"
    assert "AzureWebJobsStorage" not in settings


@pytest.mark.parametrize(("name", "expected"), sorted(APP_SETTINGS_THE_CODE_READS.items()))
def test_app_settings_the_code_reads_are_set(name: str, expected: str) -> None:
    assert app_settings().get(name) == expected


def test_auth_settings_come_from_deployment_parameters() -> None:
    passed = module_params("function-app.bicep")
    assert passed["authAudience"] == "authAudience"
    assert passed["authTenantId"] == "authTenantId"
    assert passed["authAllowedTenants"] == "join(authAllowedTenantIds, ,)"
    parameters = parse(MAIN)["parameters"]
    assert parameters["authAudience"]["default"] is None, "the audience must be given explicitly"
    for name in ("authAudience", "authTenantId"):  # v2 tokens carry GUIDs in aud and tid, never api:// URIs
        assert decorator(parameters[name], "min_length") == 36, name
        assert decorator(parameters[name], "max_length") == 36, name
    assert render(parameters["authTenantId"]["default"]) == "tenant().tenantId"
    assert parameters["authAllowedTenantIds"]["default"] == []


def test_jwks_uri_is_left_to_the_code_default() -> None:
    assert "AUTH_JWKS_URI" not in app_settings()


def test_application_insights_settings_authenticate_with_the_identity() -> None:
    settings = app_settings()
    assert settings["APPLICATIONINSIGHTS_CONNECTION_STRING"] == "applicationInsights.properties.ConnectionString"
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == (
        "ClientId=${identity.properties.clientId};Authorization=AAD"
    )


def test_no_storage_connection_string_or_key_in_app_settings() -> None:
    settings = app_settings()
    assert "connectionStrings" not in function_app()["properties"]["siteConfig"]
    for name, value in settings.items():
        if name == "APPLICATIONINSIGHTS_CONNECTION_STRING":
            continue  # an ingestion endpoint locator; local auth is disabled on the component
        assert "connectionstring" not in name.lower().replace("_", ""), name
        assert "ConnectionString" not in value, name
        for marker in SECRET_MARKERS:
            assert marker not in value, f"{name} carries {marker}"


def test_flex_consumption_unsupported_settings_are_absent() -> None:
    assert not FLEX_UNSUPPORTED_SETTINGS & set(app_settings())


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_no_keys_sas_or_connection_strings_anywhere_in_the_templates(path: Path) -> None:
    text = json.dumps(parse(path))  # parsed form: comments are not included
    for marker in SECRET_MARKERS:
        assert marker not in text, f"{path.name} uses {marker}"


# --- Monitoring --------------------------------------------------------------------------------


def test_application_insights_disables_local_auth_and_uses_the_workspace() -> None:
    path = MODULES / "monitoring.bicep"
    properties = only_resource(path, "Microsoft.Insights/components")["properties"]
    assert get_ci(properties, "DisableLocalAuth") is True
    assert render(get_ci(properties, "WorkspaceResourceId")) == "logAnalytics.id"
    workspace = only_resource(path, "Microsoft.OperationalInsights/workspaces")["properties"]
    assert workspace["features"]["disableLocalAuth"] is True


# --- Alerts ------------------------------------------------------------------------------------

ALERTS = MODULES / "alerts.bicep"


def metric_alerts() -> dict[str, dict[str, Any]]:
    return {name: r["config"] for name, r in resources_of(ALERTS, "Microsoft.Insights/metricAlerts").items()}


def only_criterion(alert: dict[str, Any]) -> dict[str, Any]:
    criteria = alert["properties"]["criteria"]
    assert criteria["'odata.type'"] == "Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria"
    assert len(criteria["allOf"]) == 1
    return cast(dict[str, Any], criteria["allOf"][0])


def test_alerts_module_gets_the_email_and_the_watched_resources_from_main() -> None:
    passed = module_params("alerts.bicep")
    assert passed["alertEmailAddress"] == "alertEmailAddress"
    assert passed["functionAppName"] == "functionApp.outputs.name"
    assert passed["storageAccountName"] == "storage.outputs.name"
    assert parse(MAIN)["parameters"]["alertEmailAddress"]["default"] == ""


def test_action_group_exists_only_when_an_email_address_is_given() -> None:
    groups = resources_of(ALERTS, "Microsoft.Insights/actionGroups")
    assert list(groups) == ["actionGroup"]
    config = groups["actionGroup"]["config"]
    assert config["condition"] == "notify"
    assert render(parse(ALERTS)["variables"]["notify"]["value"]) == "not(empty(alertEmailAddress))"
    receivers = config["config"]["properties"]["emailReceivers"]
    assert [r["emailAddress"] for r in receivers] == ["alertEmailAddress"]


@pytest.mark.parametrize("name", ["http5xxAlert", "storageThrottlingAlert"])
def test_each_alert_notifies_the_action_group_only_when_there_is_one(name: str) -> None:
    alert = metric_alerts()[name]
    assert alert["properties"]["enabled"] is True
    assert render(alert["properties"]["actions"]) == "conditional(notify, [{actionGroupId: actionGroup.id}], [])"


def test_function_app_alert_counts_http_5xx_responses() -> None:
    alert = metric_alerts()["http5xxAlert"]
    assert [render(s) for s in alert["properties"]["scopes"]] == ["functionApp.id"]
    criterion = only_criterion(alert)
    assert (criterion["metricNamespace"], criterion["metricName"]) == ("Microsoft.Web/sites", "Http5xx")
    assert (criterion["timeAggregation"], criterion["operator"]) == ("Total", "GreaterThan")


def test_storage_alert_counts_throttled_and_server_busy_transactions() -> None:
    alert = metric_alerts()["storageThrottlingAlert"]
    assert [render(s) for s in alert["properties"]["scopes"]] == ["storageAccount.id"]
    criterion = only_criterion(alert)
    assert (criterion["metricNamespace"], criterion["metricName"]) == (
        "Microsoft.Storage/storageAccounts",
        "Transactions",
    )
    assert criterion["timeAggregation"] == "Total"
    [dimension] = criterion["dimensions"]
    assert (dimension["name"], dimension["operator"]) == ("ResponseType", "Include")
    values = parse(ALERTS)["variables"][dimension["values"]]["value"]
    assert {"ServerBusyError", "ClientThrottlingError", "ClientAccountRequestThrottlingError"} <= set(values)
    assert "Success" not in values


# --- Naming, outputs and parameters -------------------------------------------------------------


def test_names_derive_from_the_checked_environment_name_and_a_unique_string() -> None:
    variables = parse(MAIN)["variables"]
    token = render(variables["resourceToken"]["value"])
    assert token == "to_lower(unique_string(subscription().id, checkedEnvironmentName, location))"
    names = {key: render(value) for key, value in variables["names"]["value"].items()}
    assert "${checkedEnvironmentName}" in names["resourceGroup"]
    for key in ("identity", "logAnalytics", "applicationInsights", "storageAccount", "plan", "functionApp"):
        assert "${resourceToken}" in names[key], key
    assert "${checkedEnvironmentName}" in names["functionApp"]
    assert "${checkedEnvironmentName}" in names["alerts"]
    assert render(variables["tags"]["value"]["environment"]) == "checkedEnvironmentName"


def test_only_the_check_reads_the_raw_environment_name() -> None:
    """Every name goes through checkedEnvironmentName, so a bad value fails before anything is created."""
    variables = parse(MAIN)["variables"]
    readers = {
        name
        for name, variable in variables.items()
        if "environmentName" in re.findall(r"\w+", render(variable["value"]))
    }
    assert readers == {
        "environmentNamePadded",
        "environmentNameIsValid",
        "checkedEnvironmentName",
    }
    for section in ("resources", "modules", "outputs"):
        for name, item in (parse(MAIN).get(section) or {}).items():
            assert "environmentName" not in re.findall(r"\w+", render(item)), f"{section}.{name}"


def environment_name_is_accepted(name: str) -> bool:
    """The character rule of main.bicep, evaluated in Python from the template's own literals."""
    declared = parse(MAIN)["parameters"]["environmentName"]
    if not decorator(declared, "min_length") <= len(name) <= decorator(declared, "max_length"):
        return False  # ARM refuses it before the template is evaluated
    variables = parse(MAIN)["variables"]
    first = variables["environmentNameFirstCharacters"]["value"]
    allowed = render(variables["environmentNameCharacters"]["value"]).replace(
        "${environmentNameFirstCharacters}", first
    )
    padding = render(variables["environmentNamePadded"]["value"]).removeprefix("${environmentName}")
    padded = name + padding
    bad = [i for i in variables["environmentNamePositions"]["value"] if padded[i] not in allowed]
    return not bad and name[0] in first


@pytest.mark.parametrize(
    ("name", "accepted"),
    [
        ("dev", True),
        ("prod-2", True),
        ("a" * 20, True),
        ("z9-" * 6 + "zz", True),
        ("", False),
        ("a" * 21, False),
        ("Dev", False),
        ("dev_1", False),
        ("dev.1", False),
        ("dev 1", False),
        ("1dev", False),
        ("-dev", False),
        ("devé", False),
        ("a" * 19 + "_", False),
    ],
)
def test_environment_name_rule(name: str, accepted: bool) -> None:
    assert environment_name_is_accepted(name) is accepted


def test_environment_name_check_covers_every_position_and_fails_with_the_rule() -> None:
    declared = parse(MAIN)["parameters"]["environmentName"]
    variables = parse(MAIN)["variables"]
    longest = decorator(declared, "max_length")
    assert variables["environmentNamePositions"]["value"] == list(range(longest))
    padding = render(variables["environmentNamePadded"]["value"]).removeprefix("${environmentName}")
    assert len(padding) >= longest and set(padding) <= set(variables["environmentNameFirstCharacters"]["value"])
    assert variables["environmentNameCharacters"]["value"] == "${environmentNameFirstCharacters}0123456789-"
    assert variables["environmentNameFirstCharacters"]["value"] == "abcdefghijklmnopqrstuvwxyz"
    checked = render(variables["checkedEnvironmentName"]["value"])
    assert checked.startswith("conditional(environmentNameIsValid, environmentName, index_accessor(any({}), ")
    assert "lowercase letters, digits and hyphens" in checked


def test_outputs_are_upper_snake_case_and_cover_what_ops_needs_next() -> None:
    outputs = parse(MAIN)["outputs"]
    for name in outputs:
        assert re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*", name), name
    assert set(outputs) >= {
        "RESOURCE_GROUP_NAME",
        "FUNCTION_APP_NAME",
        "FUNCTION_APP_DEFAULT_HOSTNAME",
        "FUNCTION_APP_URL",
        "STORAGE_ACCOUNT_NAME",
        "STORAGE_TABLE_ENDPOINT",
    }
    for path in BICEP_FILES:
        for name, output in parse(path).get("outputs", {}).items():
            value = render(output["value"])
            assert "ConnectionString" not in value and "listKeys" not in value, f"{path.name}: {name}"


def test_parameters_file_sets_only_declared_parameters_with_allowed_values() -> None:
    document = json.loads(PARAMETERS_FILE.read_text(encoding="utf-8"))
    declared = parse(MAIN)["parameters"]
    values = {name: entry["value"] for name, entry in document["parameters"].items()}
    assert set(values) <= set(declared), set(values) - set(declared)
    for name, value in values.items():
        allowed = decorator(declared[name], "allowed")
        if allowed is not None:
            assert value in allowed, name
        low, high = decorator(declared[name], "min_value"), decorator(declared[name], "max_value")
        if low is not None:
            assert value >= low, name
        if high is not None:
            assert value <= high, name
    # Everything without a default comes from the file, except the audience, given at deploy time.
    required = {name for name, declaration in declared.items() if declaration.get("default") is None}
    assert required - set(values) == {"authAudience"}


def test_parameters_file_holds_no_secrets() -> None:
    document = json.loads(PARAMETERS_FILE.read_text(encoding="utf-8"))
    for name, entry in document["parameters"].items():
        assert "reference" not in entry, f"{name} pulls a Key Vault secret"
        assert not re.search(r"key|secret|password|token|connection", name, re.IGNORECASE), name
    text = json.dumps(document)
    for marker in SECRET_MARKERS:
        assert marker not in text


def test_the_webhook_delivery_timer_has_an_always_ready_instance() -> None:
    scale = function_app()["properties"]["functionAppConfig"]["scaleAndConcurrency"]
    assert {"name": "function:deliver_events", "instanceCount": 1} in scale["alwaysReady"]
    schedule = json.loads((INFRA.parent / "deliver_events" / "function.json").read_text())["bindings"][0]
    assert schedule["type"] == "timerTrigger" and schedule["schedule"] == "*/5 * * * * *"
