#!/usr/bin/env bash
# Create (idempotently) the venv used by tests/ppo/tiny_ppo.py (the builder: tests/pinned_venv.sh).
#
#   tests/ppo/make_env.sh VENV_DIR
#
# After requirements.txt: a smoke import of trl.experimental.ppo.PPOTrainer.
set -euo pipefail
[[ $# -eq 1 ]] || { echo "usage: $0 VENV_DIR" >&2; exit 2; }
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../pinned_venv.sh"

post_install() {
    TRL_EXPERIMENTAL_SILENCE=1 "$1/bin/python" -c '
import torch, trl, transformers
from trl.experimental.ppo import PPOConfig, PPOTrainer
assert torch.__version__.startswith("2.13.0"), torch.__version__
print("make_env: torch", torch.__version__, "trl", trl.__version__, "transformers", transformers.__version__)
'
}

pinned_venv "$1" "$HERE/requirements.txt" ".ptt_ppo_env"
