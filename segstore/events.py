"""Ordered delivery of state-change events to callbacks, outside the owner's lock.

Owners (``AckTracker``, ``MasterPolicy``) queue events while holding their lock and
deliver after releasing it, so a callback may call back into the owner. Whichever
thread is not already delivering drains the queue, so events reach callbacks in the
order they happened. A callback that raises does not stop the others; the first
exception is re-raised once the queue is drained.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

Callback = Callable[..., object]


class EventQueue:
    """Events (argument tuples) queued under the owner's lock, delivered outside it."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._callbacks: list[Callback] = []
        self._events: deque[tuple[Any, ...]] = deque()
        self._delivering = False

    def subscribe(self, callback: Callback) -> None:
        """Call ``callback(*event)`` for every event from now on (takes the lock)."""
        with self._lock:
            self._callbacks.append(callback)

    def push(self, event: tuple[Any, ...]) -> None:
        """Queue one event; the caller holds the owner's lock."""
        self._events.append(event)

    def extend(self, events: Iterable[tuple[Any, ...]]) -> None:
        """Queue events in order; the caller holds the owner's lock."""
        self._events.extend(events)

    def deliver(self) -> None:
        """Drain the queue to the callbacks; call without holding the owner's lock."""
        with self._lock:
            if self._delivering or not self._events:
                return
            self._delivering = True
        first_error: Exception | None = None
        drained = False
        try:
            while True:
                with self._lock:
                    if not self._events:
                        self._delivering = False
                        drained = True
                        break
                    event = self._events.popleft()
                    callbacks = tuple(self._callbacks)
                for callback in callbacks:
                    try:
                        callback(*event)
                    except Exception as exc:
                        if first_error is None:
                            first_error = exc
        finally:
            if not drained:
                with self._lock:
                    self._delivering = False
        if first_error is not None:
            raise first_error


__all__ = ["EventQueue"]
