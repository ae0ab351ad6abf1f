"""
Notifier backends (`services.ports.Notifier`): the log by default, SMTP when configured.
"""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Coroutine
from email.message import EmailMessage
from typing import Any

import structlog

logger = structlog.get_logger("devicecloud.notify")


class LogNotifier:
    """
    Writes the reset token to the log, for development and servers without mail.
    """

    async def send_password_reset(self, *, email: str, token: str, reset_url: str) -> None:
        # WARNING, not INFO: the default level is quiet and an operator must see this line to help the user.
        logger.warning("password reset requested", email=email, token=token, reset_url=reset_url)

    async def send_usage_alert(
        self, *, email: str, account: str, limit: str, used: int, allowed: int
    ) -> None:
        logger.warning(
            "usage limit reached", email=email, account=account, limit=limit, used=used, allowed=allowed
        )

    async def drain(self) -> None:
        return None


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
        self._pending: set[asyncio.Task[None]] = set()

    async def send_password_reset(self, *, email: str, token: str, reset_url: str) -> None:
        # Sent in the background: the request must answer the same, at the same speed, whether or not the
        # account exists and whether or not the mail server is up (so accounts cannot be probed).
        task = asyncio.create_task(self._deliver(email, token, reset_url))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def send_usage_alert(
        self, *, email: str, account: str, limit: str, used: int, allowed: int
    ) -> None:
        message = self._message(email, f"devicecloud: {account} reached its {limit} limit")
        message.set_content(
            f"The {account} account reached a limit of its service agreement this billing period.\n\n"
            f"  {limit}: {used} used, {allowed} allowed\n"
        )
        self._background(self._mail(message, "usage alert", email))

    def _message(self, email: str, subject: str) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self._sender
        message["To"] = email
        message["Subject"] = subject
        return message

    def _background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _mail(self, message: EmailMessage, what: str, email: str) -> None:
        try:
            await asyncio.to_thread(self._send, message)
        except (OSError, smtplib.SMTPException) as exc:
            logger.error("mail failed", what=what, email=email, error=str(exc))
            return
        logger.info("mailed", what=what, email=email)

    async def drain(self) -> None:
        """
        Wait for mail still being sent (shutdown, tests).
        """
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def _deliver(self, email: str, token: str, reset_url: str) -> None:
        message = EmailMessage()
        message["From"] = self._sender
        message["To"] = email
        message["Subject"] = "Reset your devicecloud password"
        message.set_content(
            "Someone asked to reset the password of this devicecloud account.\n\n"
            f"Reset token: {token}\n\n"
            "Complete the reset with:\n"
            f"  PUT {reset_url}  with token={token} and password=<new password>\n\n"
            "If this was not you, ignore this message.\n"
        )
        try:
            await asyncio.to_thread(self._send, message)
        except (OSError, smtplib.SMTPException) as exc:
            logger.error("password reset mail failed", email=email, error=str(exc))
            return
        logger.info("password reset mailed", email=email)

    def _send(self, message: EmailMessage) -> None:
        with smtplib.SMTP(self._host, self._port, timeout=self._timeout) as smtp:
            if self._starttls:
                smtp.starttls()
            if self._username and self._password:
                smtp.login(self._username, self._password)
            smtp.send_message(message)
