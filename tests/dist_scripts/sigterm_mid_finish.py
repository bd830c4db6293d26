"""Rank 0's side of a peer dying under torchrun, with the launcher's SIGTERM landing while ptt_nb writes the failure
up (seen once under load on the 2-core CI machine: rank 0 died before postmortem.json existed).

The timing is forced, not mocked away: ``postmortem.build`` is wrapped to send this process a real SIGTERM at the
moment the race needs; the trainer, callback, exception and signal are real.
Usage: sigterm_mid_finish.py WORKDIR RUN_DIR
"""

import os
import signal
import sys

from transformers import TrainerCallback

from ptt_nb import DiagnosticsCallback
from ptt_nb.sinks import _postmortem as postmortem
from ptt_nb.tiny import make_trainer

workdir, run_dir = sys.argv[1], sys.argv[2]
build = postmortem.build


def build_after_sigterm(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)  # Python runs the handler right here, in the middle of the write-up
    return build(*args, **kwargs)


postmortem.build = build_after_sigterm


class PeerGone(TrainerCallback):
    """What gloo raises on rank 0 when a peer is SIGKILLed."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise RuntimeError("Connection closed by peer")


trainer = make_trainer("dpo", workdir, max_steps=6,
                       callbacks=[PeerGone(), DiagnosticsCallback(run_dir=run_dir, widget=False, console=False)])
trainer.train()
print("not reached: the SIGTERM must end the process once the postmortem is written")
