"""GUIDs as Entra writes them: tenant ids, organization ids and client ids."""

from __future__ import annotations

import uuid


def parse_guid(value: object) -> str | None:
    """The canonical lower-case form of a GUID, or None when `value` is not one.

    Only the plain 8-4-4-4-12 form is accepted (in any case): `uuid.UUID` also takes braces, a urn: prefix
    and bare hex, which would let two spellings of one organization look like two organizations.
    """
    if not isinstance(value, str) or len(value) != 36:
        return None
    try:
        canonical = str(uuid.UUID(value))
    except ValueError:
        return None
    return canonical if canonical == value.lower() else None
