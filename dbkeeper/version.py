"""The version of dbkeeper."""

__version__ = "0.1.0"
