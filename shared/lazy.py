"""Process-wide values built on first use: settings, the storage client, the token validator.

Azure Functions keeps a worker process alive across requests, so these are built once (thread-safely,
as the worker serves requests on several threads) and reused, as Azure's connection guidance asks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Lazy[T]:
    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._value: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        value = self._value
        if value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._factory()
                value = self._value
        return value

    def reset(self) -> None:
        """Forget the value (tests point the process at another Azurite or other settings)."""
        with self._lock:
            self._value = None
