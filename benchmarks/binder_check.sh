#!/usr/bin/env bash
# Does binder/ build an environment that runs the tutorial notebooks? The closest check possible without
# repo2docker/Docker: a fresh clone of the committed tree, a fresh venv built ONLY from binder/requirements.txt and
# binder/postBuild (as repo2docker does, in the same order), then every notebook under nbval in a scratch copy.
#
# Differences from mybinder.org, on purpose: torch 2.13.0 (CPU) is installed first from this machine's local wheel
# and the CPU index line is dropped (download.pytorch.org is unreachable here); pytest + nbval are added
# after postBuild to run the check (they are not part of the Binder image).
#
# Usage: bash benchmarks/binder_check.sh [SCRATCH_DIR]      (PYTHON=python3.11 by default, as binder/runtime.txt)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
SCRATCH=${1:-$(mktemp -d /tmp/binder-check.XXXXXX)}
PY=${PYTHON:-python$(sed -n 's/^python-\([0-9.]*\).*/\1/p' "$REPO/binder/runtime.txt")}
mkdir -p "$SCRATCH"
t0=$(date +%s)
stamp() { echo "[binder_check +$(( $(date +%s) - t0 ))s] $*"; }

stamp "clone $(git -C "$REPO" rev-parse --short HEAD) into $SCRATCH/repo; python: $PY"
rm -rf "$SCRATCH/repo" "$SCRATCH/venv" "$SCRATCH/nb"
git clone -q "$REPO" "$SCRATCH/repo"
cd "$SCRATCH/repo"
"$PY" -m venv "$SCRATCH/venv"
# shellcheck disable=SC1091
. "$SCRATCH/venv/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
grep -v -e '^--extra-index-url' binder/requirements.txt > "$SCRATCH/requirements.txt"
python -m pip install -q -r "$SCRATCH/requirements.txt"
stamp "requirements installed; running binder/postBuild"
bash binder/postBuild
python -c "import ptt_nb, ptt_nb.notebook._widget, anywidget, trl; print('ptt_nb', ptt_nb.__version__, 'trl', trl.__version__)"
t_env=$(( $(date +%s) - t0 ))
stamp "environment ready (${t_env}s)"

python -m pip install -q pytest nbval
mkdir -p "$SCRATCH/nb"
cp notebooks/*.ipynb "$SCRATCH/nb/"
cd "$SCRATCH/nb"
t1=$(date +%s)
set +e
python -m pytest --nbval-lax ./*.ipynb -p no:cacheprovider -q --nbval-cell-timeout 420 -o addopts= --rootdir .
rc=$?
set -e
stamp "notebooks: rc=$rc in $(( $(date +%s) - t1 ))s; environment ${t_env}s; total $(( $(date +%s) - t0 ))s"
exit $rc
