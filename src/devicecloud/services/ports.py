"""
What services need from the outside world and adapters implement.
"""

from __future__ import annotations

from typing import Protocol


class Notifier(Protocol):
    """
    Delivers messages to users (password-reset tokens). Implementations: the log (default) or SMTP.
    """

    async def send_password_reset(self, *, email: str, token: str, reset_url: str) -> None: ...

    async def drain(self) -> None:
        """
        Finish messages still in flight (called on shutdown).
        """
        ...
