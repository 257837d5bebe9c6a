"""Chaos analysis: finite-time and maximum Lyapunov exponents and Lyapunov spectra."""
