"""The one version number: the installed package's metadata (``pyproject.toml`` at build time)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ptt-nb")
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"
