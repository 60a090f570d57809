"""Request documents: property-name matching, JSON merge-patch, and what a change changed. Pure.

A request body names properties in any case (`CustomerProfile` or `customerProfile`); `canonicalize`
rewrites it to the wire names of the models before anything else looks at it, so every later step
deals with one spelling. `merge_patch` is RFC 7386. `changed_paths` names what differs between two
referrals for the activity history and for access checks.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable
from functools import cache
from typing import Any, Union

from pydantic import BaseModel

from shared.errors import InvalidRequest
from shared.model import Activity, Referral

JsonObject = dict[str, Any]


@cache
def _properties_of(model: type[BaseModel]) -> dict[str, tuple[str, type[BaseModel] | None]]:
    """lower-case name -> (wire name, nested model when the property holds objects of one). The wire
    name is the field's alias where it has one (`ActivityChange.from_` is `from`)."""
    return {
        (field.alias or name).lower(): (field.alias or name, _nested_model(field.annotation))
        for name, field in model.model_fields.items()
    }


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _nested_model(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType, list):
        for argument in typing.get_args(annotation):
            nested = _nested_model(argument)
            if nested is not None:
                return nested
    return None


def _request_properties() -> dict[str, tuple[str, type[BaseModel] | None]]:
    properties = dict(_properties_of(Referral))
    properties["activities"] = ("activities", Activity)
    return properties


def canonicalize(body: Any) -> JsonObject:
    """Rewrite a request body's property names to the wire names; unknown or repeated names -> 400."""
    return _canonical_body(body, _request_properties())


def canonical_names(body: Any, names: Iterable[str]) -> JsonObject:
    """The same for a flat body whose properties are `names` (a subscription's, say)."""
    return _canonical_body(body, {name.lower(): (name, None) for name in names})


def _canonical_body(body: Any, properties: dict[str, tuple[str, type[BaseModel] | None]]) -> JsonObject:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return _canonical_object(body, properties, "")


def _canonical_value(value: Any, model: type[BaseModel] | None, path: str) -> Any:
    if model is None:
        return value
    if isinstance(value, dict):
        return _canonical_object(value, _properties_of(model), path)
    if isinstance(value, list):
        return [_canonical_value(item, model, f"{path}[{index}]") for index, item in enumerate(value)]
    return value  # a wrong type: left for the model to reject with a precise message


def _canonical_object(
    value: JsonObject, properties: dict[str, tuple[str, type[BaseModel] | None]], path: str
) -> JsonObject:
    result: JsonObject = {}
    for key, item in value.items():
        target = f"{path}.{key}" if path else key
        known = properties.get(key.lower())
        if known is None:
            raise InvalidRequest(f"Unknown property '{target}'.", target=target)
        name, nested = known
        if name in result:
            raise InvalidRequest(f"Property '{target}' is given more than once.", target=target)
        result[name] = _canonical_value(item, nested, f"{path}.{name}" if path else name)
    return result


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null removes, anything else (lists too) replaces."""
    if not isinstance(patch, dict):
        return patch
    merged: JsonObject = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def changed_paths(before: JsonObject, after: JsonObject) -> list[str]:
    """Dotted names of what differs, one level into nested objects: `status`, `details.dealValue`.

    Two levels keep an activity small and bounded whatever the change, yet say what moved.
    """
    changed: list[str] = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            changed.extend(
                f"{key}.{inner}" for inner in sorted(set(old) | set(new)) if old.get(inner) != new.get(inner)
            )
        else:
            changed.append(key)
    return changed
