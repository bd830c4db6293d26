"""Every way out of ``trainer.train()`` reaches the run's ``finish``: exception, Ctrl-C / kernel interrupt,
SystemExit, SIGTERM, or a process that exits mid-run.

TRL never calls ``on_train_end`` after an exception, so the trainer's ``train`` is wrapped on the instance.
While ``train()`` runs in the main thread, a first SIGINT (the kernel's Interrupt, Ctrl-C) is a graceful stop at
the next step boundary and a second one the previous handler's ``KeyboardInterrupt`` (``_graceful_interrupt``);
SIGTERM gets a handler only while the guard is armed, which chains the previous one and is restored when
disarmed. A callback added with ``trainer.add_callback()`` after ``train()`` began cannot wrap that call:
IPython's ``post_run_cell`` (notebooks) and ``atexit`` (scripts) tell how it ended instead.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import signal
import sys
import threading
import traceback as tb
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from ptt_nb.sources._graceful_interrupt import GracefulInterrupt


class Finish(Protocol):
    def __call__(self, reason: str, *, traceback: str | None = None, detail: str = "") -> None: ...


class CrashGuard:
    """Turns the ways a run can end abnormally into one ``finish(reason, traceback=, detail=)`` call.

    ``reason`` is ``exception``, ``keyboard_interrupt``, ``sigterm`` or ``unknown`` (the process exited)."""

    def __init__(self, finish: Finish) -> None:
        self._finish = finish
        self.armed = False  # between arm() and disarm(): a run is open and not yet finished
        self.inside_train = False  # True while inside our wrapper of trainer.train
        self.sigterm_seen = False
        self._prev_sigterm: Any = None
        self._sigterm_installed = False
        self._finishing = False  # inside finish(): a SIGTERM then waits for the postmortem to be written
        self._sigterm_pending = False
        self._ipython_hook: tuple[Any, Callable[[Any], None]] | None = None
        self.interrupt = GracefulInterrupt()  # installed only for the duration of a wrapped train() call

    def wrap(self, trainer: Any) -> None:
        """Wrap ``trainer.train`` (an instance attribute: only this trainer, removed with it). Idempotent."""
        original = trainer.train
        if getattr(original, "_ptt_wrapped", False):
            return

        @functools.wraps(original)
        def train(*args: Any, **kwargs: Any) -> Any:
            self.inside_train = True
            self.interrupt.install()
            try:
                return original(*args, **kwargs)
            except BaseException as exc:
                self.on_exception(exc)
                raise
            finally:
                self.interrupt.restore()
                self.inside_train = False

        train._ptt_wrapped = True  # type: ignore[attr-defined]
        trainer.train = train

    def on_exception(self, exc: BaseException) -> None:
        if not self.armed:
            return
        if self.sigterm_seen:
            reason = "sigterm"
        elif isinstance(exc, KeyboardInterrupt):
            reason = "keyboard_interrupt"
        else:
            reason = "exception"
        text = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
        self._finish(reason, traceback=text, detail=f"{type(exc).__name__}: {exc}")

    # -- arming ------------------------------------------------------------------------------------------------
    def arm(self) -> None:
        """A run started: install the SIGTERM handler (main thread only) and, when ``train()`` is not wrapped,
        the post-cell / atexit fallbacks."""
        self.armed = True
        self.sigterm_seen = False
        if threading.current_thread() is threading.main_thread():
            prev = signal.getsignal(signal.SIGTERM)
            if prev is not signal.SIG_IGN:
                self._prev_sigterm = prev
                signal.signal(signal.SIGTERM, self._on_sigterm)
                self._sigterm_installed = True
        if not self.inside_train:
            shell = sys.modules["IPython"].get_ipython() if "IPython" in sys.modules else None
            if shell is not None:
                def hook(result: Any) -> None:
                    if result.error_in_exec is not None:
                        self.on_exception(result.error_in_exec)

                shell.events.register("post_run_cell", hook)
                self._ipython_hook = (shell, hook)
            atexit.register(self._at_exit)

    def disarm(self) -> None:
        """Restore the previous SIGTERM handler and drop the fallbacks."""
        self.armed = False
        if self._sigterm_installed and threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
                signal.signal(signal.SIGTERM, self._prev_sigterm if self._prev_sigterm is not None else signal.SIG_DFL)
            self._sigterm_installed = False
        if self._ipython_hook is not None:
            shell, hook = self._ipython_hook
            with contextlib.suppress(ValueError):
                shell.events.unregister("post_run_cell", hook)
            self._ipython_hook = None
        atexit.unregister(self._at_exit)

    @contextlib.contextmanager
    def finishing(self) -> Iterator[None]:
        """Around the write-up of a run's end: a SIGTERM arriving meanwhile (e.g. torchrun's, after a peer died
        while rank 0 writes that failure up) is re-sent once the block is done, to the handler restored by then
        (the default one ends the process)."""
        self._finishing = True
        try:
            yield
        finally:
            self._finishing = False
            if self._sigterm_pending:
                self._sigterm_pending = False
                os.kill(os.getpid(), signal.SIGTERM)

    # -- handlers ----------------------------------------------------------------------------------------------
    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.sigterm_seen = True
        if self._finishing:
            self._sigterm_pending = True
            return
        stack = "".join(tb.format_stack(frame)) if frame is not None else None
        prev = self._prev_sigterm
        self._finish("sigterm", traceback=stack, detail="SIGTERM received")
        if callable(prev):
            prev(signum, frame)
        elif prev in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    def _at_exit(self) -> None:
        exc = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
        if exc is not None:
            self.on_exception(exc)
        else:
            self._finish("unknown", detail="the process exited while training was running")
