"""Testbenches: the generated hardware against the golden model, bit for bit."""
