"""Scripts that measure or regenerate committed results; nothing in the package imports them; each
runs as python -m tools.NAME."""
