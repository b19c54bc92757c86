"""``virtkit token ...`` and ``virtkit tls ...``: credentials of the TLS listener.

Both go through the API like every command, and the daemon serves them only on its
local socket (or through virtkit+ssh://, which reaches that socket).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from virtkit.cli import render
from virtkit.cli.client import Client


def _when(stamp: float | None) -> str:
    return "-" if stamp is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(stamp))


def _expiry(stamp: float | None) -> str:
    return "never" if stamp is None else _when(stamp)


def cmd_token_create(client: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name, "expires_days": args.expires}
    result = client.post("/v1/tokens", body)
    if args.json:
        render.as_json(result)
        return 0
    if args.output:
        _write_private(Path(args.output), result["token"] + "\n")
        print(f"Token '{result['name']}' created (expires: {_expiry(result['expires'])}); "
              f"saved to {args.output}")
        return 0
    print(result["token"])
    print(f"Token '{result['name']}' created (expires: {_expiry(result['expires'])}). It is "
          "shown only now: keep it in a file (mode 0600) and use it with --token-file or "
          "VIRTKIT_TOKEN.", file=sys.stderr)
    return 0


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def cmd_token_list(client: Client, args: argparse.Namespace) -> int:
    rows = client.get("/v1/tokens")
    if not args.all:
        rows = [row for row in rows if row["status"] != "revoked"]
    if args.json:
        render.as_json(rows)
        return 0
    render.table(["Name", "Created", "Expires", "Last used", "Status"],
                 [[row["name"], _when(row["created"]), _expiry(row["expires"]),
                   _when(row["last_used"]), row["status"]]
                  for row in rows])
    return 0


def cmd_token_revoke(client: Client, args: argparse.Namespace) -> int:
    client.request("DELETE", f"/v1/tokens/{quote(args.name, safe='')}")
    print(f"Token '{args.name}' revoked")
    return 0


def cmd_tls_setup(client: Client, args: argparse.Namespace) -> int:
    result = client.post("/v1/tls/setup", {"hostnames": args.hostname or [],
                                           "force": args.force})
    if args.json:
        render.as_json(result)
        return 0
    made = "a new CA and a server certificate" if result["new_ca"] else \
        "a server certificate (the existing CA signed it)"
    print(f"Created {made} for: {', '.join(result['hostnames'])}")
    print(f"CA certificate (give it to clients): {result['ca']}")
    print(f"Server certificate SHA-256 fingerprint: {result['fingerprint']}")
    print("Clients: virtkit -c virtkit+tls://HOST --ca ca.pem (or --tls-fingerprint "
          "FINGERPRINT) with a token from 'virtkit token create'")
    print("Serve it: virtkitd --listen-tls 0.0.0.0:16515 (restart the daemon to use a new "
          "certificate)")
    return 0


def cmd_tls_show(client: Client, args: argparse.Namespace) -> int:
    result = client.get("/v1/tls")
    if args.json:
        render.as_json(result)
    elif not result["configured"]:
        print(f"No certificate in {result['folder']}: run 'virtkit tls setup'")
        return 1
    else:
        render.keyvalues([("CA certificate", result["ca"]), ("Certificate", result["cert"]),
                          ("Key", result["key"]), ("Fingerprint", result["fingerprint"])])
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = sub.add_parser("token", help="API tokens for remote (TLS) clients")
    token_sub = token.add_subparsers(dest="token_command", metavar="TOKENCOMMAND")
    token_sub.required = True
    create = token_sub.add_parser("create", help="create a token (printed once)")
    create.add_argument("--name", help="a name to list and revoke it by")
    create.add_argument("--expires", type=float, metavar="DAYS",
                        help="valid for this many days (default: until revoked)")
    create.add_argument("--output", "-o", help="write the token to this file (mode 0600) "
                        "instead of printing it")
    create.add_argument("--json", action="store_true")
    create.set_defaults(func=cmd_token_create)
    listing = token_sub.add_parser("list", help="list tokens (never their secrets)")
    listing.add_argument("--all", action="store_true", help="revoked tokens too")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_token_list)
    revoke = token_sub.add_parser("revoke", help="revoke a token by name")
    revoke.add_argument("name")
    revoke.set_defaults(func=cmd_token_revoke)

    tls = sub.add_parser("tls", help="the TLS listener's certificates")
    tls_sub = tls.add_subparsers(dest="tls_command", metavar="TLSCOMMAND")
    tls_sub.required = True
    setup = tls_sub.add_parser("setup", help="create a CA and a server certificate")
    setup.add_argument("--hostname", action="append", metavar="NAME",
                       help="a name or address clients use (repeatable; this host's names "
                       "and localhost are always included)")
    setup.add_argument("--force", action="store_true",
                       help="issue a new server certificate over an existing one")
    setup.add_argument("--json", action="store_true")
    setup.set_defaults(func=cmd_tls_setup)
    show = tls_sub.add_parser("show", help="where the certificate is and its fingerprint")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_tls_show)
