"""GET, POST, DELETE /api/v1/subscriptions/{subscriptionId?}: an organization's webhook subscriptions.

- POST /v1/subscriptions: create one (after the receiver's validation handshake); 201 with its secret.
- GET /v1/subscriptions, GET /v1/subscriptions/{id}: list them, read one (never the secret).
- DELETE /v1/subscriptions/{id}: 204.
- POST /v1/subscriptions/{id} with {"status": "Active"}: resume a suspended one.
"""

import json

import azure.functions as func

from shared.http import Call, handle
from shared.store import get_store, to_json


def main(req: func.HttpRequest) -> func.HttpResponse:
    return handle(req, _use_case)


def _use_case(call: Call) -> func.HttpResponse:
    # Imported at the first subscription call, not when the worker loads this folder: every folder is
    # loaded before the first invocation of any, so a module-level import (outbound HTTP, CloudEvents,
    # Standard Webhooks) would slow the cold start of every referral request too.
    from shared import subscriptions

    caller = call.authenticate()
    raw_id = call.request.route_params.get("subscriptionId")
    method = call.request.method.upper()
    store = get_store()
    if not raw_id:
        if method == "POST":
            created = subscriptions.create(store, caller, call.json_body())
            location = f"{call.request.url.split('?', 1)[0].rstrip('/')}/{created.subscription_id}"
            body = to_json(subscriptions.view(created, with_secret=True)).encode("utf-8")
            return call.respond(201, body, {"Location": location})
        if method == "GET":
            listed = [subscriptions.view(item) for item in subscriptions.list_all(store, caller)]
            return call.respond(200, to_json({"value": listed}).encode("utf-8"))
        return _method_not_allowed(call, "GET, POST")
    if method == "GET":
        return call.respond(200, to_json(subscriptions.view(subscriptions.get(store, caller, raw_id))).encode())
    if method == "DELETE":
        subscriptions.delete(store, caller, raw_id)
        return call.respond(204, b"", content_type=None)
    if method == "POST":
        resumed = subscriptions.resume(store, caller, raw_id, call.json_body())
        return call.respond(200, to_json(subscriptions.view(resumed)).encode("utf-8"))
    return _method_not_allowed(call, "GET, POST, DELETE")


def _method_not_allowed(call: Call, allowed: str) -> func.HttpResponse:
    payload = {"error": {"code": "invalidRequest", "message": "This method is not allowed here."}}
    return call.respond(405, json.dumps(payload).encode(), {"Allow": allowed, "x-ms-error-code": "invalidRequest"})
