"""Email over SMTP (`smtplib` in a worker thread).

TLS: `use_tls` with port 465 is implicit TLS (SMTPS, RFC 8314 §3.3); `use_tls` on any other port is STARTTLS
(RFC 3207) unless `implicit` says otherwise (CERTCTL_SMTP_IMPLICIT_TLS), and a server that does not offer
STARTTLS is an error, never a silent fall back to plain text. The reference's `USE_TLS=true` meant implicit TLS
on the default port 587, which no submission server speaks. AUTH (whatever the server offers) only when a user
name is set. Headers are built with `email.message.EmailMessage`, and recipient and sender are refused if they
hold CR or LF (header injection).
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import ClassVar

from certctl.connectors.notifiers.base import Notice, Notifier, NotifierError, tls_context


@dataclass(frozen=True)
class EmailConfig:
    host: str
    port: int = 587
    username: str = ""
    password: str = ""  # never logged, never in an error
    from_address: str = ""
    use_tls: bool = True
    timeout: float = 30.0
    ca_file: str | None = None
    implicit: bool | None = None  # implicit TLS; None: on port 465 only

    @property
    def implicit_tls(self) -> bool:
        return self.use_tls and (self.port == 465 if self.implicit is None else self.implicit)

    def __repr__(self) -> str:  # dataclass repr would print the password
        return f"EmailConfig(host={self.host!r}, port={self.port}, username={self.username!r}, use_tls={self.use_tls})"


def _address(value: str, what: str) -> str:
    if "\r" in value or "\n" in value:
        raise NotifierError(f"Email: the {what} contains a line break", retryable=False)
    _, address = parseaddr(value)
    if "@" not in address:
        raise NotifierError(f"Email: the {what} '{value}' is not an email address", retryable=False)
    return value


class EmailNotifier(Notifier):
    channel: ClassVar[str] = "Email"

    def __init__(self, config: EmailConfig) -> None:
        self.config = config
        self._tls: ssl.SSLContext = tls_context(config.ca_file)

    def build(self, notice: Notice) -> EmailMessage:
        message = EmailMessage()
        message["From"] = _address(self.config.from_address, "sender")
        message["To"] = _address(notice.recipient, "recipient")
        message["Subject"] = notice.subject.replace("\r", " ").replace("\n", " ")
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid(domain="certctl")
        if notice.html:
            message.set_content("This message is HTML; open it in a mail client that shows HTML.")
            message.add_alternative(notice.message, subtype="html")
        else:
            message.set_content(notice.message)
        return message

    def _send_sync(self, message: EmailMessage) -> None:
        c = self.config
        smtp: smtplib.SMTP
        if c.implicit_tls:
            smtp = smtplib.SMTP_SSL(c.host, c.port, timeout=c.timeout, context=self._tls)
        else:
            smtp = smtplib.SMTP(c.host, c.port, timeout=c.timeout)
        try:
            smtp.ehlo()
            if c.use_tls and not c.implicit_tls:
                if not smtp.has_extn("starttls"):
                    raise NotifierError(f"Email: {c.host}:{c.port} does not offer STARTTLS (CERTCTL_SMTP_USE_TLS=true)")
                smtp.starttls(context=self._tls)
                smtp.ehlo()
            if c.username:
                mechanisms = smtp.esmtp_features.get("auth", "").upper().split()
                if "PLAIN" in mechanisms:  # one exchange, as the reference does (smtplib.login would try others too)
                    smtp.user, smtp.password = c.username, c.password
                    smtp.auth("PLAIN", smtp.auth_plain)
                else:
                    smtp.login(c.username, c.password)
            smtp.send_message(message)
        finally:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()

    async def send(self, notice: Notice) -> None:
        message = self.build(notice)
        try:
            await asyncio.to_thread(self._send_sync, message)
        except NotifierError:
            raise
        except smtplib.SMTPAuthenticationError as exc:
            raise NotifierError(f"Email: {self.config.host} refused the login ({exc.smtp_code})") from None
        except smtplib.SMTPRecipientsRefused:
            raise NotifierError(f"Email: {self.config.host} refused the recipient", retryable=False) from None
        except smtplib.SMTPResponseException as exc:
            raise NotifierError(f"Email: {self.config.host} answered {exc.smtp_code}",
                                retryable=exc.smtp_code < 500) from None  # 4xx: transient (RFC 5321 §4.2.1)
        except ssl.SSLError as exc:
            raise NotifierError(f"Email: TLS with {self.config.host} failed ({exc.reason or 'handshake'})") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise NotifierError(f"Email: {self.config.host}:{self.config.port}: {type(exc).__name__}") from None
