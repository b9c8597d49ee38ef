"""desmpi: Distributed Equivalent Substitution training of CTR models over MPI."""

__version__ = "0.1.0"
