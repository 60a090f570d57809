"""How long a request may take: one budget per request, shared by all of its storage calls.

`request` (entered by `shared.http.handle` for each request) fixes the request's deadline;
`shared.store` reads what remains before each storage call, gives the call no more than that as its
timeout, and refuses to start one once nothing remains (503 with Retry-After). So a request ends
within REQUEST_BUDGET_SECONDS of its start (plus the time to render its answer), whatever storage
does and whatever other requests do, well inside host.json's 30 s functionTimeout.

The deadline lives in a context variable: each request (each worker thread, or each task a request
fans out to, which `shared.store` runs in a copy of the request's context) sees its own.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator

from shared.errors import ServiceNotAvailable

# A request's storage work ends within this many seconds of its start. Storage that answers at all
# answers within tens of milliseconds; this leaves room for a write's optimistic retries under
# contention (`shared.service.MAX_WRITE_ATTEMPTS`) and one retried call after a dropped connection.
REQUEST_BUDGET_SECONDS = 5.0
# Clocks of two instances of the app may differ by this much (Azure keeps hosts NTP-synchronized
# well within it); `shared.service` allows for it where it compares timestamps of several writers.
MAX_CLOCK_SKEW_SECONDS = 5.0

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("referrals_deadline", default=None)


@contextlib.contextmanager
def request(budget: float = REQUEST_BUDGET_SECONDS) -> Iterator[None]:
    """Give the request running in this context `budget` seconds from now, until it ends: the
    worker reuses its threads, and what runs on one after the request has no deadline of its own."""
    token = _deadline.set(time.monotonic() + budget)
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining() -> float | None:
    """Seconds left to the current request, or None outside a request (clean-up after a response)."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


def check() -> float | None:
    """What `remaining` says, or 503 when the budget is spent: no storage call starts after that."""
    left = remaining()
    if left is not None and left <= 0:
        raise ServiceNotAvailable("The request ran out of time waiting for storage; retry shortly.")
    return left
