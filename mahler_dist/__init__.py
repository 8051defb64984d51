"""mahler-dist: MahlerNet (a bar-by-bar conditional VAE for multi-instrument MIDI) on Ray."""

__version__ = "0.1.0"
