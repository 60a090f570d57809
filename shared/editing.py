"""Turning a request into a new referral: creation, merge-patch updates, participants, activities. Pure.

Everything here works on plain JSON documents and the pydantic models; the service layer reads and
writes storage around it and retries it when a concurrent writer got there first.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import ValidationError

from shared.errors import InvalidRequest, PayloadTooLarge
from shared.model import (
    TRACKED_PROPERTIES,
    ActivityAction,
    Limits,
    ParticipantStatus,
    Referral,
    ReferralStatus,
    check_transition,
)
from shared.patching import JsonObject, changed_paths, merge_patch
from shared.policy import Caller, check_create, check_participants, check_update
from shared.store import to_json, utf16_units

SERVER_MANAGED = ("id", "createdDate", "updatedDate")


def create(caller: Caller, referral_id: str, patch: JsonObject, now: str) -> tuple[JsonObject, JsonObject]:
    """A new referral from a request, and its Created activity."""
    for name in ("createdDate", "updatedDate", "activities"):
        if patch.get(name) is not None:
            raise InvalidRequest(f"'{name}' is set by the service.", target=name)
    creator = {
        "id": _new_participant_id(),
        "organizationId": caller.organization_id,
        "status": ParticipantStatus.ACCEPTED.value,
    }
    # Merged onto nothing, so a null is what it is on every other write: the property left out.
    requested = merge_patch({}, {key: value for key, value in patch.items() if key not in ("id", "participants")})
    invited = patch.get("participants")
    invited = [] if invited is None else invited
    if isinstance(invited, list):  # a create ignores nulls here too: `status: null` removes nothing
        invited = [merge_patch({}, entry) if isinstance(entry, dict) else entry for entry in invited]
    document: JsonObject = {
        "id": referral_id,
        "createdDate": now,
        "updatedDate": now,
        "status": ReferralStatus.PENDING.value,
        **requested,
        "participants": merge_participants(caller, [creator], invited, creator["id"]),
    }
    if "referralSource" not in requested:
        raise InvalidRequest("'referralSource' is required to create a referral.", target="referralSource")
    referral = validate(document)
    if referral.participants[0].status != ParticipantStatus.ACCEPTED:
        position = next(i for i, entry in enumerate(invited) if entry["organizationId"] == caller.organization_id)
        raise InvalidRequest(
            "The creating organization is an Accepted participant.", target=f"participants[{position}].status"
        )
    check_transition(None, referral.status)
    check_create(caller, referral)
    check_participants(caller, referral.participants[:1], referral.participants, _request_paths(invited))
    created = referral.to_json_dict()
    _check_size(created)
    changed = changed_paths({}, _tracked(created))
    return created, activity(caller, ActivityAction.CREATED, None, referral, changed, field_changes(None, created), now)


def update(
    caller: Caller,
    current: JsonObject,
    shown_activities: list[JsonObject],
    patch: JsonObject,
    now: str,
) -> tuple[JsonObject, JsonObject] | None:
    """The updated referral and its Updated activity, or None when the request changes nothing."""
    for name in SERVER_MANAGED:
        if name in patch and patch[name] != current.get(name):
            raise InvalidRequest(f"'{name}' is read-only and differs from the stored value.", target=name)
    if "activities" in patch and patch["activities"] != shown_activities:
        raise InvalidRequest("'activities' is read-only and differs from the stored history.", target="activities")

    before = validate(current)
    mine = next((p for p in current["participants"] if p["organizationId"] == caller.organization_id), None)
    requested = {
        key: value for key, value in patch.items() if key not in (*SERVER_MANAGED, "activities", "participants")
    }
    merged = merge_patch(current, requested)
    paths: dict[str, str] = {}
    if "participants" in patch:
        merged["participants"] = merge_participants(
            caller, current["participants"], patch["participants"], mine["id"] if mine else None
        )
        paths = _request_paths(patch["participants"])
    after = validate(merged)
    stored, result = before.to_json_dict(), after.to_json_dict()
    if result == stored:  # compared as stored, so {"details": {}} over no details is no change either
        return None
    check_update(caller, before, after)
    check_participants(caller, before.participants, after.participants, paths)
    check_transition(before.status, after.status)

    updated = {**result, "updatedDate": now}
    _check_size(updated)
    changed = changed_paths(_tracked(stored), _tracked(updated))
    changes = field_changes(stored, updated)
    _check_participant_status_changes(changes)
    return updated, activity(caller, ActivityAction.UPDATED, before.status, after, changed, changes, now)


def merge_participants(
    caller: Caller, stored: list[JsonObject], requested: Any, inviter_id: str | None
) -> list[JsonObject]:
    """Match requested entries to stored ones by organizationId; unknown organizations are invited.
    An entry `{"organizationId": ..., "status": null}` removes that organization's entry (who may is
    `check_participants`); for an organization that is not a participant it does nothing, so a
    repeated removal changes nothing rather than inviting it again."""
    if not isinstance(requested, list):
        raise InvalidRequest(
            "'participants' must be a list; an entry is removed with {organizationId, status: null}.",
            target="participants",
        )
    if len(requested) > Limits.PARTICIPANTS:
        raise InvalidRequest(f"At most {Limits.PARTICIPANTS} participants.", target="participants")
    result = [dict(entry) for entry in stored]
    index_of = {entry["organizationId"]: index for index, entry in enumerate(result)}
    seen: set[str] = set()
    removed: set[str] = set()
    for position, entry in enumerate(requested):
        path = f"participants[{position}]"
        if not isinstance(entry, dict):
            raise InvalidRequest("A participant must be an object.", target=path)
        organization = entry.get("organizationId")
        if not isinstance(organization, str):
            raise InvalidRequest("A participant needs its organizationId.", target=f"{path}.organizationId")
        if organization in seen:
            raise InvalidRequest("This organization is listed twice.", target=f"{path}.organizationId")
        seen.add(organization)
        if organization in index_of:
            existing = result[index_of[organization]]
            for name in ("id", "invitedByParticipantId"):
                if name in entry and entry[name] != existing.get(name):
                    raise InvalidRequest(f"'{name}' is read-only.", target=f"{path}.{name}")
            if _is_removal(entry, path):
                removed.add(organization)
            else:
                result[index_of[organization]] = merge_patch(existing, entry)
        else:
            for name in ("id", "invitedByParticipantId"):
                if name in entry:
                    raise InvalidRequest(f"'{name}' is set by the service.", target=f"{path}.{name}")
            if _is_removal(entry, path):
                continue
            invited = {"status": ParticipantStatus.INVITED.value, **merge_patch({}, entry)}
            invited["id"] = _new_participant_id()
            if inviter_id is not None:
                invited["invitedByParticipantId"] = inviter_id
            index_of[organization] = len(result)
            result.append(invited)
    return [entry for entry in result if entry["organizationId"] not in removed]


def _is_removal(entry: JsonObject, path: str) -> bool:
    """Whether a requested entry removes its organization's entry: `status: null` and nothing else."""
    if "status" not in entry or entry["status"] is not None:
        return False
    for name in entry:
        if name not in ("organizationId", "status", "id", "invitedByParticipantId"):
            raise InvalidRequest(
                "A removal names the organizationId with status null, nothing else.", target=f"{path}.{name}"
            )
    return True


def _request_paths(requested: list[JsonObject]) -> dict[str, str]:
    """Each requested organization's entry in the request, as an error target: `participants[2]`."""
    return {entry["organizationId"]: f"participants[{position}]" for position, entry in enumerate(requested)}


def validate(document: JsonObject) -> Referral:
    try:
        return Referral.model_validate(document)
    except ValidationError as error:
        raise _invalid(error) from None


def activity(
    caller: Caller,
    action: ActivityAction,
    from_status: ReferralStatus | None,
    after: Referral,
    changed: list[str],
    changes: list[JsonObject],
    now: str,
) -> JsonObject:
    entry: JsonObject = {
        "date": now,
        "organizationId": caller.organization_id,
        "action": action.value,
        "toStatus": after.status.value,
        "changedProperties": changed,
    }
    if from_status is not None:
        entry["fromStatus"] = from_status.value
    entry["changes"] = changes
    return entry


def field_changes(before: JsonObject | None, after: JsonObject) -> list[JsonObject]:
    """The values a change moved, for the tracked properties only (`TRACKED_PROPERTIES`, then each
    participant's status in participant order, then each removed participant's): `{"property",
    "from"?, "to"?}` with the values as stored, `from` left out when the property was absent and `to`
    when it is removed (a removed participant's status goes from Invited to nothing). `before` None
    is a creation: everything set comes from nothing, every participant (the creator included)
    appears with its first status. Contact data and free text are never tracked."""
    previous = before or {}
    changes = [_change(path, _value_at(previous, path), _value_at(after, path)) for path in TRACKED_PROPERTIES]
    statuses = {entry["organizationId"]: entry["status"] for entry in previous.get("participants", [])}
    for entry in after["participants"]:
        organization = entry["organizationId"]
        changes.append(
            _change(f"participants[{organization}].status", statuses.pop(organization, None), entry["status"])
        )
    for organization, status in statuses.items():  # removed
        changes.append(_change(f"participants[{organization}].status", status, None))
    return [change for change in changes if change is not None]


def _value_at(document: JsonObject, path: str) -> Any:
    value: Any = document
    for name in path.split("."):
        value = value.get(name) if isinstance(value, dict) else None
    return value


def _change(path: str, old: Any, new: Any) -> JsonObject | None:
    if old == new:
        return None
    change: JsonObject = {"property": path}
    if old is not None:
        change["from"] = old
    if new is not None:
        change["to"] = new
    return change


def _tracked(document: JsonObject) -> JsonObject:
    """What an activity reports as changed: everything but the server-managed bookkeeping."""
    return {key: value for key, value in document.items() if key not in SERVER_MANAGED}


def _check_participant_status_changes(changes: list[JsonObject]) -> None:
    moved = sum(1 for change in changes if change["property"].startswith("participants[") and "from" in change)
    if moved > Limits.PARTICIPANT_STATUS_CHANGES:
        raise InvalidRequest(
            f"One update changes the status of at most {Limits.PARTICIPANT_STATUS_CHANGES} participants"
            f" ({moved} here); send the rest in further updates.",
            target="participants",
        )


def _check_size(document: JsonObject) -> None:
    units = utf16_units(to_json(document))
    if units > Limits.REFERRAL_JSON_UNITS:
        raise PayloadTooLarge(
            f"The referral would be {units} characters of JSON; at most {Limits.REFERRAL_JSON_UNITS} are stored."
        )


def _new_participant_id() -> str:
    return str(uuid.uuid4())


def _invalid(error: ValidationError) -> InvalidRequest:
    problems = []
    for item in error.errors(include_url=False)[:20]:
        location = _path(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        problems.append({"code": "invalidRequest", "message": f"{location or 'body'}: {message}", "target": location})
    first = problems[0]
    return InvalidRequest(first["message"], target=first["target"] or None, details=problems[1:] or None)


def _path(location: tuple[Any, ...]) -> str:
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif "[" in str(part) or part in ("function-after", "function-before", "int", "float"):
            continue  # pydantic's names for validator steps and union members (Amount), not properties
        else:
            path += f".{part}" if path else str(part)
    return path
