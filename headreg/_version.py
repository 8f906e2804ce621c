"""The package version, in a leaf module: every module that records it imports this, never the package."""

__version__ = "0.1.0"
