#!/usr/bin/env bash
# Create (idempotently) the venv of the Colab-era kernel (tests/colab): ipykernel 6.17, IPython 7.34,
# anywidget 0.9 (the builder: tests/pinned_venv.sh).
#
#   tests/colab/make_env.sh VENV_DIR
#
# After requirements.txt: a .pth file for this checkout and a smoke import.
set -euo pipefail
[[ $# -eq 1 ]] || { echo "usage: $0 VENV_DIR" >&2; exit 2; }
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../pinned_venv.sh"

post_install() {
    # ptt_nb itself by path (a .pth file), not by `pip install -e`: the kernel imports this checkout's code and
    # the venv never runs the package's build hook (no node needed here)
    local site
    site="$("$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "$(cd "$HERE/../.." && pwd)" > "$site/ptt_nb_checkout.pth"
    "$1/bin/python" -c '
import IPython, ipykernel, ipywidgets, anywidget, trl, ptt_nb
assert IPython.__version__ == "7.34.0", IPython.__version__
assert ipykernel.__version__.startswith("6.17"), ipykernel.__version__
print("make_env: IPython", IPython.__version__, "ipykernel", ipykernel.__version__, "ipywidgets",
      ipywidgets.__version__, "anywidget", anywidget.__version__, "trl", trl.__version__)
'
}

pinned_venv "$1" "$HERE/requirements.txt" ".ptt_colab_env"
