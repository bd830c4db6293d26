"""Failure injection for tests: faults raised from inside the model's forward pass at a chosen step."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from transformers import TrainerCallback


class Injector(TrainerCallback):
    """After optimizer step ``k`` completes, arm a fault: the next forward pass raises, returns NaN, or the
    process signals itself / waits for a signal from outside."""

    def __init__(self, mode: str, k: int, marker: str | None = None) -> None:
        self.mode, self.k, self.marker = mode, k, marker
        self.armed = False

    def attach(self, model) -> None:
        model.register_forward_pre_hook(self._pre)
        model.get_input_embeddings().register_forward_hook(self._post)

    def _pre(self, module, args):
        if self.armed and self.mode == "exception":
            raise RuntimeError("injected failure in forward")
        if self.armed and self.mode == "keyboard_interrupt":
            raise KeyboardInterrupt

    def _post(self, module, args, output):
        if self.armed and self.mode == "nan":
            return output * float("nan")  # NaN activations → NaN loss and gradients
        return output

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step != self.k:
            return
        self.armed = True
        if self.mode == "sigint":  # Ctrl-C twice: the first is ptt_nb's graceful stop, the second the hard one
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the first handler runs here (sleep is interrupted): two signals, two handler calls
            os.kill(os.getpid(), signal.SIGINT)  # the real Ctrl-C path: Python's default SIGINT handler
        elif self.mode == "sigint_once":  # one Ctrl-C: a graceful stop at the next step boundary
            os.kill(os.getpid(), signal.SIGINT)
        elif self.mode == "wait_for_signal":
            Path(self.marker).write_text(str(os.getpid()))
            deadline = time.time() + 20
            while time.time() < deadline:
                time.sleep(0.05)
