"""Stopping a run from another thread: the command line's answer to a signal.

A compiled stage runs for minutes without returning to Python, and Python
runs signal handlers only between bytecodes, so the command line does the
work in a worker thread and keeps the main thread waiting in short slices,
free to take SIGINT/SIGTERM at any moment. It then calls
:meth:`Stop.request`: the run's staging folders go at once and nothing can be
moved into place afterwards, whatever the worker is still computing.
"""

import contextlib
import contextvars
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["CURRENT_STOP", "Stop", "Stopped"]


class Stopped(Exception):
    """The run was stopped from another thread (:meth:`Stop.request`)."""


class Stop:
    """Stops a run from another thread at once: its staging folders go, its commit is refused.

    The command line runs the work in a worker thread and keeps the main
    thread free for signals; on SIGINT/SIGTERM it calls :meth:`request`,
    which removes the run's staging folders immediately (even while a compiled
    stage is still running) and makes :func:`staged` refuse to move anything
    into place afterwards. The run finds it via :data:`CURRENT_STOP`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._folders: list[tuple[Path, list[Path]]] = []
        self.requested = False
        self.committed = False

    def request(self) -> None:
        """Stops the run: removes its staging folders (and folders made for them).

        Each folder is first renamed out of the way (so the worker cannot add
        to it under its old name), then removed, retried while the worker is
        still closing files in it.
        """
        with self._lock:
            self.requested = True
            for tmp, created in self._folders:
                doomed = tmp.with_name(tmp.name.replace(".partial-", ".stopped-"))
                with contextlib.suppress(OSError):
                    os.rename(tmp, doomed)
                for _ in range(100):
                    shutil.rmtree(doomed, ignore_errors=True)
                    shutil.rmtree(tmp, ignore_errors=True)
                    if not (doomed.exists() or tmp.exists()):
                        break
                    time.sleep(0.01)
                for folder in created:
                    with contextlib.suppress(OSError):
                        folder.rmdir()
            self._folders.clear()

    def track(self, tmp: Path, created: list[Path]) -> None:
        """Records a staging folder (raises :class:`Stopped` if the run was stopped)."""
        with self._lock:
            if self.requested:
                raise Stopped
            self._folders.append((tmp, created))

    @contextlib.contextmanager
    def committing(self) -> Iterator[None]:
        """Holds :meth:`request` off while a finished folder is moved into place."""
        with self._lock:
            if self.requested:
                raise Stopped
            yield
            self.committed = True


#: The :class:`Stop` of the run in the current context (``None``: not stoppable).
CURRENT_STOP: contextvars.ContextVar[Stop | None] = contextvars.ContextVar(
    "miscal_jax_stop", default=None
)
