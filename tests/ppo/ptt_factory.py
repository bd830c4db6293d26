"""``--callback tests.ppo.ptt_factory:make`` for tiny_ppo.py: ptt_nb's callback, configured from env vars."""

import os

from ptt_nb import DiagnosticsCallback


def make():
    return DiagnosticsCallback(run_dir=os.environ["PTT_RUN_DIR"], widget=False,
                               stop_on_critical=bool(os.environ.get("PTT_STOP_ON_CRITICAL")))
