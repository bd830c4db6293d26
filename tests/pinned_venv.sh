# Shared by tests/*/make_env.sh: build (idempotently) a venv pinned to a requirements file.
#
#   source tests/pinned_venv.sh; pinned_venv VENV_DIR REQUIREMENTS MARKER_NAME
#
# The caller defines `post_install` (runs in the fresh venv, e.g. a smoke import) before calling.
# - Skips all work if VENV_DIR exists and VENV_DIR/MARKER_NAME holds the sha256 of the requirements file +
#   the Python version + the torch pin (prints "up to date").
# - Otherwise (re)creates it: python3.11 -m venv, then torch==2.13.0 FIRST (on its own, so pip takes the
#   local CPU wheel instead of a CUDA build), then `pip install -r REQUIREMENTS`, then post_install; the
#   marker is written last, so an interrupted build is redone next time.
# - Needs only PyPI (no model hub). PYTHON=... overrides the interpreter.

pinned_venv() {
    local VENV="$1" REQ="$2" MARKER_NAME="$3"
    local PYTHON="${PYTHON:-python3.11}" TORCH_PIN="torch==2.13.0"
    command -v "$PYTHON" >/dev/null || { echo "make_env: $PYTHON not found" >&2; exit 1; }
    local PYVER WANT
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
        return 0
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

    local start
    start=$(date +%s)
    "$PYTHON" -m venv "$VENV"
    local PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input -q)
    "${PIP[@]}" install "$TORCH_PIN"
    "${PIP[@]}" install -r "$REQ"
    post_install "$VENV"
    echo "$WANT" > "$VENV/$MARKER_NAME"
    echo "make_env: built $VENV in $(( $(date +%s) - start ))s ($(du -sh "$VENV" | cut -f1))"
}
