"""Timer (every 5 s): one webhook delivery pass over every Active subscription (`shared.delivery`).

Called once, it makes exactly one pass and returns when the pass is done, so tests run passes on
demand by calling `main` with a timer request.
"""

import json
import logging

import azure.functions as func

from shared.store import get_store

log = logging.getLogger("referrals.delivery")


def main(timer: func.TimerRequest) -> None:
    # Imported on the first pass, not when the worker loads this folder: the worker loads every folder
    # before its first invocation, so a module-level import here (delivery, outbound HTTP, CloudEvents,
    # Standard Webhooks) would be paid by the cold start of every instance, HTTP ones included.
    from shared import delivery

    outcomes = delivery.run_pass(get_store())
    if outcomes or timer.past_due:
        log.info(
            json.dumps(
                {
                    "event": "deliveryPass",
                    "pastDue": timer.past_due,
                    "subscriptions": len(outcomes),
                    "sent": sum(outcome.sent for outcome in outcomes),
                    "failed": sum(outcome.failed for outcome in outcomes),
                }
            )
        )
