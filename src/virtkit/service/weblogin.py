"""Who may log in to the web console: a local account (PAM) or an API token.

The web console's login page sends either; this decides, and names the person for
the session and the audit log (``alice`` or ``token:NAME``).  A password is checked
by PAM (service ``virtkit``), then the account must be root or in the ``virtkit``
group: the same people who may open the daemon's unix socket.
"""

from __future__ import annotations

import asyncio

from virtkit.errors import Forbidden, Unauthorized, VirtkitError
from virtkit.host import pam
from virtkit.service.tokens import TokenService


class WebLogin:
    """Checks the web console's credentials."""

    def __init__(self, tokens: TokenService) -> None:
        self._tokens = tokens

    def with_token(self, token: str) -> str:
        """The principal of a valid API token, or Unauthorized."""
        try:
            return f"token:{self._tokens.authenticate(f'Bearer {token}').name}"
        except VirtkitError:
            raise Unauthorized("that API token is not valid (unknown, revoked or expired)",
                               fix="create one with 'virtkit token create' on the host") \
                from None

    async def with_password(self, user: str, password: str) -> str:
        """The user, when PAM accepts the password and the account may manage VMs."""
        if not await asyncio.to_thread(pam.authenticate, user, password):
            raise Unauthorized("wrong user name or password", fix="check both and try again")
        if not pam.may_manage(user):
            raise Forbidden(f"the account '{user}' may not manage virtual machines",
                            fix=f"add it to the '{pam.GROUP}' group (usermod -aG "
                                f"{pam.GROUP} {user}), or log in as root")
        return user
