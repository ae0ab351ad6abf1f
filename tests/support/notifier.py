"""
A notifier that keeps what it was asked to send, so tests can read the reset token like a user reads mail.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SentReset:
    email: str
    token: str
    reset_url: str


@dataclass
class SentAlert:
    email: str
    account: str
    limit: str
    used: int
    allowed: int


@dataclass
class RecordingNotifier:
    sent: list[SentReset] = field(default_factory=list)
    alerts: list[SentAlert] = field(default_factory=list)

    async def send_usage_alert(
        self, *, email: str, account: str, limit: str, used: int, allowed: int
    ) -> None:
        self.alerts.append(SentAlert(email=email, account=account, limit=limit, used=used, allowed=allowed))

    async def send_password_reset(self, *, email: str, token: str, reset_url: str) -> None:
        self.sent.append(SentReset(email=email, token=token, reset_url=reset_url))

    async def drain(self) -> None:
        return None
