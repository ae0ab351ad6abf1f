"""
Errors split by who is at fault.

- :class:`RemoteProtocolError`: the peer sent something we cannot accept (bad bytes, bad padding, a bad
  message
  counter, a failed handshake). The connection that raised it is closed; the adapter logs it and drops the
  link.
- :class:`LocalProtocolError`: the caller misused the API (a command in the wrong state, an out-of-range
  value).
  This is a bug on our side.

Every parser in this package converts whatever goes wrong while reading peer bytes into
``RemoteProtocolError``;
the fuzz tests hold it to that.
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Base class of the two protocol errors."""


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol or the connection state does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer violated the protocol; the connection is unusable from now on."""
