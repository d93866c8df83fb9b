"""debiaslab's version, where modules below the API read it (the package's top opens the API)."""

__version__ = "0.1.0"
