"""spotctl's control plane: validates jobs, launches and follows spot instances. Never imports torch."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("spotctl")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
