"""Compiled kernels (built from ``_ext/*.pyx``); use them via ``segstore.aof.kernels``."""
