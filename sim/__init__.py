"""sim: a standalone cost model of collective communication and compute (NumPy only).

It never imports ``desmpi``; ``desmpi`` describes its traffic in this package's vocabulary
(:class:`sim.accounting.Call`) so that real and simulated traffic have one source of truth.
"""

from sim.accounting import KINDS, Call, Collective, payload_bytes, wire_bytes

__all__ = ["KINDS", "Call", "Collective", "payload_bytes", "wire_bytes"]
