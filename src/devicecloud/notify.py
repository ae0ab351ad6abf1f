"""
Notifier backends (`services.ports.Notifier`): the log by default, SMTP when configured.
"""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage

import structlog

logger = structlog.get_logger("devicecloud.notify")


class LogNotifier:
    """
    Writes the reset token to the log, for development and servers without mail.
    """

    async def send_password_reset(self, *, email: str, token: str, reset_url: str) -> None:
        # WARNING, not INFO: the default level is quiet and an operator must see this line to help the user.
        logger.warning("password reset requested", email=email, token=token, reset_url=reset_url)


class SmtpNotifier:
    """
    Sends mail through an SMTP server (blocking smtplib, run in a worker thread).
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        sender: str,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = True,
        timeout: float = 20.0,
    ) -> None:
        self._host = host
        self._port = port
        self._sender = sender
        self._username = username
        self._password = password
        self._starttls = starttls
        self._timeout = timeout

    async def send_password_reset(self, *, email: str, token: str, reset_url: str) -> None:
        message = EmailMessage()
        message["From"] = self._sender
        message["To"] = email
        message["Subject"] = "Reset your devicecloud password"
        message.set_content(
            "Someone asked to reset the password of this devicecloud account.\n\n"
            f"Reset token: {token}\n\n"
            "Complete the reset with:\n"
            f"  PUT /v1/user/password-reset  token={token}  password=<new password>\n\n"
            f"({reset_url})\n\nIf this was not you, ignore this message.\n"
        )
        await asyncio.to_thread(self._send, message)
        logger.info("password reset mailed", email=email)

    def _send(self, message: EmailMessage) -> None:
        with smtplib.SMTP(self._host, self._port, timeout=self._timeout) as smtp:
            if self._starttls:
                smtp.starttls()
            if self._username and self._password:
                smtp.login(self._username, self._password)
            smtp.send_message(message)
