"""Check the Bicep templates in infra/ against the resource providers' schemas, offline.

The Bicep compiler cannot run here, so the schema comes from the generated models of the Azure
management SDKs (azure-mgmt-*, pinned in requirements-dev.txt). Each model class maps its Python
attributes to wire keys and types in `_attribute_map` (for example `site_config` ->
`{'key': 'properties.siteConfig', 'type': 'SiteConfig'}`), marks read-only and required attributes in
`_validation`, names its enums in the `__init__` annotations, and resolves polymorphic objects
through `_subtype_map`. `check_templates` walks every resource body that pycep parses out of a
template and reports, per property path, what the model does not allow:

- a key the model does not have (a misspelling, or a property at the wrong depth, with a hint);
- a read-only property set, or a required one missing;
- a literal of the wrong type, or a string that is not one of the enum's values;
- a literal outside the model's length or range limits.

Expressions whose value is only known at deployment (`storageAccount.name`, `guid(...)`,
`'${a}${b}'`) are accepted wherever a value of their kind can stand. References to parameters are
followed: their declared type, their @allowed values and their default are checked in place of the
reference. Variables are followed to their values, and both branches of `cond ? a : b` are checked.
Reads of other resources' properties (`identity.properties.clientId`) are checked against the model
that the provider returns.
"""

from __future__ import annotations

import difflib
import enum
import importlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any, cast

from pycep import BicepParser


@dataclass(frozen=True)
class Schema:
    """Where the model of one resource type and API version lives."""

    module: str
    body: str  # the model of the PUT body the template declares
    read: str | None = None  # the model the provider returns, when it differs from the body
    carries: str | None = None  # the API version of the models, when it is not the template's
    # For a package without one API version per subpackage: its file that states the version in use.
    version_source: str | None = None

    @property
    def read_model(self) -> str:
        return self.read or self.body


# Template (type, API version) -> model. Every resource in infra/ must be listed here; where the SDK no
# longer ships the template's API version, the nearest one it does ship is named in `carries`.
SCHEMAS: dict[tuple[str, str], Schema] = {
    # azure-mgmt-resource 23.4.0 ships resources 2022-09-01 and 2024-07-01, not 2024-03-01; the
    # ResourceGroup model is the same in both.
    ("Microsoft.Resources/resourceGroups", "2024-03-01"): Schema(
        "azure.mgmt.resource.resources.v2024_07_01.models", "ResourceGroup", carries="2024-07-01"
    ),
    ("Microsoft.ManagedIdentity/userAssignedIdentities", "2023-01-31"): Schema(
        "azure.mgmt.msi.v2023_01_31.models", "Identity"
    ),
    # No azure-mgmt-loganalytics release carries 2023-09-01: 13.0.0b7 carries 2022-10-01 (the nearest
    # earlier version), 13.1.x and 14.x carry 2025-07-01. The earlier one is used: a property it lacks
    # fails here and can be looked at, where a later model could accept one that 2023-09-01 refuses.
    ("Microsoft.OperationalInsights/workspaces", "2023-09-01"): Schema(
        "azure.mgmt.loganalytics.models",
        "Workspace",
        carries="2022-10-01",
        version_source="operations/_workspaces_operations.py",
    ),
    ("Microsoft.Insights/components", "2020-02-02"): Schema(
        "azure.mgmt.applicationinsights.v2020_02_02.models", "ApplicationInsightsComponent"
    ),
    ("Microsoft.Storage/storageAccounts", "2024-01-01"): Schema(
        "azure.mgmt.storage.v2024_01_01.models", "StorageAccountCreateParameters", read="StorageAccount"
    ),
    ("Microsoft.Storage/storageAccounts/blobServices", "2024-01-01"): Schema(
        "azure.mgmt.storage.v2024_01_01.models", "BlobServiceProperties"
    ),
    ("Microsoft.Storage/storageAccounts/blobServices/containers", "2024-01-01"): Schema(
        "azure.mgmt.storage.v2024_01_01.models", "BlobContainer"
    ),
    ("Microsoft.Storage/storageAccounts/tableServices", "2024-01-01"): Schema(
        "azure.mgmt.storage.v2024_01_01.models", "TableServiceProperties"
    ),
    ("Microsoft.Storage/storageAccounts/tableServices/tables", "2024-01-01"): Schema(
        "azure.mgmt.storage.v2024_01_01.models", "Table"
    ),
    ("Microsoft.Authorization/roleAssignments", "2022-04-01"): Schema(
        "azure.mgmt.authorization.v2022_04_01.models", "RoleAssignmentCreateParameters", read="RoleAssignment"
    ),
    ("Microsoft.Web/serverfarms", "2024-04-01"): Schema("azure.mgmt.web.v2024_04_01.models", "AppServicePlan"),
    ("Microsoft.Web/sites", "2024-04-01"): Schema("azure.mgmt.web.v2024_04_01.models", "Site"),
    ("Microsoft.Web/sites/basicPublishingCredentialsPolicies", "2024-04-01"): Schema(
        "azure.mgmt.web.v2024_04_01.models", "CsmPublishingCredentialsPoliciesEntity"
    ),
    ("Microsoft.Insights/metricAlerts", "2018-03-01"): Schema(
        "azure.mgmt.monitor.v2018_03_01.models", "MetricAlertResource"
    ),
    ("Microsoft.Insights/actionGroups", "2023-01-01"): Schema(
        "azure.mgmt.monitor.v2023_01_01.models", "ActionGroupResource"
    ),
}

# Keys of a resource declaration that Bicep itself consumes; they are not part of the request body.
BICEP_KEYS = frozenset({"name", "parent", "scope", "dependsOn"})

_PRIMITIVES = {
    "str": "string",
    "bool": "bool",
    "int": "int",
    "long": "int",
    "float": "number",
    "decimal": "number",
    "iso-8601": "string",
    "rfc-1123": "string",
    "duration": "string",
    "date": "string",
    "time": "string",
    "unix-time": "int",
    "base64": "string",
    "bytearray": "string",
}
# Bicep parameter types -> the model types a value of that type can stand for.
_PARAM_KINDS = {
    "string": {"string"},
    "securestring": {"string"},
    "int": {"int", "number"},
    "bool": {"bool"},
    "object": {"object"},
    "secureobject": {"object"},
    "array": {"array"},
}
_INTERPOLATION = re.compile(r"\$\{([^{}]*)\}")
_REFERENCE_CHAIN = re.compile(r"^\s*([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)\s*$")


@dataclass(frozen=True)
class Problem:
    file: str
    resource: str
    resource_type: str
    api_version: str
    path: str
    message: str

    def __str__(self) -> str:
        return (
            f"{self.file}: {self.resource} ({self.resource_type}@{self.api_version}): "
            f"{self.path or '<body>'}: {self.message}"
        )


@dataclass(frozen=True)
class Field:
    """One wire property of a model: its Python attribute, msrest type and constraints."""

    attr: str
    type: str
    owner: type
    readonly: bool
    required: bool


Tree = dict[str, "Tree | Field"]


# --- Models ------------------------------------------------------------------------------------


@cache
def models_module(name: str) -> ModuleType:
    return importlib.import_module(name)


def model_class(schema: Schema, name: str) -> type:
    return cast(type, getattr(models_module(schema.module), name))


def _split_key(key: str) -> list[str]:
    """'properties.siteConfig' -> ['properties', 'siteConfig']; 'odata\\.type' -> ['odata.type']."""
    return [part.replace("\\.", ".") for part in re.split(r"(?<!\\)\.", key)]


@cache
def wire_tree(cls: type) -> Tree:
    """The model's wire keys as a tree: flattened keys such as 'properties.x' become nested objects."""
    validation: dict[str, dict[str, Any]] = getattr(cls, "_validation", {}) or {}
    tree: Tree = {}
    for attr, spec in cls._attribute_map.items():  # type: ignore[attr-defined]
        if not spec["key"]:  # additional_properties: extra keys are refused here all the same
            continue
        *parents, leaf = _split_key(spec["key"])
        node = tree
        for part in parents:
            child = node.setdefault(part, {})
            assert isinstance(child, dict), f"{cls.__name__}: {spec['key']} nests under a value"
            node = child
        rules = validation.get(attr, {})
        node[leaf] = Field(attr, spec["type"], cls, bool(rules.get("readonly")), bool(rules.get("required")))
    return tree


def enum_values(owner: type, attr: str) -> list[str] | None:
    """The values of the enum that the model's constructor names for this attribute, if any."""
    annotation = getattr(owner.__init__, "__annotations__", {}).get(attr)
    if annotation is None:
        return None
    module = importlib.import_module(owner.__module__.rsplit(".", 1)[0])
    for name in re.findall(r"_models\.(\w+)", repr(annotation)):
        candidate = getattr(module, name, None)
        if isinstance(candidate, type) and issubclass(candidate, enum.Enum):
            return [str(member.value) for member in candidate]
    return None


def resolve_subtype(cls: type, body: dict[str, Any], problem: Any) -> type:
    """Follow a polymorphic model's discriminator ('odata.type', 'criterionType', ...) to its subclass."""
    subtypes: dict[str, dict[str, str]] = getattr(cls, "_subtype_map", None) or {}
    for attr, mapping in subtypes.items():
        key = _split_key(cls._attribute_map[attr]["key"])[-1]  # type: ignore[attr-defined]
        value = body.get(key)
        if not isinstance(value, str):
            problem(key, f"{cls.__name__} needs {key} as a literal, one of {sorted(mapping)}")
            return cls
        if value not in mapping:
            problem(key, f"{value!r} is not one of {sorted(mapping)}{_case_hint(value, mapping)}")
            return cls
        module = importlib.import_module(cls.__module__.rsplit(".", 1)[0])
        return cast(type, getattr(module, mapping[value]))
    return cls


def _case_hint(value: str, allowed: Any) -> str:
    same = [a for a in allowed if a.lower() == value.lower()]
    return f" (the schema spells it {same[0]!r})" if same else ""


def _all_paths(cls: type, prefix: str = "", depth: int = 0, seen: frozenset[type] = frozenset()) -> Iterator[str]:
    """Every wire path reachable from a model, for 'wrong depth' hints (bounded, cycle-safe)."""
    if depth > 6 or cls in seen:
        return
    module = importlib.import_module(cls.__module__.rsplit(".", 1)[0])

    def walk(tree: Tree, at: str) -> Iterator[str]:
        for key, node in tree.items():
            path = f"{at}.{key}" if at else key
            yield path
            if isinstance(node, dict):
                yield from walk(node, path)
            else:
                inner = node.type.strip("[]{}")
                child = getattr(module, inner, None)
                if isinstance(child, type) and hasattr(child, "_attribute_map"):
                    yield from _all_paths(child, path, depth + 1, seen | {cls})

    yield from walk(wire_tree(cls), prefix)


# --- Templates ---------------------------------------------------------------------------------


@cache
def _parse(text: str) -> dict[str, Any]:
    """Parsed by content, so a test's copy of infra/ re-parses only the file it changed (nothing mutates it)."""
    return cast(dict[str, Any], BicepParser().parse(text=text))


def _strip_quotes(key: str) -> str:
    return key[1:-1] if len(key) >= 2 and key[0] == key[-1] == "'" else key


@dataclass
class Template:
    """One parsed .bicep file and the symbols its expressions can name."""

    path: Path
    label: str
    parsed: dict[str, Any]
    symbols: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, path: Path, root: Path) -> Template:
        parsed = _parse(path.read_text(encoding="utf-8"))
        template = cls(path, str(path.relative_to(root)), parsed)
        for section in ("parameters", "variables", "resources", "modules"):
            template.symbols.update(parsed.get(section) or {})
        return template

    @property
    def parameters(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.parsed.get("parameters") or {})

    @property
    def variables(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.parsed.get("variables") or {})

    @property
    def resources(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.parsed.get("resources") or {})


def _decorator(declaration: dict[str, Any], kind: str) -> Any:
    for item in declaration.get("decorators") or []:
        if item["type"] == kind:
            return item["argument"]
    return None


@dataclass
class Checker:
    template: Template
    resource: str
    resource_type: str
    api_version: str
    schema: Schema
    problems: list[Problem]

    def report(self, path: str, message: str) -> None:
        self.problems.append(
            Problem(self.template.label, self.resource, self.resource_type, self.api_version, path, message)
        )

    # Values --------------------------------------------------------------------------------------

    def is_reference(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.template.symbols

    def check_value(
        self, path: str, value: Any, type_name: str, where: Field | None, seen: frozenset[str], *, item: bool = False
    ) -> None:
        """`where` is the model field the value belongs to (for enums and limits); `item` marks an array item."""
        if value is None:  # null: the property is left out of the request
            return
        if _is_expression(value):
            self.check_expression(path, value, type_name, where, seen, item=item)
            return
        if self.is_reference(value):
            self.check_reference(path, value, type_name, where, seen, item=item)
            return
        if type_name == "object" or type_name.startswith("{object"):
            return
        if type_name.startswith("[") and type_name.endswith("]"):
            if not isinstance(value, list):
                self.report(path, f"expected an array ({type_name}), found {_describe(value)}")
                return
            self.check_length(path, value, where)
            for index, element in enumerate(value):
                self.check_value(f"{path}[{index}]", element, type_name[1:-1], where, seen, item=True)
            return
        if type_name.startswith("{") and type_name.endswith("}"):
            if not isinstance(value, dict):
                self.report(path, f"expected an object of {type_name[1:-1]} values, found {_describe(value)}")
                return
            for key, item in value.items():
                self.check_value(f"{path}.{_strip_quotes(key)}", item, type_name[1:-1], None, seen)
            return
        if type_name in _PRIMITIVES:
            self.check_literal(path, value, type_name, where, item=item)
            return
        model = getattr(models_module(self.schema.module), type_name, None)
        if model is None or not hasattr(model, "_attribute_map"):
            self.report(path, f"the models have no type {type_name!r} to check against")
            return
        if not isinstance(value, dict):
            self.report(path, f"expected an object ({type_name}), found {_describe(value)}")
            return
        self.check_object(path, value, model, seen)

    def check_literal(self, path: str, value: Any, type_name: str, where: Field | None, *, item: bool = False) -> None:
        kind = _PRIMITIVES[type_name]
        if isinstance(value, str) and "${" in value:  # an interpolated string: a string, value unknown
            if kind != "string":
                self.report(path, f"expected {kind} ({type_name}), found an interpolated string")
            return
        actual = _kind_of(value)
        if not (actual == kind or (kind == "number" and actual == "int")):
            self.report(path, f"expected {kind} ({type_name}), found {_describe(value)}")
            return
        if where is None:
            return
        allowed = enum_values(where.owner, where.attr) if kind == "string" else None
        if allowed is not None and value not in allowed:
            self.report(path, f"{value!r} is not one of {allowed}{_case_hint(value, allowed)}")
        if item:  # the field's limits are the array's, not its items'
            return
        self.check_length(path, value, where)
        rules = (getattr(where.owner, "_validation", {}) or {}).get(where.attr, {})
        if isinstance(value, int | float) and not isinstance(value, bool):
            if "maximum" in rules and value > rules["maximum"]:
                self.report(path, f"{value} is above the maximum {rules['maximum']}")
            if "minimum" in rules and value < rules["minimum"]:
                self.report(path, f"{value} is below the minimum {rules['minimum']}")
        if isinstance(value, str) and "pattern" in rules and not re.search(rules["pattern"], value):
            self.report(path, f"{value!r} does not match {rules['pattern']}")

    def check_length(self, path: str, value: Any, where: Field | None) -> None:
        if where is None or not isinstance(value, str | list):
            return
        rules = (getattr(where.owner, "_validation", {}) or {}).get(where.attr, {})
        longest = rules.get("max_length", rules.get("max_items"))
        shortest = rules.get("min_length", rules.get("min_items"))
        if longest is not None and len(value) > longest:
            self.report(path, f"{_describe(value)} is longer than {longest}")
        if shortest is not None and len(value) < shortest:
            self.report(path, f"{_describe(value)} is shorter than {shortest}")

    def check_expression(
        self, path: str, value: dict[str, Any], type_name: str, where: Field | None, seen: frozenset[str], *, item: bool
    ) -> None:
        operator = value.get("operator") or {}
        if operator.get("type") == "conditional":
            operands = operator["operands"]
            self.check_value(path, operands["true_value"], type_name, where, seen, item=item)
            self.check_value(path, operands["false_value"], type_name, where, seen, item=item)
        # Any other expression (a function call, a property read, arithmetic) is known only at deployment.

    def check_reference(
        self, path: str, name: str, type_name: str, where: Field | None, seen: frozenset[str], *, item: bool
    ) -> None:
        if name in seen:
            return
        if name in self.template.variables:
            self.check_value(path, self.template.variables[name]["value"], type_name, where, seen | {name}, item=item)
            return
        declaration = self.template.parameters.get(name)
        if declaration is None:  # a resource or module symbol: its type is the provider's business
            return
        declared = str(declaration.get("type", "")).lower()
        expected = _expected_kind(type_name)
        if expected and declared in _PARAM_KINDS and not (_PARAM_KINDS[declared] & expected):
            self.report(path, f"parameter {name} is {declared}, the schema expects {type_name}")
            return
        for allowed in _decorator(declaration, "allowed") or []:
            self.check_value(f"{path} (@allowed of {name})", allowed, type_name, where, seen | {name}, item=item)
        default = declaration.get("default")
        if default is not None and not _is_expression(default):
            self.check_value(f"{path} (default of {name})", default, type_name, where, seen | {name}, item=item)

    # Objects -------------------------------------------------------------------------------------

    def check_object(
        self, path: str, body: dict[str, Any], cls: type, seen: frozenset[str], *, root: bool = False
    ) -> None:
        body = {_strip_quotes(key): value for key, value in body.items()}
        cls = resolve_subtype(cls, body, lambda key, message: self.report(_join(path, key), message))
        self.check_tree(path, body, wire_tree(cls), cls, seen, root=root)

    def check_tree(
        self, path: str, body: dict[str, Any], tree: Tree, cls: type, seen: frozenset[str], *, root: bool = False
    ) -> None:
        for key, value in body.items():
            if root and key in BICEP_KEYS:
                continue
            node = tree.get(key)
            where = _join(path, key)
            if node is None:
                self.report(where, f"{cls.__name__} has no property {key!r}{self.hint(tree, key, where)}")
            elif isinstance(node, dict):
                if isinstance(value, dict) and not _is_expression(value):
                    self.check_tree(where, {_strip_quotes(k): v for k, v in value.items()}, node, cls, seen)
                elif value is not None and not self.is_reference(value) and not isinstance(value, dict):
                    self.report(where, f"expected an object, found {_describe(value)}")
            elif node.readonly:
                self.report(where, f"{key!r} is read-only: the provider sets it")
            else:
                self.check_value(where, value, node.type, node, seen)
        for key, node in tree.items():
            missing = isinstance(node, Field) and node.required and not node.readonly and key not in body
            if missing and not (root and key in BICEP_KEYS):
                self.report(_join(path, key), f"{cls.__name__} requires {key!r}")

    def hint(self, tree: Tree, key: str, where: str) -> str:
        same = [name for name in tree if name.lower() == key.lower()]
        if same:
            return f"; the schema spells it {same[0]!r} (ARM ignores the case of names, Bicep warns about it)"
        close = difflib.get_close_matches(key, list(tree), n=1, cutoff=0.75)
        if close:
            return f"; did you mean {close[0]!r}?"
        root = model_class(self.schema, self.schema.body)
        elsewhere = [p for p in _all_paths(root) if p.rsplit(".", 1)[-1].lower() == key.lower() and p != where]
        if elsewhere:
            return f"; it belongs at {elsewhere[0]}"
        return ""


def _is_expression(value: Any) -> bool:
    """pycep's form of an expression: {'operator': {'type', 'operands'}} or {'function': {'type', ...}}.

    A literal object can have a property named `operator` too (metric criteria do), so the shape counts.
    """
    if not isinstance(value, dict) or len(value) != 1:
        return False
    ((key, inner),) = value.items()
    return key in ("operator", "function") and isinstance(inner, dict) and "type" in inner


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _expected_kind(type_name: str) -> set[str]:
    if type_name in _PRIMITIVES:
        return {_PRIMITIVES[type_name]}
    if type_name.startswith("["):
        return {"array"}
    if type_name == "object":
        return set()
    return {"object"}


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{_kind_of(value)} {text if len(text) <= 60 else text[:57] + '...'}"


# --- References to other resources' properties ------------------------------------------------


def _chain(node: Any) -> list[str] | None:
    """`a.b.c` as pycep nests it (right-leaning property accessors), or None for anything else."""
    if isinstance(node, str):
        return [node] if re.fullmatch(r"[A-Za-z_]\w*", node) else None
    if _is_expression(node) and node.get("operator", {}).get("type") == "property_accessor":
        operands = node["operator"]["operands"]
        left, right = _chain(operands["operand_1"]), _chain(operands["operand_2"])
        if left is not None and right is not None:
            return left + right
    return None


def _references(node: Any) -> Iterator[list[str]]:
    """Every dotted read (`x.properties.y`), in expressions and in '${...}' interpolations alike."""
    chain = _chain(node)
    if chain is not None and len(chain) > 1:
        yield chain
        return
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str):
                yield from _references_in_text(key)
            yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)
    elif isinstance(node, str):
        yield from _references_in_text(node)


def _references_in_text(text: str) -> Iterator[list[str]]:
    for inner in _INTERPOLATION.findall(text):
        match = _REFERENCE_CHAIN.match(inner)
        if match:
            yield match.group(1).split(".")


def check_reads(template: Template, problems: list[Problem]) -> None:
    """`sym.properties.x.y`: each step must exist in the model the provider returns for sym."""
    for chain in _references(template.parsed):
        symbol, *steps = chain
        resource = template.resources.get(symbol)
        if resource is None:
            continue
        key = (resource["type"], resource["api_version"])
        schema = SCHEMAS.get(key)
        if schema is None:
            continue  # reported once, for the declaration
        checker = Checker(template, symbol, *key, schema, problems)
        cls: type | None = model_class(schema, schema.read_model)
        tree: Tree | None = wire_tree(cls) if cls else None
        walked: list[str] = [symbol]
        for step in steps:
            walked.append(step)
            if tree is None:
                break
            node = tree.get(step)
            if node is None:
                checker.report(".".join(walked), f"{schema.read_model} has no property {step!r} to read")
                break
            if isinstance(node, dict):
                tree = node
                continue
            inner = getattr(models_module(schema.module), node.type, None)
            tree = wire_tree(inner) if isinstance(inner, type) and hasattr(inner, "_attribute_map") else None


# --- Entry point -------------------------------------------------------------------------------


def check_templates(infra: Path) -> list[Problem]:
    """Every schema problem in the .bicep files under `infra` (an empty list when there is none)."""
    problems: list[Problem] = []
    for path in sorted(infra.rglob("*.bicep")):
        template = Template.load(path, infra)
        for symbol, resource in template.resources.items():
            key = (resource["type"], resource["api_version"])
            schema = SCHEMAS.get(key)
            if schema is None:
                problems.append(
                    Problem(template.label, symbol, *key, "", "no schema is pinned for this type and API version")
                )
                continue
            if resource.get("existing"):
                continue  # only its name and scope are declared; its reads are checked below
            config = resource["config"]
            body = config["config"] if "condition" in config and "config" in config else config
            checker = Checker(template, symbol, *key, schema, problems)
            checker.check_object("", body, model_class(schema, schema.body), frozenset(), root=True)
        check_reads(template, problems)
    return problems
