"""The request time budget (`shared.budget`): one per request, gone when the request ends."""

from __future__ import annotations

import time

import pytest

from shared import budget
from shared.errors import ServiceNotAvailable


def test_a_spent_budget_refuses_further_calls_and_ends_with_its_request() -> None:
    assert budget.remaining() is None
    with budget.request(0.01):
        left = budget.remaining()
        assert left is not None and 0 < left <= 0.01
        time.sleep(0.02)
        with pytest.raises(ServiceNotAvailable):
            budget.check()
    # What runs on the thread afterwards (the next request, clean-up) is not bound by it.
    assert budget.remaining() is None and budget.check() is None
