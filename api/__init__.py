"""The top layer: the use cases the CLI and the service share (usecases), THE verdict (scan), the CLI (cli/), the
FastAPI service (service, routes/) and the audit (audit/). Nothing imports api."""
