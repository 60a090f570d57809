"""GET /api/v1/referrals/{referralId}: one referral; GET /api/v1/referrals: the caller's referrals, paged.

Both reads share this folder (an optional route parameter) so the app keeps its two functions.
"""

import azure.functions as func

from shared import service
from shared.http import Call, handle
from shared.listing import parse_list_query
from shared.store import get_store


def main(req: func.HttpRequest) -> func.HttpResponse:
    return handle(req, _get_referral if req.route_params.get("referralId") else _list_referrals)


def _get_referral(call: Call) -> func.HttpResponse:
    caller = call.authenticate()
    referral_id = call.path_referral_id()
    if call.is_conditional_get():
        # A client polling with the ETag it holds is usually current: answer from the version alone.
        etag = service.current_etag(get_store(), caller, referral_id)
        if call.none_match(etag):
            return call.not_modified(etag)
    return call.referral_response(service.get_referral(get_store(), caller, referral_id))


def _list_referrals(call: Call) -> func.HttpResponse:
    caller = call.authenticate()
    query = parse_list_query(call.query_parameters(), caller)
    page = service.list_referrals(get_store(), caller, query)
    return call.page_response(page, query)
