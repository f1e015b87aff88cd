"""The service's settings: one folder, DDPM_GUARD_HOME (default ~/.ddpm-guard), holds all its state.

  DDPM_GUARD_HOME/
    settings.json        optional overrides of the fields below (JSON object)
    guard.db             the SQLite database (accounts, hashed API keys, audit jobs) unless database_url says otherwise
    keys/service.key     the service's watermark key (0600, created on first start); every *.key here is in the ring
    signer/              the C2PA signing chain (ca.pem, signer.pem, 0600 keys), created on first start
    trust/               extra PEM trust anchors (*.pem) for reading C2PA manifests

Precedence: environment (DDPM_GUARD_<FIELD>) > settings.json > the defaults here. Nothing below
`api/` reads settings: the library takes plain arguments.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ddpm_guard.generator.errors import GuardError

ENV_PREFIX = "DDPM_GUARD_"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    home: Path = Field(default_factory=lambda: Path(os.environ.get("DDPM_GUARD_HOME", "~/.ddpm-guard")).expanduser())
    database_url: str | None = None  # default: sqlite:///HOME/guard.db; any SQLAlchemy URL works
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)  # whole request, checked before any parsing
    max_files: int = Field(64, ge=1)  # files per scan request
    max_audit_bytes: int = Field(2 * 1024**3, ge=1024)  # an uploaded audit archive (POST /v1/audit only)
    max_file_bytes: int = Field(20 * 1024 * 1024, ge=1)  # one image's encoded bytes (the safe decoder's limit)
    max_generate: int = Field(64, ge=1)  # images per /v1/generate call
    rate_limit_per_minute: int = Field(120, ge=0)  # per API key; 0 disables
    # the "watermarked-ours" verdict's false-positive rate, for the whole key ring. A scan of N unmarked files
    # makes about alpha * N false claims, so the scan is stricter than `watermark verify` (0.01). Measured on
    # the bundled model (bench/service/scan_alpha.py): clean marks detected 0.745 / 0.685 / 0.565 at
    # 1e-2 / 1e-3 / 1e-4, with 105 / 20 / 0 false claims per 10,000 unmarked files.
    alpha: float = Field(1e-3, gt=0, lt=1)
    detector: str | None = None  # detector folder; default: the bundled detector
    watermark_decoder: str | None = None  # the guided mark's decoder folder (keep a private one); default: bundled
    checkpoint: str | None = None  # generator checkpoint; default: the bundled model
    color_checkpoint: str | None = None  # colour model for /v1/colorize; default: the bundled photos32 model
    max_app_steps: int = 250  # DDNM steps an application request may ask for (each costs one network pass)
    organization: str = "ddpm-guard"  # the O= of the C2PA signer made on first start
    trust_anchors: list[str] = Field(default_factory=list)  # extra PEM files; the home's own CA is always trusted
    batch_window_ms: float = Field(5.0, ge=0)  # scans arriving within this window share one model call; 0 disables
    max_batch: int = Field(64, ge=1)  # images per batched model call

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'guard.db'}"

    @property
    def has_store(self) -> bool:
        """A database to read accounts from: a configured URL, or a home that exists. A CLI scan or audit
        without a service home reads no accounts and creates no database."""
        return bool(self.database_url) or self.home.is_dir()

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def signer_dir(self) -> Path:
        return self.home / "signer"

    @property
    def trust_dir(self) -> Path:
        return self.home / "trust"

    def anchor_files(self) -> list[Path]:
        files = [self.signer_dir / "ca.pem"] if (self.signer_dir / "ca.pem").is_file() else []
        if self.trust_dir.is_dir():
            files += sorted(self.trust_dir.glob("*.pem"))
        return files + [Path(p) for p in self.trust_anchors]


def load_settings(home: str | os.PathLike | None = None, **overrides) -> Settings:
    """Defaults < HOME/settings.json < DDPM_GUARD_* environment < keyword overrides."""
    base = Path(home or os.environ.get("DDPM_GUARD_HOME", "~/.ddpm-guard")).expanduser()
    values: dict = {}
    f = base / "settings.json"
    if f.is_file():
        try:
            values.update(json.loads(f.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise GuardError(f"{f}: not valid JSON ({e})") from None
        if not isinstance(values, dict):
            raise GuardError(f"{f}: must hold a JSON object")
    for name, field in Settings.model_fields.items():
        raw = os.environ.get(ENV_PREFIX + name.upper())
        if raw is not None and name != "home":
            values[name] = json.loads(raw) if field.annotation in (list[str],) else raw
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["home"] = base
    try:
        return Settings(**values)
    except ValidationError as e:
        first = e.errors()[0]
        raise GuardError(f"setting {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
