"""The learner's parameter publisher: encodes and writes new params off the update's path."""

from __future__ import annotations

import threading
from typing import Any

from jaxrl_impala.unroll import params_to_frame


class Publisher:
    """Publishes params from a background thread, so the learner never waits for the encode
    or the store's write (a Redis round trip) of a new version.

    `submit` takes host copies (numpy) of version v's params and stats; the thread encodes
    and publishes them while the learner gathers and runs update v+1. If the thread falls
    behind, only the newest pending version is published (versions stay monotonic). An error
    in the thread is raised by the next `submit` or by `close`.
    """

    def __init__(self, store):
        self.store = store
        self._cv = threading.Condition()
        self._pending: tuple[int, Any] | None = None
        self._closing = False
        self._error: BaseException | None = None
        self.published = self.skipped = 0
        self._thread = threading.Thread(target=self._run, name="param-publisher", daemon=True)
        self._thread.start()

    def submit(self, version: int, host_params_and_stats: Any) -> None:
        self._raise()
        with self._cv:
            if self._pending is not None:
                self.skipped += 1
            self._pending = (version, host_params_and_stats)
            self._cv.notify()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._pending is not None or self._closing)
                if self._pending is None:
                    return
                (version, host), self._pending = self._pending, None
            try:
                self.store.publish(version, params_to_frame(*host))
                self.published += 1
            except BaseException as e:  # noqa: BLE001 - handed to the learner thread
                self._error = e

    def close(self) -> None:
        """Publishes what is pending, stops the thread; raises a publishing error."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join(timeout=30)
        self._raise()
