"""POST /api/v1/referrals/{referralId}: merge-patch a referral, creating it when it does not exist."""

import azure.functions as func

from shared import service
from shared.http import Call, handle
from shared.patching import canonicalize
from shared.store import get_store


def main(req: func.HttpRequest) -> func.HttpResponse:
    return handle(req, _update_referral)


def _update_referral(call: Call) -> func.HttpResponse:
    caller = call.authenticate()
    referral_id = call.path_referral_id()
    patch = canonicalize(call.json_body())
    result = service.create_or_update(get_store(), caller, referral_id, patch, call.if_match())
    return call.referral_response(result.referral, status=201 if result.created else 200)
