"""jungle: species in camera-trap video clips. The command line lives in :mod:`jungle.cli`."""

__version__ = "0.1.0"
