"""The kernel's Interrupt button (or Ctrl-C) as a graceful stop while ``trainer.train()`` runs.

Where the dashboard's Stop click cannot reach a busy kernel (ipykernel < 7 has no subshells; some front ends
never send it), the one message that always gets through is SIGINT: Jupyter's Interrupt sends it to the kernel
process. While ``train()`` runs in the main thread we put a handler in front of the current one: the first SIGINT
only *marks* a stop (a signal handler must not take locks or emit events: it interrupts arbitrary main-thread
code, possibly inside the monitor itself), and the callback turns the mark into ``monitor.request_stop`` at the
next step boundary, so the run ends with ``user_stop`` and the trainer and model stay usable
(``trainer.save_model()`` works). A second SIGINT goes to the previous handler (in a kernel cell that is
``signal.default_int_handler``: today's hard ``KeyboardInterrupt`` and its postmortem). The previous handler is
restored when ``train()`` returns or raises. Nothing is installed off the main thread (``signal.signal`` would
raise there) or where SIGINT is ignored.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

MESSAGE = ("ptt_nb: stopping at the next step boundary (trainer and model stay usable); "
           "interrupt again to stop immediately\n")


class GracefulInterrupt:
    """First SIGINT → ``pending`` (consumed at a step boundary); second → the previous handler."""

    def __init__(self) -> None:
        self.installed = False
        self.count = 0  # SIGINTs seen since install()
        self._pending = False
        self._prev: Any = None

    def install(self) -> bool:
        """Put our handler in front of SIGINT's current one; True when installed (main thread, not ignored)."""
        if self.installed or threading.current_thread() is not threading.main_thread():
            return self.installed
        prev = signal.getsignal(signal.SIGINT)
        if prev in (signal.SIG_IGN, None):  # None: installed from C; we could not chain it
            return False
        self._prev = prev
        self.count = 0
        self._pending = False
        signal.signal(signal.SIGINT, self._handle)
        self.installed = True
        return True

    def restore(self) -> None:
        """Put the previous handler back (only if ours is still the current one: never clobber a newer one)."""
        if not self.installed:
            return
        self.installed = False
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) == self._handle:
            signal.signal(signal.SIGINT, self._prev)

    def consume(self) -> bool:
        """At a step boundary: True once after a first interrupt (the caller requests the stop)."""
        if self._pending:
            self._pending = False
            return True
        return False

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count == 1:
            self._pending = True
            try:
                sys.stderr.write(MESSAGE)
            except Exception:  # noqa: BLE001, S110 - a closed stderr must not turn the stop into a crash
                pass
            return
        prev = self._prev
        self.restore()  # a third interrupt meets the previous handler directly
        if callable(prev):
            prev(signum, frame)
        else:  # SIG_DFL: what the default action would do to a Python program in this state
            raise KeyboardInterrupt
