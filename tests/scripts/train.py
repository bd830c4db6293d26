"""A training script for subprocess tests: tiny TRL run with DiagnosticsCallback and an optional fault."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402

from ptt_nb import DiagnosticsCallback  # noqa: E402
from ptt_nb.tiny import make_trainer  # noqa: E402
from tests.scripts.inject import Injector  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run-dir", required=True)
    p.add_argument("--algorithm", default="dpo")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--mode", default="none")
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--marker", default=None)
    p.add_argument("--add-callback-late", action="store_true", help="trainer.add_callback after init")
    p.add_argument("--own-sigterm-handler", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    if a.own_sigterm_handler:
        def handler(signum, frame):
            print("user handler ran", flush=True)
            raise SystemExit(3)

        signal.signal(signal.SIGTERM, handler)
    callback = DiagnosticsCallback(run_dir=a.run_dir, widget=False)
    injector = Injector(a.mode, a.k, a.marker)
    work = tempfile.mkdtemp()
    trainer = make_trainer(a.algorithm, work, callbacks=[] if a.add_callback_late else [callback, injector],
                           max_steps=a.steps)
    if a.add_callback_late:
        trainer.add_callback(callback)
        trainer.add_callback(injector)
    injector.attach(trainer.model)
    trainer.train()
    if a.own_sigterm_handler:
        assert signal.getsignal(signal.SIGTERM).__name__ == "handler", "SIGTERM handler not restored"
    print("finished", flush=True)


if __name__ == "__main__":
    main()
