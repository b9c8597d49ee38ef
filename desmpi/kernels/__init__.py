"""Pure Numba/NumPy kernels: arrays in, arrays out; no communication, no IO.

Every kernel also runs with ``NUMBA_DISABLE_JIT=1`` (as plain Python, slowly).
"""
