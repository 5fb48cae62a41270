"""Child processes that end with the process that started them.

A process killed with ``kill -9`` runs no cleanup, so the embedded broker,
Redis and local replicas it started would run on, orphaned. On Linux a child
asks the kernel for ``SIGKILL`` when its parent dies (``PR_SET_PDEATHSIG``);
elsewhere :func:`die_with_parent` does nothing and the usual stop paths apply.

The signal follows the *thread* that started the child, so children are
started from threads that live as long as the process (the main thread, or a
supervisor's own thread).
"""

from __future__ import annotations

import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for :class:`subprocess.Popen`: SIGKILL this child when its parent dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
