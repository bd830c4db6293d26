#!/usr/bin/env bash
# Create (idempotently) the venv of the Colab-era kernel (tests/colab): ipykernel 6.17, IPython 7.34, anywidget 0.9.
#
#   tests/colab/make_env.sh VENV_DIR
#
# - Skips all work if VENV_DIR exists and VENV_DIR/.ptt_colab_env holds the
#   sha256 of requirements.txt + the Python version (prints "up to date").
# - Otherwise (re)creates it: python3.11 -m venv, then torch==2.13.0 FIRST
#   (on its own, so pip takes the local CPU wheel instead of a CUDA build),
#   then `pip install -r requirements.txt`, then a .pth file for this checkout and a
#   smoke import; the marker is written last, so an
#   interrupted build is redone next time.
# - Needs only PyPI (no model hub). PYTHON=... overrides the interpreter.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 VENV_DIR" >&2
    exit 2
fi

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REQ="$HERE/requirements.txt"
VENV="$1"
PYTHON="${PYTHON:-python3.11}"
MARKER_NAME=".ptt_colab_env"
TORCH_PIN="torch==2.13.0"

command -v "$PYTHON" >/dev/null || { echo "make_env: $PYTHON not found" >&2; exit 1; }
PYVER="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
WANT="$( { cat "$REQ"; echo "python=$PYVER"; echo "$TORCH_PIN"; } | sha256sum | cut -d' ' -f1)"

# Serialize concurrent callers on the same venv.
mkdir -p "$(dirname "$VENV")"
if command -v flock >/dev/null; then
    exec 9>"${VENV%/}.lock"
    flock 9
fi

if [[ -f "$VENV/$MARKER_NAME" ]] && [[ "$(cat "$VENV/$MARKER_NAME")" == "$WANT" ]] && [[ -x "$VENV/bin/python" ]]; then
    echo "make_env: $VENV up to date"
    exit 0
fi

if [[ -e "$VENV" ]]; then
    # Only ever delete something that is clearly a venv (or an empty dir).
    if [[ -f "$VENV/pyvenv.cfg" ]] || [[ -d "$VENV" && -z "$(ls -A "$VENV")" ]]; then
        echo "make_env: rebuilding $VENV (missing or stale marker)"
        rm -rf "$VENV"
    else
        echo "make_env: $VENV exists and is not a venv; refusing to touch it" >&2
        exit 1
    fi
fi

start=$(date +%s)
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input -q)
"${PIP[@]}" install "$TORCH_PIN"
"${PIP[@]}" install -r "$REQ"
# ptt_nb itself by path (a .pth file), not by `pip install -e`: the kernel imports this checkout's code and the
# venv never runs the package's build hook (no node needed here)
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$(cd "$HERE/../.." && pwd)" > "$SITE/ptt_nb_checkout.pth"
"$VENV/bin/python" -c '
import IPython, ipykernel, ipywidgets, anywidget, trl, ptt_nb
assert IPython.__version__ == "7.34.0", IPython.__version__
assert ipykernel.__version__.startswith("6.17"), ipykernel.__version__
print("make_env: IPython", IPython.__version__, "ipykernel", ipykernel.__version__, "ipywidgets",
      ipywidgets.__version__, "anywidget", anywidget.__version__, "trl", trl.__version__)
'
echo "$WANT" > "$VENV/$MARKER_NAME"
echo "make_env: built $VENV in $(( $(date +%s) - start ))s ($(du -sh "$VENV" | cut -f1))"
