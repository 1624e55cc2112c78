"""podiam: per-pod AWS IAM credentials for Kubernetes through an EC2-metadata-compatible endpoint."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("podiam")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"
