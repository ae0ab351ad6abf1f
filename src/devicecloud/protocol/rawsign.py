"""
The server's raw PKCS#1 v1.5 type-1 signature, the one RSA private-key operation of every handshake.

Theory of operation:
    The cloud signs ``H = HMAC-SHA1(K, C)`` as ``(00 01 FF… 00 ‖ H)^d mod n``: a type-1 block *without* the
    DigestInfo that ``cryptography``'s ``sign()`` always adds, and ``cryptography`` has no raw alternative
    (``sign(…, None)`` raises; its bindings expose neither ``RSA_private_encrypt`` nor ``EVP_PKEY_sign``).
    `crypto.rsa_sign_raw` computes it with Python integers: correct, blinded, but ~5.4 ms for RSA-2048
    where OpenSSL takes ~0.26 ms, which alone would cap a server core at under 200 handshakes/s.

    `raw_signer(key)` returns a `RawSigner` for one key, chosen once (see docs/decisions/0006):

    - ``libcrypto``: OpenSSL's ``EVP_PKEY_sign`` with ``RSA_PKCS1_PADDING`` and no signature digest, which
      OpenSSL defines as exactly this raw type-1 signature (it is ``RSA_private_encrypt``), through
      `ctypes` (stdlib) into the libcrypto that Python's own ``ssl`` module is linked against (found
      through the ``_ssl`` extension), else the system's versioned ``libcrypto``. OpenSSL's private-key
      path is constant-time and blinded. The key is loaded into OpenSSL once; every signature makes a
      fresh ``EVP_PKEY_CTX`` (no shared mutable state, so any thread may sign). Before it is used, a
      signature made this way must verify with the public key, so a broken binding is never used;
    - ``python``: `crypto.rsa_sign_raw`, when no usable libcrypto is found (``reason`` says why).

    Both give byte-identical output (the signature is deterministic), so conformance replays do not care
    which one signs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import sys
from collections.abc import Callable
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devicecloud.protocol import crypto
from devicecloud.protocol.errors import LocalProtocolError

__all__ = ["RawSigner", "raw_signer"]

SignerBackend = Literal["libcrypto", "python"]

# OpenSSL constants (stable since 1.0: rsa.h, evp.h).
_EVP_PKEY_RSA = 6
_EVP_PKEY_ALG_CTRL = 0x1000
_EVP_PKEY_CTRL_RSA_PADDING = _EVP_PKEY_ALG_CTRL + 1
_RSA_PKCS1_PADDING = 1
_SELF_TEST_DATA = b"devicecloud raw signature self-test"[:20]


class RawSigner:
    """
    Raw type-1 signatures with one private key: ``signer.sign(data)`` → the ``k``-byte signature.

    Attributes:
        backend: ``"libcrypto"`` or ``"python"``.
        reason: why the Python backend was chosen (empty for libcrypto).
    """

    def __init__(
        self, key_size: int, sign: Callable[[bytes], bytes], backend: SignerBackend, reason: str = ""
    ) -> None:
        self._k = (key_size + 7) // 8
        self._sign = sign
        self.backend: SignerBackend = backend
        self.reason = reason

    def sign(self, data: bytes) -> bytes:
        """
        The raw type-1 signature of ``data`` (at most ``k - 11`` bytes).

        Returns:
            ``(00 01 FF… 00 ‖ data)^d mod n`` as ``k`` bytes, identical to `crypto.rsa_sign_raw`.
        """
        if len(data) > self._k - 11:
            raise LocalProtocolError("data too long for a raw RSA signature")
        return self._sign(data)


def python_signer(private_key: rsa.RSAPrivateKey, reason: str = "") -> RawSigner:
    """
    The pure-Python signer (`crypto.rsa_sign_raw`): the reference, and the fallback.
    """
    return RawSigner(
        private_key.key_size, lambda data: crypto.rsa_sign_raw(private_key, data), "python", reason
    )


def raw_signer(private_key: rsa.RSAPrivateKey) -> RawSigner:
    """
    The fastest safe signer available for ``private_key`` (libcrypto, else Python).

    Costs one key load into OpenSSL and one signature plus its verification; build it once per key.
    """
    lib, why = _libcrypto()
    if lib is None:
        return python_signer(private_key, why)
    try:
        signer = _LibcryptoKey(lib, private_key)
    except _BindingError as exc:
        return python_signer(private_key, f"libcrypto cannot load the key: {exc}")
    try:
        sample = signer.sign(_SELF_TEST_DATA)
    except _BindingError as exc:
        return python_signer(private_key, f"libcrypto cannot sign: {exc}")
    if not crypto.rsa_verify_raw(private_key.public_key(), sample, _SELF_TEST_DATA):
        return python_signer(private_key, "libcrypto made a signature that does not verify")
    return RawSigner(private_key.key_size, signer.sign, "libcrypto")


# ------------------------------------------------------------------------------------------------ libcrypto


class _BindingError(LocalProtocolError):
    pass


class _Libcrypto:
    """
    The eight libcrypto functions used, with their C signatures.
    """

    def __init__(self, lib: ctypes.CDLL) -> None:
        vp, size_t = ctypes.c_void_p, ctypes.c_size_t
        self.d2i_AutoPrivateKey = lib.d2i_AutoPrivateKey
        self.d2i_AutoPrivateKey.argtypes = [vp, ctypes.POINTER(ctypes.c_char_p), ctypes.c_long]
        self.d2i_AutoPrivateKey.restype = vp
        self.EVP_PKEY_free = lib.EVP_PKEY_free
        self.EVP_PKEY_free.argtypes = [vp]
        self.EVP_PKEY_free.restype = None
        self.EVP_PKEY_CTX_new = lib.EVP_PKEY_CTX_new
        self.EVP_PKEY_CTX_new.argtypes = [vp, vp]
        self.EVP_PKEY_CTX_new.restype = vp
        self.EVP_PKEY_CTX_free = lib.EVP_PKEY_CTX_free
        self.EVP_PKEY_CTX_free.argtypes = [vp]
        self.EVP_PKEY_CTX_free.restype = None
        self.EVP_PKEY_sign_init = lib.EVP_PKEY_sign_init
        self.EVP_PKEY_sign_init.argtypes = [vp]
        self.EVP_PKEY_sign_init.restype = ctypes.c_int
        self.EVP_PKEY_CTX_ctrl = lib.EVP_PKEY_CTX_ctrl
        self.EVP_PKEY_CTX_ctrl.argtypes = [vp, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, vp]
        self.EVP_PKEY_CTX_ctrl.restype = ctypes.c_int
        self.EVP_PKEY_sign = lib.EVP_PKEY_sign
        self.EVP_PKEY_sign.argtypes = [vp, ctypes.c_char_p, ctypes.POINTER(size_t), ctypes.c_char_p, size_t]
        self.EVP_PKEY_sign.restype = ctypes.c_int
        # The error queue is shared with Python's ssl module: never leave our failures in it.
        self.ERR_clear_error = lib.ERR_clear_error
        self.ERR_clear_error.argtypes = []
        self.ERR_clear_error.restype = None


def _libcrypto() -> tuple[_Libcrypto | None, str]:
    """
    The libcrypto Python's ``ssl`` uses (symbols found through ``_ssl``), else a versioned system one.
    """
    candidates: list[str] = []
    spec = importlib.util.find_spec("_ssl")
    if spec is not None and spec.origin and spec.origin not in ("built-in", "frozen"):
        candidates.append(spec.origin)
    # An unversioned libcrypto on macOS aborts the process when loaded; elsewhere find_library is safe.
    found = ctypes.util.find_library("crypto") if sys.platform.startswith("linux") else None
    if found:
        candidates.append(found)
    tried: list[str] = []
    for name in candidates:
        try:
            return _Libcrypto(ctypes.CDLL(name)), ""
        except (OSError, AttributeError) as exc:
            tried.append(f"{name}: {exc}")
    return None, "no usable libcrypto (" + ("; ".join(tried) or "none found") + ")"


class _LibcryptoKey:
    """
    One private key loaded into OpenSSL; freed with this object.
    """

    def __init__(self, lib: _Libcrypto, private_key: rsa.RSAPrivateKey) -> None:
        self._lib = lib
        self._pkey: int | None = None
        self._k = (private_key.key_size + 7) // 8
        der = private_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        cursor = ctypes.c_char_p(der)
        pkey = lib.d2i_AutoPrivateKey(None, ctypes.byref(cursor), len(der))
        if not pkey:
            lib.ERR_clear_error()
            raise _BindingError("d2i_AutoPrivateKey failed")
        self._pkey = pkey

    def sign(self, data: bytes) -> bytes:
        lib = self._lib
        ctx = lib.EVP_PKEY_CTX_new(self._pkey, None)
        if not ctx:
            lib.ERR_clear_error()
            raise _BindingError("EVP_PKEY_CTX_new failed")
        try:
            out = ctypes.create_string_buffer(self._k)
            out_len = ctypes.c_size_t(self._k)
            ok = (
                lib.EVP_PKEY_sign_init(ctx) == 1
                and lib.EVP_PKEY_CTX_ctrl(
                    ctx, _EVP_PKEY_RSA, -1, _EVP_PKEY_CTRL_RSA_PADDING, _RSA_PKCS1_PADDING, None
                )
                > 0
                and lib.EVP_PKEY_sign(ctx, out, ctypes.byref(out_len), data, len(data)) == 1
            )
            if not ok:
                lib.ERR_clear_error()
                raise _BindingError("EVP_PKEY_sign failed")
        finally:
            lib.EVP_PKEY_CTX_free(ctx)
        if out_len.value != self._k:
            raise _BindingError(f"EVP_PKEY_sign gave {out_len.value} bytes, expected {self._k}")
        return out.raw

    def __del__(self) -> None:
        pkey, self._pkey = self._pkey, None
        if pkey:
            self._lib.EVP_PKEY_free(pkey)
