"""GET /api/v1/referrals/{referralId}: one referral, as its participants (or an admin) may see it."""

import azure.functions as func

from shared import service
from shared.http import Call, handle
from shared.store import get_store


def main(req: func.HttpRequest) -> func.HttpResponse:
    return handle(req, _get_referral)


def _get_referral(call: Call) -> func.HttpResponse:
    caller = call.authenticate()
    referral = service.get_referral(get_store(), caller, call.path_referral_id())
    if call.none_match(referral.etag):
        return call.not_modified(referral.etag)
    return call.referral_response(referral)
