"""Group commit: many writers' requests for durability share one fdatasync.

Whoever asks for durability first becomes the flusher and syncs everything written so
far; everyone who asked meanwhile finds their records covered when the flush ends. An
optional background thread plays the same role for writers that never wait
(``autosync``). A failed flush fails the store stop: the durable index never advances
past a failed fdatasync and every later request raises.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from segstore.errors import FailedStateError, StorageIOError

DurableCallback = Callable[[int | BaseException], None]
LINGER_BACKOFF = 16  # the longest linger, in multiples of the configured one


class GroupCommit:
    """Serialises flushes and publishes the durable index.

    ``flush`` does the I/O for everything written before it was called and returns the
    index that is now durable; it raises :class:`StorageIOError` on failure.
    """

    def __init__(
        self, flush: Callable[[], int], written_index: Callable[[], int], durable_index: int
    ) -> None:
        self._flush = flush
        self._written_index = written_index
        self._flush_mutex = threading.Lock()
        self._callbacks_lock = threading.Lock()
        self._durable_index = durable_index
        self._failure: StorageIOError | None = None
        # Replaced, never changed in place, so a flush reads it without the lock.
        self._callbacks: tuple[DurableCallback, ...] = ()
        self._wakeup = threading.Event()
        self._stopped = threading.Event()  # (an event: it also cuts a linger short)
        self._thread: threading.Thread | None = None

    @property
    def durable_index(self) -> int:
        """Highest index covered by a completed flush."""
        return self._durable_index

    @property
    def failure(self) -> StorageIOError | None:
        """The I/O error that failed the store, if any."""
        return self._failure

    def check_failed(self) -> None:
        """Raise :class:`FailedStateError` if a flush ever failed."""
        if self._failure is not None:
            raise FailedStateError(
                self._failure.errno,
                f"store failed stop after an I/O error ({self._failure}); reopen it to recover",
                self._failure.filename,
            ) from self._failure

    def add_callback(self, callback: DurableCallback) -> None:
        """Call ``callback`` with each new durable index, or with the failure.

        Callbacks run on the flushing thread, in order, while no other flush can start:
        keep them short and never call back into sync or truncation from them.
        """
        with self._callbacks_lock:
            self._callbacks = (*self._callbacks, callback)

    def sync(self, target: int) -> int:
        """Block until ``target`` (or all that is written, if less) is durable.

        A truncation may lower what is written below ``target`` meanwhile; the target
        shrinks with it, so a sync never waits for records that no longer exist.
        """
        while True:
            self.check_failed()
            target = min(target, self._written_index())
            if self._durable_index >= target:
                return self._durable_index
            with self._flush_mutex:
                if self._durable_index >= target:
                    continue
                self.flush_locked()

    def flush_exclusive(self) -> threading.Lock:
        """The mutex a caller holds to flush and then change files with no flush running."""
        return self._flush_mutex

    def flush_locked(self) -> int:
        """Flush now; the caller holds :meth:`flush_exclusive`."""
        self.check_failed()
        try:
            durable = self._flush()
        except StorageIOError as exc:
            self.fail(exc)
            self.check_failed()
            raise  # unreachable: check_failed raised
        if durable > self._durable_index:
            self._durable_index = durable
            self._notify(durable)
        return self._durable_index

    def fail(self, error: StorageIOError) -> None:
        """Fail the store stop because a write (not a flush) failed."""
        if self._failure is None:
            self._failure = error
            self._notify(error)

    def raise_to(self, durable_index: int) -> None:
        """Raise the durable index when the log restarts past it (holds the mutex)."""
        if durable_index > self._durable_index:
            self._durable_index = durable_index

    def lower(self, durable_index: int) -> None:
        """Set a lower durable index after records were truncated (holds the mutex)."""
        self._durable_index = min(self._durable_index, durable_index)

    def _notify(self, event: int | BaseException) -> None:
        for callback in self._callbacks:
            callback(event)

    # -- background flushing -------------------------------------------------------

    def start_background(self, linger_s: float) -> None:
        """Flush in a background thread whenever :meth:`nudge` says there is work.

        After a nudge the thread notes what is written and lingers ``linger_s``: a
        writer that calls :meth:`sync` itself meanwhile covers those records with no
        thread handoff, and writers that never wait get their records flushed together.
        While writers' own syncs keep covering everything, the linger doubles, up to
        ``LINGER_BACKOFF`` times ``linger_s``: those writers need no flusher, and each
        of its wakeups costs them GIL handoffs. The first flush it has to do again
        resets the linger.
        """

        def run() -> None:
            linger = linger_s
            while True:
                self._wakeup.wait()
                self._wakeup.clear()  # (a nudge from here on starts another round)
                if self._stopped.is_set():
                    return
                noted = self._written_index()
                if self._stopped.wait(linger):
                    return
                if self._durable_index >= noted:
                    linger = min(2 * linger, LINGER_BACKOFF * linger_s)
                    continue
                linger = linger_s
                try:
                    self.sync(self._written_index())
                except FailedStateError:
                    return  # callbacks already saw the failure

        self._thread = threading.Thread(target=run, name="segstore-flusher", daemon=True)
        self._thread.start()
        self._wakeup.set()  # for records written before it started (nudge skipped them)

    def nudge(self) -> None:
        """Tell the background flusher that records were written."""
        # (Event.set takes a lock and notifies even when the event is set already:
        # about 1 us per append, saved whenever the flusher is not waiting)
        if self._thread is not None and not self._wakeup.is_set():
            self._wakeup.set()

    def stop_background(self) -> None:
        """Stop the background thread (after its current flush)."""
        self._stopped.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
