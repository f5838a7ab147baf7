"""A local stand-in for a CVAT 2.23 server, for tests driven by the real cvat-sdk.

See :mod:`server`; the answers follow ../shared/cvat-trace (real cvat-sdk 2.80/2.23 talking to a
real CVAT 2.23.1).
"""
from .server import CvatTestServer, Faults

__all__ = ["CvatTestServer", "Faults"]
