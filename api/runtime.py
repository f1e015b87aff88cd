"""The loaded state the CLI and the service share: settings, database, key ring, signer, models.

`prepare_home` creates what a first start needs (0700 home, a 0600 service key, a local C2PA CA and
signer); `open_runtime` loads it all once. The service calls both in its lifespan, never at import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ddpm_guard.generator.errors import GuardError
from ddpm_guard.api.scan import Scanner
from ddpm_guard.api.settings import Settings
from ddpm_guard.api.store import Account, Store

SERVICE_KEY_LABEL = "service"


def prepare_home(settings: Settings) -> None:
    """First start: the home folder (0700), the service's watermark key (0600) and a C2PA signer."""
    from ddpm_guard.watermark.keys import new_key_file
    from ddpm_guard.provenance.c2pa import new_signer

    try:
        settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        settings.keys_dir.mkdir(exist_ok=True, mode=0o700)
    except OSError as e:
        raise GuardError(f"{settings.home}: cannot create the service home ({e.strerror})") from None
    if not (settings.keys_dir / f"{SERVICE_KEY_LABEL}.key").exists():
        new_key_file(settings.keys_dir / f"{SERVICE_KEY_LABEL}.key")
    if not (settings.signer_dir / "signer.pem").exists():
        new_signer(settings.signer_dir, settings.organization)


def key_files(folder: Path | None) -> list[Path]:
    """The key ring's files: every *.key in `folder` (the home's keys/), sorted; none if it is absent."""
    return sorted(folder.glob("*.key")) if folder is not None and folder.is_dir() else []


def load_key_ring(folder: Path | None, extra: list[str] | tuple = ()) -> dict:
    """{label: key} for every *.key in `folder` plus extra key files; label = file stem (primed if taken)."""
    from ddpm_guard.watermark.keys import load_key

    ring = {}
    for f in key_files(folder) + [Path(p) for p in extra]:
        label = f.stem
        while label in ring:
            label += "'"
        ring[label] = load_key(f)
    return ring


@dataclass
class Runtime:
    settings: Settings
    store: Store | None
    scanner: Scanner
    model: torch.nn.Module
    schedule: object
    signer: object | None  # provenance.c2pa.ManifestSigner
    service_key: object | None  # watermark.keys.WatermarkKey
    color: tuple | None = None  # (model, schedule) of the colour model, when one is installed
    fast: object | None = None  # generator.checkpoint.Fast: the `fast` configuration, loaded on first use

    def fast_config(self):
        if self.fast is None:
            from ddpm_guard.generator.checkpoint import load_fast

            self.fast = load_fast(next(self.model.parameters()).device)
        return self.fast


def open_runtime(settings: Settings, *, extra_keys: list[str] | None = None, watermark: bool = True,
                 color: bool = False) -> Runtime:
    """Load the models and the home's state. `watermark=False` skips the watermark check in scans;
    `color=True` also loads the colour model (the service's /v1/colorize; a CLI scan has no use for it)."""
    from ddpm_guard.detector.predict import load_detector
    from ddpm_guard.generator.checkpoint import load_model
    from ddpm_guard.provenance.c2pa import load_signer, load_trust_anchors

    store = Store(settings.db_url) if settings.has_store else None
    model, schedule, _ = load_model(settings.checkpoint)
    ring = load_key_ring(settings.keys_dir, extra_keys or ()) if watermark else {}
    anchors = load_trust_anchors(settings.anchor_files())
    if ring:
        check_decoder(settings.watermark_decoder)
    scanner = Scanner(detector=load_detector(settings.detector), model=model if ring else None, schedule=schedule,
                      keys=ring, trust_anchors=anchors, alpha=settings.alpha, account_name=store.account_name if store else None,
                      decoder=settings.watermark_decoder)
    signer = load_signer(settings.signer_dir) if (settings.signer_dir / "signer.pem").exists() else None
    return Runtime(settings, store, scanner, model, schedule, signer, ring.get(SERVICE_KEY_LABEL),
                   _load_color(settings.color_checkpoint) if color else None)


def check_decoder(folder: str | None) -> None:
    """A watermark decoder folder that is no calibrated decoder: one message (GuardError) before any work."""
    if folder is not None:
        from ddpm_guard.watermark.guided.read import decoder_and_center

        decoder_and_center(folder)


def _load_color(folder: str | None) -> tuple | None:
    from ddpm_guard.generator.checkpoint import BUNDLED_COLOR, load_model

    if folder is None and not (BUNDLED_COLOR / "config.json").exists():
        return None
    model, schedule, _ = load_model(folder or BUNDLED_COLOR)
    return model, schedule


def new_api_key(home: str | None, account: str) -> tuple[Account, str]:
    """An API key for an account of the service in `home` (made on first use): (account, the key, shown once)."""
    from ddpm_guard.api.settings import load_settings

    settings = load_settings(home)
    prepare_home(settings)
    return Store(settings.db_url).new_api_key(account)


__all__ = ["Runtime", "open_runtime", "prepare_home", "new_api_key", "key_files", "load_key_ring", "check_decoder", "SERVICE_KEY_LABEL"]
