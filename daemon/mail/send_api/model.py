"""The values a v3 mail send request is turned into, and the error that names every
field it got wrong: shared by the parser, the MIME builder and the HTTP handler."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FieldError:
    message: str
    field: str | None

    def as_json(self) -> dict[str, str | None]:
        return {"message": self.message, "field": self.field}


class SendRequestInvalid(Exception):
    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


@dataclass(frozen=True)
class Address:
    email: str
    name: str | None = None


@dataclass(frozen=True)
class Attachment:
    content: bytes
    filename: str
    type: str
    disposition: str                  # "attachment" or "inline"
    content_id: str | None = None


@dataclass(frozen=True)
class Personalization:
    to: tuple[Address, ...]
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    sender: Address | None = None     # personalizations[].from
    subject: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    custom_args: dict[str, str] = field(default_factory=dict)

    @property
    def recipients(self) -> list[str]:
        return [a.email for a in (*self.to, *self.cc, *self.bcc)]


@dataclass(frozen=True)
class SendRequest:
    sender: Address
    personalizations: tuple[Personalization, ...]
    subject: str | None
    contents: tuple[tuple[str, str], ...]          # (MIME type, text), text/plain first
    attachments: tuple[Attachment, ...] = ()
    reply_to: tuple[Address, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    custom_args: dict[str, str] = field(default_factory=dict)
    categories: tuple[str, ...] = ()
    sandbox: bool = False
