"""
The server key slots devices read at start-up. TCP (device-protocol.md §4, 512 bytes): the server's RSA-2048
public key as SubjectPublicKeyInfo DER at offset 0, 0xFF fill, the server address as a TLV at offset 384
(type 0 = IPv4, 1 = domain name; length; value) and the port as a big-endian uint16 at offset 450
(0xFFFF = 5683). UDP (ota-and-dtls.md §B.8, 320 bytes): see `udp_server_key_slot`.
"""

from __future__ import annotations

import ipaddress

from devicecloud.protocol.errors import LocalProtocolError

SLOT_SIZE = 512
ADDRESS_OFFSET = 384
PORT_OFFSET = 450
MAX_DOMAIN = 64
DEFAULT_PORT = 5683
SPKI_DER_SIZE = 294  # RSA-2048, e = 65537: the only shape the device firmware parses


def server_key_slot(public_key_der: bytes, host: str, port: int = DEFAULT_PORT) -> bytes:
    """
    The 512-byte slot image for ``particle keys server`` / a DFU write at DCT 2082.

    Raises:
        LocalProtocolError: the key is not a 294-byte RSA-2048 SPKI, the host is too long, or the port is bad.
    """
    if len(public_key_der) != SPKI_DER_SIZE:
        msg = f"the server key must be RSA-2048 with e=65537 (SPKI DER of {SPKI_DER_SIZE} bytes)"
        raise LocalProtocolError(msg)
    if not 0 < port < 0xFFFF:
        msg = "port must be between 1 and 65534"
        raise LocalProtocolError(msg)
    slot = bytearray(b"\xff" * SLOT_SIZE)
    slot[: len(public_key_der)] = public_key_der
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        encoded = host.encode("ascii", errors="strict") if host.isascii() else b""
        if not encoded or len(encoded) > MAX_DOMAIN:
            msg = f"host must be an IPv4 address or an ASCII domain of at most {MAX_DOMAIN} characters"
            raise LocalProtocolError(msg) from None
        tlv = bytes([1, len(encoded)]) + encoded
    else:
        if address.version != 4:
            msg = "devices only take IPv4 addresses or domain names"
            raise LocalProtocolError(msg)
        tlv = bytes([0, 4]) + address.packed
    slot[ADDRESS_OFFSET : ADDRESS_OFFSET + len(tlv)] = tlv
    if port != DEFAULT_PORT:
        slot[PORT_OFFSET : PORT_OFFSET + 2] = port.to_bytes(2, "big")
    return bytes(slot)


UDP_SLOT_SIZE = 320  # particle-cli's udpServerKey (DCT offset 3298 on Gen3)
UDP_KEY_AREA = 192  # the SPKI DER padded to this size
UDP_ADDRESS_OFFSET = 192
UDP_PORT_OFFSET = 258
UDP_DEFAULT_PORT = 5684


def udp_server_key_slot(public_key_der: bytes, host: str, port: int = UDP_DEFAULT_PORT) -> bytes:
    """
    The 320-byte UDP server key slot of Gen3 devices and the Electron (ota-and-dtls.md §B.8): the server's EC
    P-256 SubjectPublicKeyInfo DER padded (0xFF, as erased flash) to 192 bytes, the address TLV at 192 and
    the port (big-endian) at 258, left 0xFFFF for the default 5684.

    Raises:
        LocalProtocolError: the key does not fit, the host is too long or IPv6, or the port is bad.
    """
    if not public_key_der or len(public_key_der) > UDP_KEY_AREA:
        msg = f"the UDP server key must be an EC P-256 SPKI DER of at most {UDP_KEY_AREA} bytes"
        raise LocalProtocolError(msg)
    if not 0 < port < 0xFFFF:
        msg = "port must be between 1 and 65534"
        raise LocalProtocolError(msg)
    tcp_like = server_key_slot(bytes(SPKI_DER_SIZE), host, DEFAULT_PORT)  # the same address rules and TLV
    tlv_length = tcp_like[ADDRESS_OFFSET + 1]
    tlv = tcp_like[ADDRESS_OFFSET : ADDRESS_OFFSET + 2 + tlv_length]
    slot = bytearray(b"\xff" * UDP_SLOT_SIZE)
    slot[: len(public_key_der)] = public_key_der
    slot[UDP_ADDRESS_OFFSET : UDP_ADDRESS_OFFSET + len(tlv)] = tlv
    if port != UDP_DEFAULT_PORT:
        slot[UDP_PORT_OFFSET : UDP_PORT_OFFSET + 2] = port.to_bytes(2, "big")
    return bytes(slot)
