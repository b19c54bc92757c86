"""Browser sessions of the web console: login, the session cookie, CSRF and expiry.

A browser cannot put an API token in a WebSocket handshake, so the web console
logs in once (a local account's password through PAM, or an API token) and gets
a session: a random id in an ``HttpOnly; Secure; SameSite=Strict`` cookie, and a
separate CSRF token that the page's script sends back in ``X-CSRF-Token`` on
every mutating request.  A forged cross-site form or script has the cookie but
cannot read the CSRF token, so it is refused; WebSocket handshakes (which carry
no custom header) must come from the console's own origin instead.

Sessions live in the daemon's memory: a restarted daemon asks for a new login,
which is the safe direction.  A session ends after :data:`IDLE_SECONDS` without a
request, after :data:`MAX_SECONDS` in all, or at logout.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field

from virtkit.errors import Forbidden, Unauthorized

COOKIE = "virtkit_session"
CSRF_HEADER = "X-CSRF-Token"
IDLE_SECONDS = 30 * 60
MAX_SECONDS = 12 * 3600
#: failed logins from one address before it must wait, and how long
FAILURES_BEFORE_LOCKOUT = 5
LOCKOUT_SECONDS = 60.0


@dataclass
class Session:
    """One logged-in browser."""

    user: str
    method: str  # "password" or "token"
    csrf: str
    created: float
    last_seen: float

    def public(self) -> dict[str, str]:
        """What the page may know of its session (the id stays in the cookie)."""
        return {"user": self.user, "method": self.method, "csrf": self.csrf}


@dataclass
class _Failures:
    count: int = 0
    until: float = 0.0


@dataclass
class SessionStore:
    """The daemon's browser sessions; thread-safe (login runs PAM in a thread)."""

    idle_seconds: float = IDLE_SECONDS
    max_seconds: float = MAX_SECONDS
    _sessions: dict[str, Session] = field(default_factory=dict)
    _failures: dict[str, _Failures] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def create(self, user: str, method: str) -> tuple[str, Session]:
        """A new session for ``user``: (cookie value, session)."""
        now = time.monotonic()
        session_id = secrets.token_urlsafe(32)
        session = Session(user, method, secrets.token_urlsafe(24), now, now)
        with self._lock:
            self._expire(now)
            self._sessions[session_id] = session
        return session_id, session

    def check(self, session_id: str | None) -> Session:
        """The live session of this cookie value, or Unauthorized (absent or expired)."""
        if not session_id:
            raise Unauthorized("log in first", fix="open the web console's login page")
        now = time.monotonic()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and not self._alive(session, now):
                del self._sessions[session_id]
                session = None
            if session is None:
                raise Unauthorized("your session has expired or was ended; log in again",
                                   fix="log in again")
            session.last_seen = now
            return session

    @staticmethod
    def check_csrf(session: Session, header: str | None) -> None:
        """Forbidden unless ``header`` is this session's CSRF token."""
        if not header or not hmac.compare_digest(header, session.csrf):
            raise Forbidden("the request lacks this session's CSRF token (a cross-site "
                            "request?)", fix="reload the web console and try again")

    def end(self, session_id: str | None) -> None:
        with self._lock:
            self._sessions.pop(session_id or "", None)

    # -- login throttling -------------------------------------------------------------

    def check_throttle(self, address: str) -> None:
        """Forbidden while ``address`` is locked out after repeated failed logins."""
        with self._lock:
            failures = self._failures.get(address)
            wait = failures.until - time.monotonic() if failures else 0.0
        if wait > 0:
            raise Forbidden(f"too many failed logins from {address}; wait {wait:.0f} s",
                            fix="check the user name and password, then try again later")

    def record_failure(self, address: str) -> None:
        with self._lock:
            failures = self._failures.setdefault(address, _Failures())
            failures.count += 1
            if failures.count >= FAILURES_BEFORE_LOCKOUT:
                failures.count = 0
                failures.until = time.monotonic() + LOCKOUT_SECONDS

    def record_success(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)

    # -- helpers ----------------------------------------------------------------------

    def _alive(self, session: Session, now: float) -> bool:
        return (now - session.last_seen < self.idle_seconds
                and now - session.created < self.max_seconds)

    def _expire(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items() if not self._alive(s, now)]:
            del self._sessions[key]
