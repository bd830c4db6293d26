"""``accelerate.notebook_launcher`` as a notebook would use it: training runs in forked child processes, the
parent follows the run folder that child rank 0 writes (``ptt_nb.watch``) and prints what it saw.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def train(workdir: str, run_dir: str, steps: int) -> None:
    import torch

    from ptt_nb import DiagnosticsCallback, tiny

    torch.set_num_threads(1)
    cb = DiagnosticsCallback(run_dir=run_dir, rank_stats_every=2, console=False, widget=False)
    tiny.make_trainer("dpo", workdir, callbacks=[cb], max_steps=steps, n_rows=64, ddp_timeout=60).train()


def main() -> None:
    workdir, run_dir, port = sys.argv[1], sys.argv[2], sys.argv[3]
    from accelerate import notebook_launcher

    from ptt_nb.sources._follow import watch

    watcher = watch(run_dir, show=False, interval=0.1)  # started before the children exist, like a notebook cell
    notebook_launcher(train, args=(workdir, run_dir, 6), num_processes=2, use_port=port)
    ended = watcher.wait_until_ended(10)
    watcher.stop()
    m = watcher.monitor
    print(json.dumps({"ended": ended, "state": m.state, "step": m.step,
                      "rank_stats": [[s.step, s.world_size] for s in m.rank_stats],
                      "metric_steps": m.history.keys("train")[:3]}), flush=True)


if __name__ == "__main__":
    main()
