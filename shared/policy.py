"""Who may see and change what. Pure: callers and referrals in, a decision or an error out.

- An admin (the `Referrals.Admin` role in a token of our own tenant) sees and changes every referral,
  and is the only one who removes a participant entry: an Invited one, never the creator's.
- A partner sees only referrals its organization participates in; for any other, the answer is the
  same 404 as for a referral that does not exist (the service checks `can_see` before anything else).
- Every participant may replace or clear the `users` of its own entry, whatever its status: they are
  its own to choose (and existing data may hold users its inviter wrote there).
- Invited: may otherwise only accept or reject its own invitation (in the same request or not).
- Accepted: may change status, customerProfile, customerRequirements, details and
  additionalInformation, and invite organizations.
- Rejected, Expired, Missed: may read (and set their own users), nothing else.
- Nobody but an admin changes another organization's participant entry, and partners create only
  PartnerLed or P2P referrals (403).
- Invitations (`check_participants`, 400) go only to onboarded organizations; a partner's invitation
  carries no users. So that the creator can always invite, any other participant has at most
  `Limits.PENDING_INVITATIONS_PER_INVITER` of its invitations pending at once and fills no slot past
  `Limits.PARTICIPANTS - Limits.RESERVED_PARTICIPANTS`; the creating organization (participants[0])
  and admins have neither limit.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import NamedTuple

from shared.errors import AccessDenied, InvalidRequest
from shared.model import Limits, Participant, ParticipantStatus, Referral, ReferralSource


# A NamedTuple, not a dataclass: see `shared/__init__.py`.
class Caller(NamedTuple):
    """The authenticated organization behind a request."""

    organization_id: str
    can_read: bool
    can_write: bool
    is_admin: bool
    # The organizations onboarded to the API (AUTH_TENANT_ID and AUTH_ALLOWED_TENANTS, see
    # `AuthSettings.onboarded_tenant_ids`): the only ones an invitation can go to. Empty: none.
    onboarded: frozenset[str] = frozenset()


PARTNER_CREATABLE_SOURCES = frozenset({ReferralSource.PARTNER_LED, ReferralSource.P2P})
ACCEPTED_MAY_CHANGE = frozenset(
    {"status", "customerProfile", "customerRequirements", "details", "additionalInformation"}
)
INVITATION_ANSWERS = frozenset({ParticipantStatus.ACCEPTED, ParticipantStatus.REJECTED})


def check_can_write(caller: Caller) -> None:
    """403 unless the token grants Referrals.ReadWrite (every write, and every subscription route)."""
    if not caller.can_write:
        raise AccessDenied("This token does not grant Referrals.ReadWrite.")


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
    mine = _entry_of(before.participants, caller.organization_id)
    if mine is None:  # can_see was checked first; this guards a rule change
        raise AccessDenied("Only participants may change a referral.")

    changed = [
        name
        for name in Referral.model_fields
        if name not in ("participants", "updatedDate") and getattr(before, name) != getattr(after, name)
    ]
    if mine.status != ParticipantStatus.ACCEPTED and changed:
        raise _only_own_entry(mine, target=changed[0])
    for name in changed:
        if name not in ACCEPTED_MAY_CHANGE:
            raise AccessDenied(f"Partners cannot change '{name}'.", target=name)

    old_entries = {p.organizationId: p for p in before.participants}
    for entry in after.participants:
        old = old_entries.get(entry.organizationId)
        if old == entry:
            continue
        if old is None:
            if mine.status != ParticipantStatus.ACCEPTED:
                raise _only_own_entry(mine, target="participants")
            if entry.status != ParticipantStatus.INVITED:
                raise _denied_other_entry(entry)
            continue
        if entry.organizationId != caller.organization_id:
            raise _denied_other_entry(entry)
        # Its own entry: the users are its own to set; the status only answers an invitation.
        if entry.model_copy(update={"users": old.users, "status": old.status}) != old:
            raise _denied_other_entry(entry)  # id and invitedByParticipantId: editing refuses them first
        if entry.status == old.status:
            continue
        if old.status == ParticipantStatus.ACCEPTED:
            raise AccessDenied(
                "An accepted organization cannot change its own participant status.", target="participants"
            )
        if old.status != ParticipantStatus.INVITED:
            raise _only_own_entry(mine, target="participants")
        if entry.status not in INVITATION_ANSWERS:
            raise AccessDenied("An invitation is answered with Accepted or Rejected.", target="participants")


def check_participants(
    caller: Caller, before: Sequence[Participant], after: Sequence[Participant], paths: Mapping[str, str]
) -> None:
    """Raise unless `caller` may make the invitations and removals that turn the participants
    `before` into `after`. `paths` names each requested organization's entry in the request
    (`participants[2]`), for the error's target. Runs after `check_create` or `check_update`, which
    decide whose entries a caller may touch at all."""
    kept = {entry.organizationId for entry in after}
    for position, entry in enumerate(before):
        if entry.organizationId in kept:
            continue
        target = f"{paths[entry.organizationId]}.status"
        if not caller.is_admin:
            raise AccessDenied("Only an admin removes a participant entry.", target=target)
        if position == 0:
            raise InvalidRequest("The creating organization's entry is never removed.", target=target)
        if entry.status != ParticipantStatus.INVITED:
            raise InvalidRequest(
                f"Only an Invited entry can be removed; this one is {entry.status.value}.", target=target
            )

    known = {entry.organizationId for entry in before}
    invited = [entry for entry in after if entry.organizationId not in known]
    for entry in invited:
        path = paths[entry.organizationId]
        if entry.organizationId not in caller.onboarded:
            raise InvalidRequest(
                "Only organizations onboarded to the Referrals API can be invited.", target=f"{path}.organizationId"
            )
        if entry.users and not caller.is_admin:
            raise InvalidRequest(
                "An invitation carries no users: the invited organization sets its own.", target=f"{path}.users"
            )
    if not invited or caller.is_admin or after[0].organizationId == caller.organization_id:
        return
    mine = _entry_of(after, caller.organization_id)
    inviter = mine.id if mine is not None else None
    pending = sum(1 for e in after if e.status == ParticipantStatus.INVITED and e.invitedByParticipantId == inviter)
    over = pending - Limits.PENDING_INVITATIONS_PER_INVITER
    if over > 0:
        raise InvalidRequest(
            f"An organization may have at most {Limits.PENDING_INVITATIONS_PER_INVITER} of its invitations"
            " pending (Invited) at once; more once some are answered.",
            target=paths[invited[max(0, len(invited) - over)].organizationId],
        )
    open_slots = Limits.PARTICIPANTS - Limits.RESERVED_PARTICIPANTS
    over = len(after) - open_slots
    if over > 0:
        raise InvalidRequest(
            f"Past {open_slots} participants, only the creating organization or an admin invites.",
            target=paths[invited[max(0, len(invited) - over)].organizationId],
        )


def _entry_of(participants: Sequence[Participant], organization_id: str) -> Participant | None:
    for participant in participants:
        if participant.organizationId == organization_id:
            return participant
    return None


def _only_own_entry(mine: Participant, *, target: str) -> AccessDenied:
    if mine.status == ParticipantStatus.INVITED:
        return AccessDenied(
            "An invited organization may only accept or reject its invitation, and set its own users.", target=target
        )
    return AccessDenied(
        f"A participant whose status is {mine.status.value} may read the referral and set its own users,"
        " not change anything else.",
        target=target,
    )


def _denied_other_entry(participant: Participant) -> AccessDenied:
    return AccessDenied(
        f"Only organization {participant.organizationId} (or an admin) can change its participant entry;"
        " an invitation starts as Invited.",
        target="participants",
    )
