"""Who may see and change what. Pure: callers and referrals in, a decision or `AccessDenied` out.

- An admin (the `Referrals.Admin` role in a token of our own tenant) sees and changes every referral.
- A partner sees only referrals its organization participates in; for any other, the answer is the
  same 404 as for a referral that does not exist (the service checks `can_see` before anything else).
- Invited: may only accept or reject its own invitation.
- Accepted: may change status, customerProfile, customerRequirements, details and
  additionalInformation, edit its own participant entry's users, and invite organizations.
- Rejected, Expired, Missed: may read, not write.
- Nobody but an admin changes another organization's participant entry, and partners create only
  PartnerLed or P2P referrals.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from shared.errors import AccessDenied
from shared.model import Participant, ParticipantStatus, Referral, ReferralSource


@dataclass(frozen=True)
class Caller:
    """The authenticated organization behind a request."""

    organization_id: str
    can_read: bool
    can_write: bool
    is_admin: bool


PARTNER_CREATABLE_SOURCES = frozenset({ReferralSource.PARTNER_LED, ReferralSource.P2P})
ACCEPTED_MAY_CHANGE = frozenset(
    {"status", "customerProfile", "customerRequirements", "details", "additionalInformation"}
)
INVITATION_ANSWERS = frozenset({ParticipantStatus.ACCEPTED, ParticipantStatus.REJECTED})


def can_see(caller: Caller, organizations: Collection[str]) -> bool:
    return caller.is_admin or caller.organization_id in organizations


def check_create(caller: Caller, referral: Referral) -> None:
    if not caller.is_admin and referral.referralSource not in PARTNER_CREATABLE_SOURCES:
        raise AccessDenied("Partners may create PartnerLed or P2P referrals only.", target="referralSource")
    for participant in referral.participants:
        if participant.organizationId == caller.organization_id:
            continue
        if participant.status != ParticipantStatus.INVITED and not caller.is_admin:
            raise _denied_other_entry(participant)


def check_update(caller: Caller, before: Referral, after: Referral) -> None:
    """Raise `AccessDenied` when `caller` may not turn `before` into `after`."""
    if caller.is_admin:
        return
    mine = _entry_of(before, caller.organization_id)
    if mine is None:  # can_see was checked first; this guards a rule change
        raise AccessDenied("Only participants may change a referral.")

    changed = [
        name
        for name in Referral.model_fields
        if name not in ("participants", "updatedDate") and getattr(before, name) != getattr(after, name)
    ]
    old_entries = {p.organizationId: p for p in before.participants}

    if mine.status == ParticipantStatus.INVITED:
        if changed:
            raise AccessDenied("An invited organization may only accept or reject its invitation.", target=changed[0])
        for entry in after.participants:
            old = old_entries.get(entry.organizationId)
            if old == entry:
                continue
            if entry.organizationId != caller.organization_id:
                raise AccessDenied(
                    "An invited organization may only accept or reject its invitation.",
                    target="participants",
                )
            if entry.model_copy(update={"status": mine.status}) != mine:
                raise AccessDenied(
                    "An invited organization may only change its own participant status.",
                    target="participants",
                )
            if entry.status not in INVITATION_ANSWERS:
                raise AccessDenied("An invitation is answered with Accepted or Rejected.", target="participants")
        return

    if mine.status != ParticipantStatus.ACCEPTED:
        raise AccessDenied(f"A participant whose status is {mine.status.value} may read the referral, not change it.")
    for name in changed:
        if name not in ACCEPTED_MAY_CHANGE:
            raise AccessDenied(f"Partners cannot change '{name}'.", target=name)
    for entry in after.participants:
        old = old_entries.get(entry.organizationId)
        if old is None:
            if entry.status != ParticipantStatus.INVITED:
                raise _denied_other_entry(entry)
        elif old != entry:
            if entry.organizationId != caller.organization_id:
                raise _denied_other_entry(entry)
            if entry.status != old.status:
                raise AccessDenied(
                    "An accepted organization cannot change its own participant status.",
                    target="participants",
                )


def _entry_of(referral: Referral, organization_id: str) -> Participant | None:
    for participant in referral.participants:
        if participant.organizationId == organization_id:
            return participant
    return None


def _denied_other_entry(participant: Participant) -> AccessDenied:
    return AccessDenied(
        f"Only organization {participant.organizationId} (or an admin) can change its participant entry;"
        " an invitation starts as Invited.",
        target="participants",
    )
