"""API tokens: the credential of a client of the TLS listener.

A token reads ``vkt_<id>_<secret>``: ``id`` (12 hex digits) finds its row, ``secret``
(32 random bytes, URL-safe base64) proves it.  The store keeps only the SHA-256 of
the secret, so a copy of the database grants nothing; the check compares digests in
constant time.  The secret is shown once, by ``create``.

A token is refused when unknown, when its secret does not match, when revoked and
when expired; the last two are said as such only after the secret matched (a holder
of the secret learns nothing new from it).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from typing import Literal

from virtkit.errors import InvalidSpec, Unauthorized
from virtkit.service.models.tokens import TokenInfo
from virtkit.store.db import Store, TokenRow

PREFIX = "vkt_"
DAY = 86400.0
#: how often ``last_used`` is written for a token in use (not on every request).
TOUCH_INTERVAL = 60.0
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
TOKEN_RE = re.compile(r"^vkt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
FIX = ("create a token on the daemon's host with 'virtkit token create' and give it with "
       "--token, VIRTKIT_TOKEN or VIRTKIT_TOKEN_FILE")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token() -> tuple[str, str, str]:
    """(token id, the whole token to show once, the hash to store)."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return token_id, f"{PREFIX}{token_id}_{secret}", hash_secret(secret)


def split_token(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token, else None."""
    match = TOKEN_RE.match(token)
    return (match.group(1), match.group(2)) if match else None


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def status_of(row: TokenRow, now: float) -> Literal["active", "expired", "revoked"]:
    if row.revoked is not None:
        return "revoked"
    if row.expires is not None and now >= row.expires:
        return "expired"
    return "active"


_DUMMY_HASH = hash_secret("not a token")


def check_token(row: TokenRow | None, secret: str, now: float) -> TokenRow:
    """The token's row if ``secret`` matches and the token may be used; else Unauthorized."""
    matches = hmac.compare_digest(hash_secret(secret), row.hash if row else _DUMMY_HASH)
    if row is None or not matches:
        raise Unauthorized("the API token is not valid", fix=FIX)
    status = status_of(row, now)
    if status == "revoked":
        raise Unauthorized(f"the API token '{row.name}' was revoked", fix=FIX)
    if status == "expired":
        raise Unauthorized(f"the API token '{row.name}' expired on {_date(row.expires)}",
                           fix=FIX)
    return row


def _date(when: float | None) -> str:
    return "never" if when is None else time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(when))


def describe(row: TokenRow, now: float) -> TokenInfo:
    """A token as the API lists it: never its secret or hash."""
    return TokenInfo(name=row.name, id=row.id, created=row.created, expires=row.expires,
                     last_used=row.last_used, revoked=row.revoked,
                     status=status_of(row, now))


class TokenService:
    """Create, list, revoke and check API tokens."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, name: str | None = None, expires_days: float | None = None
               ) -> TokenInfo:
        now = time.time()
        token_id, token, digest = new_token()
        name = name or f"token-{token_id[:6]}"
        if not NAME_RE.match(name):
            raise InvalidSpec(f"token name {name!r}: use letters, digits and . _ @ - "
                              "(at most 64)", field="name")
        if expires_days is not None and (isinstance(expires_days, bool)
                                         or not isinstance(expires_days, int | float)
                                         or expires_days <= 0):
            raise InvalidSpec("expires: a positive number of days", field="expires")
        expires = now + float(expires_days) * DAY if expires_days is not None else None
        row = TokenRow(token_id, name, digest, now, expires, None, None)
        self.store.insert_token(row)
        info = describe(row, now)
        info.token = token
        return info

    def list(self) -> list[TokenInfo]:
        now = time.time()
        return [describe(row, now) for row in self.store.list_tokens()]

    def revoke(self, name: str) -> TokenInfo:
        return describe(self.store.revoke_token(name), time.time())

    def authenticate(self, header: str | None) -> TokenRow:
        """The token of an Authorization header, checked; Unauthorized otherwise."""
        token = bearer_token(header)
        if token is None:
            raise Unauthorized("this connection needs an API token "
                               "(an 'Authorization: Bearer <token>' header)", fix=FIX)
        parts = split_token(token)
        if parts is None:
            check_token(None, token, time.time())  # same work, same answer as a bad one
            raise AssertionError("unreachable")
        token_id, secret = parts
        now = time.time()
        row = check_token(self.store.find_token(token_id), secret, now)
        if row.last_used is None or now - row.last_used > TOUCH_INTERVAL:
            self.store.touch_token(row.id, now)
        return row
