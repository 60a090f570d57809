"""The referral resource: pydantic models, enums, limits and status transitions. Pure: no I/O.

Field names are the camelCase wire names, so a model dump is the JSON a caller sees. Absent and null
mean the same thing (JSON merge-patch removes a property with null), so dumps leave out None.
Every string and list has a maximum (see `Limits`), and a whole referral has one too, so that the
largest valid referral, any Unicode included, fits one Table Storage entity with its recent history.
"""

# No `from __future__ import annotations` in this module: with it, pydantic evaluates every field's
# annotation from its string (compile + eval) while it builds each model class at import, a few ms of
# every cold start; written as objects, they are evaluated once, as the class body runs.

import math
import re
from datetime import date
from enum import Enum, StrEnum
from functools import lru_cache
from typing import Annotated, Any, Self

import pycountry
from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from shared.errors import InvalidStatusTransition
from shared.guid import parse_guid


class Limits:
    """Documented maxima (README "Limits"); the OpenAPI schema is tested against these."""

    ID = 128
    SHORT_TEXT = 256  # names, address lines, contact fields, list items
    EMAIL = 254  # RFC 5321 path limit
    PHONE = 64
    LONG_TEXT = 4000  # notes, customerNeed, additionalInformation, solutions
    LIST_ITEMS = 100  # industries, products, services
    PARTICIPANTS = 50
    USERS_PER_PARTICIPANT = 10
    DEAL_VALUE = 1e15
    # The whole referral as compact JSON, activities excluded, in UTF-16 code units (what Table Storage
    # counts). 200,000 units is at most 400 KB stored, which leaves room in the 1 MiB entity for the
    # newest 150 activities of history.
    REFERRAL_JSON_UNITS = 200_000
    REQUEST_BODY_BYTES = 256 * 1024
    ACTIVITIES_RETURNED = 100
    # Statuses of participants already on the referral that one update may change (only an admin
    # changes more than its own). Each is recorded in the activity's `changes` (~110 characters), and
    # the referral's row holds its newest activities beside the referral: this bounds an activity to
    # about 2 KB (tests/unit/test_rules.py). An admin's removal of an Invited entry counts (its status
    # goes to none). New participants are not counted: one update adds at most 49.
    PARTICIPANT_STATUS_CHANGES = 10
    # Invitations one participant organization added that are still Invited, at once (shared/policy.py);
    # the creating organization and admins have no such limit.
    PENDING_INVITATIONS_PER_INVITER = 5
    # The last participant slots, which only the creating organization and admins fill: another inviter
    # stops at PARTICIPANTS - RESERVED_PARTICIPANTS, so the creator can always invite.
    RESERVED_PARTICIPANTS = 10


class ReferralStatus(StrEnum):
    PENDING = "Pending"
    ACTIVE = "Active"
    WON = "Won"
    LOST = "Lost"


class ReferralSource(StrEnum):
    WEB_DIRECT = "WebDirect"
    PARTNER_LED = "PartnerLed"
    AGENT_LED = "AgentLed"
    P2P = "P2P"


class ParticipantStatus(StrEnum):
    # The seed lists Missed at position 3 as well as Expired; positions here are the fixed ones.
    INVITED = "Invited"
    ACCEPTED = "Accepted"
    REJECTED = "Rejected"
    EXPIRED = "Expired"
    MISSED = "Missed"


class ActivityAction(StrEnum):
    CREATED = "Created"
    UPDATED = "Updated"


ALLOWED_TRANSITIONS: dict[ReferralStatus, frozenset[ReferralStatus]] = {
    ReferralStatus.PENDING: frozenset({ReferralStatus.ACTIVE, ReferralStatus.LOST}),
    ReferralStatus.ACTIVE: frozenset({ReferralStatus.WON, ReferralStatus.LOST}),
    ReferralStatus.WON: frozenset(),
    ReferralStatus.LOST: frozenset(),
}
INITIAL_STATUSES = frozenset({ReferralStatus.PENDING, ReferralStatus.ACTIVE})


def check_transition(current: ReferralStatus | None, new: ReferralStatus) -> None:
    """Raise unless `current -> new` is allowed; `current` None means the referral is being created."""
    if current is None:
        if new not in INITIAL_STATUSES:
            raise InvalidStatusTransition(
                f"A referral is created as Pending or Active, not {new.value}.", target="status"
            )
        return
    if new != current and new not in ALLOWED_TRANSITIONS[current]:
        allowed = ", ".join(s.value for s in sorted(ALLOWED_TRANSITIONS[current], key=_position))
        raise InvalidStatusTransition(
            f"Status cannot move from {current.value} to {new.value}"
            + (f"; allowed next: {allowed}." if allowed else f"; {current.value} is final."),
            target="status",
        )


def _position(member: Enum) -> int:
    return list(type(member)).index(member)


def _enum_input[E: Enum](enum_type: type[E]) -> Any:
    """Accept an enum by name in any case, or by its integer position as the seed documents number them."""
    by_name = {member.value.lower(): member for member in enum_type}
    members = list(enum_type)

    def coerce(value: Any) -> Any:
        if isinstance(value, enum_type):
            return value
        if isinstance(value, str) and value.lower() in by_name:
            return by_name[value.lower()]
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON has one number type: 2.0 is the position 2 (JSON Schema agrees)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(members):
            return members[value]
        names = ", ".join(member.value for member in members)
        raise ValueError(f"must be one of {names} (or its position 0-{len(members) - 1})")

    return BeforeValidator(coerce)


@lru_cache(maxsize=1)
def _forbidden_text() -> re.Pattern[str]:
    """Text may hold any Unicode except unpaired surrogates (not storable) and control characters (C0,
    DEL and C1) other than tab, line feed and carriage return (they corrupt CRM exports and logs).
    Compiled at the first validation (a POST), not at import: its wide ranges take ~1.3 ms to compile,
    which every cold start would pay, GETs included."""
    return re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def _plain_text(value: str) -> str:
    if _forbidden_text().search(value):
        raise ValueError("must not contain control characters or unpaired surrogates")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


ShortText = Annotated[str, Field(max_length=Limits.SHORT_TEXT), AfterValidator(_plain_text)]
RequiredText = Annotated[ShortText, AfterValidator(_not_blank)]
LongText = Annotated[str, Field(max_length=Limits.LONG_TEXT), AfterValidator(_plain_text)]
TextList = Annotated[list[RequiredText], Field(max_length=Limits.LIST_ITEMS)]
PhoneNumber = Annotated[str, Field(max_length=Limits.PHONE), AfterValidator(_plain_text)]


def _email(value: str) -> str:
    problem = _email_problem(value)
    if problem is not None:
        raise ValueError(f"is not a valid email address ({problem})")
    return value


@lru_cache(maxsize=4096)
def _email_problem(value: str) -> str | None:
    """Why `value` is not an email address, or None. Remembered (bounded): an update validates the
    stored referral and the updated one, and checking one address costs ~30 us (docs/benchmarks.md)."""
    try:
        # Syntax only: a CRM must be able to store an address whose domain is down today.
        validate_email(value, check_deliverability=False)
    except EmailNotValidError as error:
        # The first clause only: what follows a colon or parenthesis quotes characters of the address,
        # and error messages name properties, never values.
        return re.split(r"[:(]", str(error), maxsplit=1)[0].strip(" .")
    return None


@lru_cache(maxsize=1)
def _country_codes() -> frozenset[str]:
    return frozenset(country.alpha_2 for country in pycountry.countries)


@lru_cache(maxsize=1)
def _currency_codes() -> frozenset[str]:
    return frozenset(currency.alpha_3 for currency in pycountry.currencies)


def _country(value: str) -> str:
    if value not in _country_codes():
        raise ValueError("must be an ISO 3166-1 alpha-2 country code in upper case, such as US or DE")
    return value


def _currency(value: str) -> str:
    if value not in _currency_codes():
        raise ValueError("must be an ISO 4217 currency code in upper case, such as USD or EUR")
    return value


def _iso_date(value: str) -> str:
    invalid = ValueError("must be a date as YYYY-MM-DD")
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
        raise invalid
    try:
        date.fromisoformat(value)
    except ValueError:
        raise invalid from None  # its message would quote the value
    return value


def _finite(value: float) -> float:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _guid(value: str) -> str:
    if parse_guid(value) != value:
        raise ValueError("must be a GUID in lower case (an Entra tenant id)")
    return value


Email = Annotated[str, Field(max_length=Limits.EMAIL), AfterValidator(_email)]
CountryCode = Annotated[str, Field(min_length=2, max_length=2), AfterValidator(_country)]
CurrencyCode = Annotated[str, Field(min_length=3, max_length=3), AfterValidator(_currency)]
IsoDate = Annotated[str, Field(max_length=10), AfterValidator(_iso_date)]
Amount = Annotated[int | float, Field(ge=0, le=Limits.DEAL_VALUE), AfterValidator(_finite)]
OrganizationId = Annotated[str, Field(max_length=36), AfterValidator(_guid)]
ServerId = Annotated[str, Field(max_length=Limits.ID), AfterValidator(_plain_text)]
Timestamp = Annotated[str, Field(max_length=40)]


class ApiModel(BaseModel):
    # Strict: a wrong JSON type is an error, never silently converted ("5" is not a number here).
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, defer_build=True)

    def to_json_dict(self) -> dict[str, Any]:
        return _without_empty_objects(self.model_dump(mode="json", exclude_none=True))


def _without_empty_objects(document: dict[str, Any]) -> dict[str, Any]:
    """An optional object with nothing in it (`"details": {}`) is the same as none: stored, returned
    and compared as absent, so sending one changes nothing."""
    result: dict[str, Any] = {}
    for name, value in document.items():
        if isinstance(value, dict):
            value = _without_empty_objects(value)
            if not value:
                continue
        elif isinstance(value, list):
            value = [_without_empty_objects(item) if isinstance(item, dict) else item for item in value]
        result[name] = value
    return result


class Contact(ApiModel):
    firstName: ShortText | None = None
    lastName: ShortText | None = None
    email: Email | None = None
    phoneNumber: PhoneNumber | None = None


class Address(ApiModel):
    addressLine1: ShortText | None = None
    addressLine2: ShortText | None = None
    city: ShortText | None = None
    state: ShortText | None = None
    postalCode: ShortText | None = None
    country: CountryCode | None = None


class CustomerProfile(ApiModel):
    id: ShortText | None = None
    name: RequiredText
    address: Address | None = None
    contact: Contact | None = None


class CustomerRequirements(ApiModel):
    industries: TextList | None = None
    products: TextList | None = None
    services: TextList | None = None
    solutions: LongText | None = None
    customerNeed: LongText | None = None


class ReferralDetails(ApiModel):
    notes: LongText | None = None
    dealValue: Amount | None = None
    currency: CurrencyCode | None = None
    closingDate: IsoDate | None = None

    @model_validator(mode="after")
    def _deal_value_needs_currency(self) -> Self:
        if self.dealValue is not None and self.currency is None:
            raise ValueError("currency is required when dealValue is set")
        return self


class Participant(ApiModel):
    id: ServerId
    organizationId: OrganizationId
    users: Annotated[list[Contact], Field(max_length=Limits.USERS_PER_PARTICIPANT)] | None = None
    invitedByParticipantId: ServerId | None = None
    status: Annotated[ParticipantStatus, _enum_input(ParticipantStatus)]


# The properties whose values an activity records (`changes`); any other change is only named in
# `changedProperties`, so no contact data or free text is ever copied into the history.
TRACKED_PROPERTIES = (
    "status",
    "referralSource",
    "details.dealValue",
    "details.currency",
    "details.closingDate",
    "customerProfile.address.country",
)
# ... and each participant's status, as `participants[<organizationId>].status`.
MAX_CHANGES = len(TRACKED_PROPERTIES) + Limits.PARTICIPANTS
# A tracked value: an enum name, a currency or country code, a date, or a deal value.
ChangeValue = Annotated[str, Field(max_length=16)] | Amount


class ActivityChange(ApiModel):
    """One tracked property's value before and after a change; an absent value is left out."""

    # `from` is a Python keyword: the field is named `from_` and read and written as `from`.
    model_config = ConfigDict(validate_by_alias=True, validate_by_name=False, serialize_by_alias=True)

    property: Annotated[str, Field(max_length=64)]
    from_: ChangeValue | None = Field(default=None, alias="from")
    to: ChangeValue | None = None


class Activity(ApiModel):
    date: Timestamp
    organizationId: OrganizationId
    action: Annotated[ActivityAction, _enum_input(ActivityAction)]
    fromStatus: Annotated[ReferralStatus, _enum_input(ReferralStatus)] | None = None
    toStatus: Annotated[ReferralStatus, _enum_input(ReferralStatus)]
    changedProperties: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=64)]
    # Absent from activities written before field-level changes were recorded; they read as they are.
    changes: Annotated[list[ActivityChange], Field(max_length=MAX_CHANGES)] | None = None


class Referral(ApiModel):
    """A referral as stored and returned, without its activities (those are kept beside it)."""

    id: Annotated[str, Field(max_length=Limits.ID)]
    createdDate: Timestamp
    updatedDate: Timestamp
    status: Annotated[ReferralStatus, _enum_input(ReferralStatus)]
    referralSource: Annotated[ReferralSource, _enum_input(ReferralSource)]
    customerProfile: CustomerProfile
    customerRequirements: CustomerRequirements | None = None
    details: ReferralDetails | None = None
    additionalInformation: LongText | None = None
    participants: Annotated[list[Participant], Field(max_length=Limits.PARTICIPANTS)]


# Properties a caller may send but not change: accepted only when equal to the stored value.
READ_ONLY_PROPERTIES = ("id", "createdDate", "updatedDate", "activities")
REFERRAL_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
