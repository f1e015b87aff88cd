"""keys new | new-signer | new-api: the secrets (watermark keys, the C2PA signer, the service's API keys)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ddpm_guard.api.cli.common import add_out


def cmd_keys_new(a: argparse.Namespace) -> int:
    from ddpm_guard.watermark.keys import new_key_file

    key = new_key_file(a.out)
    print(json.dumps({"key_file": str(a.out), "key_fingerprint": key.fingerprint, "mode": "0600"}))
    return 0


def cmd_keys_new_signer(a: argparse.Namespace) -> int:
    from ddpm_guard.provenance.c2pa import new_signer

    new_signer(a.out, a.organization)
    print(json.dumps({"signer": str(a.out), "trust_anchor": str(Path(a.out) / "ca.pem"), "organization": a.organization}))
    return 0


def cmd_keys_new_api(a: argparse.Namespace) -> int:
    from ddpm_guard.api.runtime import new_api_key

    account, key = new_api_key(a.home, a.account)
    print(json.dumps({"account": account.name, "account_id": account.id, "api_key": key}))
    return 0


def register(sub) -> None:
    k = sub.add_parser("keys", help="watermark key files").add_subparsers(dest="keys_command", required=True)
    kn = k.add_parser("new", help="create a 256-bit secret key file with 0600 permissions")
    add_out(kn, None)
    kn.set_defaults(func=cmd_keys_new)
    ks = k.add_parser("new-signer", help="create a local CA and a C2PA signing certificate (private keys 0600)")
    add_out(ks, "folder for ca.pem, ca.key, signer.pem, signer.key")
    ks.add_argument("--organization", default="ddpm-guard", help="the certificate's Organization (O=)")
    ks.set_defaults(func=cmd_keys_new_signer)
    ka = k.add_parser("new-api", help="create an API key for an account of the service; printed once, stored hashed")
    ka.add_argument("--account", required=True)
    ka.add_argument("--home", default=None, help="the service home (default $DDPM_GUARD_HOME or ~/.ddpm-guard)")
    ka.set_defaults(func=cmd_keys_new_api)
