"""Benchmarks and the demo: speed figures and live runs on this host (most need root)."""
