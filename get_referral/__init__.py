"""The reads, one function: GET /api/v1/referrals (the caller's referrals, paged), GET
/api/v1/referrals/{referralId} (one referral) and GET /api/v1/referrals/{referralId}/activities (its
whole history, paged).

The route `v1/referrals/{referralId?}/{*subresource}` keeps the app at two functions: an optional
parameter, then a catch-all (ASP.NET Core routing allows a catch-all only as the last segment, and
never optional: it simply matches nothing). Every path below a referral reaches this function, so an
unknown one gets the API's own 404 envelope.
"""

from collections.abc import Callable, Mapping

import azure.functions as func

from shared import service
from shared.errors import ItemNotFound
from shared.history import parse_history_query
from shared.http import Call, handle
from shared.listing import parse_list_query
from shared.store import get_store

HISTORY = "activities"


def main(req: func.HttpRequest) -> func.HttpResponse:
    return handle(req, _use_case(req.route_params))


def _use_case(route: Mapping[str, str]) -> Callable[[Call], func.HttpResponse]:
    # A trailing slash is no sub-path: `/referrals/x/` is the referral, `/activities/` its history.
    subresource = (route.get("subresource") or "").strip("/")
    if not subresource:
        return _get_referral if route.get("referralId") else _list_referrals
    # Compared as the host compares a route's literal segments: in any case.
    return _get_history if subresource.lower() == HISTORY else _no_such_resource


def _get_referral(call: Call) -> func.HttpResponse:
    caller = call.authenticate()
    referral_id = call.path_referral_id()
    if call.is_conditional_get():
        # A client polling with the ETag it holds is usually current: answer from the version alone.
        etag = service.current_etag(get_store(), caller, referral_id)
        if call.none_match(etag):
            return call.not_modified(etag)
    return call.referral_response(service.get_referral(get_store(), caller, referral_id))


def _get_history(call: Call) -> func.HttpResponse:
    caller = call.authenticate()
    referral_id = call.path_referral_id()
    query = parse_history_query(call.query_parameters(), caller, referral_id)
    return call.history_response(service.get_history(get_store(), caller, referral_id, query), query)


def _list_referrals(call: Call) -> func.HttpResponse:
    caller = call.authenticate()
    query = parse_list_query(call.query_parameters(), caller)
    page = service.list_referrals(get_store(), caller, query)
    return call.page_response(page, query)


def _no_such_resource(call: Call) -> func.HttpResponse:
    call.authenticate()
    raise ItemNotFound("Nothing is served at this path.")
