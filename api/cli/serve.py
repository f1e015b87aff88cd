"""serve: the HTTP service."""

from __future__ import annotations

import argparse

from ddpm_guard.api.cli.common import int_at_least


def cmd_serve(a: argparse.Namespace) -> int:
    import uvicorn

    from ddpm_guard.api.service import create_app
    from ddpm_guard.api.settings import load_settings

    app = create_app(load_settings(a.home))
    # no access log: request lines may carry file names, and headers are never worth the risk
    uvicorn.run(app, host=a.host, port=a.port, access_log=False, log_level="info", server_header=False)
    return 0


def register(sub) -> None:
    sv = sub.add_parser("serve", help="run the HTTP service (state in $DDPM_GUARD_HOME, default ~/.ddpm-guard)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int_at_least(1), default=8000)
    sv.add_argument("--home", default=None)
    sv.set_defaults(func=cmd_serve)
