"""
Registering a virtual device with a devicecloud (or Particle) server's HTTP API, as particle-cli does.

Theory of operation:
    A device the cloud has never seen is refused at the handshake, so before the first connection the
    device's public key goes to ``POST /v1/provisioning/:deviceId`` (what ``particle keys send`` does); then
    the user claims it (``POST /v1/devices``) so ``particle list/get/call`` show it, and may name it
    (``PUT /v1/devices/:id``). Every step is idempotent, so running them on each start is safe: claiming a
    device that is already yours counts as success (checked with ``GET /v1/devices/:id`` when the claim is
    refused, since the refusal's wording is server-specific).

    :class:`CloudApi` is a thin typed wrapper over an injected ``httpx.AsyncClient`` (tests pass one with a
    ``MockTransport``). Failures raise :class:`ApiError` carrying the server's ``error_description`` so the
    CLI can print it as is.
"""

from __future__ import annotations

import secrets
from types import TracebackType
from typing import Any, Self

import httpx

__all__ = ["ApiError", "CloudApi"]

#: particle-cli's OAuth client; every Particle-compatible server accepts it for the password grant.
PARTICLE_CLIENT = ("particle", "particle")


class ApiError(Exception):
    """
    An HTTP API call failed.

    Attributes:
        action: what was being done ("claim the device").
        status: the HTTP status, or ``None`` when the server could not be reached.
        error: the body's ``error`` code, if any.
        description: the most readable explanation found (``error_description``, ``errors``, …).
    """

    def __init__(self, action: str, status: int | None, description: str, error: str | None = None) -> None:
        where = f"HTTP {status}" if status is not None else "no answer"
        super().__init__(f"could not {action} ({where}): {description}")
        self.action = action
        self.status = status
        self.error = error
        self.description = description


def _describe_failure(response: httpx.Response) -> tuple[str, str | None]:
    """The most readable text in an error response, and its ``error`` code."""
    try:
        body: Any = response.json()
    except ValueError:
        text = response.text.strip()[:200]
        return text or response.reason_phrase, None
    if not isinstance(body, dict):
        return str(body)[:200], None
    error = body.get("error") if isinstance(body.get("error"), str) else None
    errors = body.get("errors")
    for candidate in (body.get("error_description"), body.get("info"), body.get("message")):
        if isinstance(candidate, str) and candidate:
            return candidate, error
    if isinstance(errors, list) and errors:
        parts = [
            e if isinstance(e, str) else str(e.get("message", e)) if isinstance(e, dict) else str(e)
            for e in errors
        ]
        return "; ".join(parts), error
    return error or response.reason_phrase, error


class CloudApi:
    """
    The few API calls a virtual device needs.

    Args:
        base_url: e.g. ``http://127.0.0.1:8080``.
        token: an access token (or call :meth:`login`).
        client: an ``httpx.AsyncClient`` to use (not closed by us); default: our own.
        timeout: seconds per request for our own client.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout)

    async def aclose(self) -> None:
        """Close our own HTTP client."""
        if self._own_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _call(self, action: str, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token and "auth" not in kwargs else {}
        try:
            response = await self._client.request(method, self.base_url + path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(
                action, None, f"cannot reach {self.base_url}: {exc or type(exc).__name__}"
            ) from exc
        if response.is_error:
            description, error = _describe_failure(response)
            raise ApiError(action, response.status_code, description, error)
        try:
            body = response.json()
        except ValueError:
            return None
        if isinstance(body, dict) and body.get("ok") is False:  # Particle-style 200 with a refusal inside
            description, error = _describe_failure(response)
            raise ApiError(action, response.status_code, description, error)
        return body

    async def login(self, username: str, password: str) -> str:
        """
        Get an access token with the password grant (``POST /oauth/token``); it is kept for later calls.

        Returns:
            The access token.
        """
        body = await self._call(
            "log in",
            "POST",
            "/oauth/token",
            auth=PARTICLE_CLIENT,
            data={"grant_type": "password", "username": username, "password": password},
        )
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str):
            raise ApiError("log in", 200, "the answer holds no access_token")
        self.token = token
        return token

    async def send_public_key(self, device_id: str, public_key_pem: str, algorithm: str = "rsa") -> None:
        """
        Register a device's public key (``POST /v1/provisioning/:deviceId``, as ``particle keys send``):
        ``algorithm`` is ``"rsa"`` (TCP devices) or ``"ecc"`` (Gen3 devices' P-256 keys).
        """
        await self._call(
            "register the device key",
            "POST",
            f"/v1/provisioning/{device_id}",
            json={
                "deviceID": device_id,
                "publicKey": public_key_pem,
                "filename": "virtual",
                "order": f"manual_{secrets.token_hex(8)}",
                "algorithm": algorithm,
            },
        )

    async def get_device(self, device_id: str) -> dict[str, Any]:
        """
        One of my devices (``GET /v1/devices/:id``).

        Returns:
            The device object.
        """
        body = await self._call("look up the device", "GET", f"/v1/devices/{device_id}")
        return body if isinstance(body, dict) else {}

    async def claim(self, device_id: str) -> bool:
        """
        Claim a device (``POST /v1/devices``).

        Returns:
            True if it was claimed now, False if it was mine already.
        """
        try:
            await self._call("claim the device", "POST", "/v1/devices", json={"id": device_id})
        except ApiError as refused:
            if refused.status is None:
                raise
            try:
                await self.get_device(device_id)
            except ApiError:
                raise refused from None
            return False
        return True

    async def rename(self, device_id: str, name: str) -> None:
        """Rename a device (``PUT /v1/devices/:id`` with ``name``)."""
        await self._call("rename the device", "PUT", f"/v1/devices/{device_id}", json={"name": name})
