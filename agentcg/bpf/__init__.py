"""BPF program sources shipped as package data (loaded with importlib.resources)."""
