"""Secret key files and the keyed streams derived from them.

A key is 256 bits from `secrets`, stored as hex in a file with 0600 permissions. Every stream the
watermark needs (sign chips, permutation, payload tag) is HMAC-SHA256(key, label || counter), a
keyed PRF. The key itself is never printed, logged, put in an exception or returned by an API:
`WatermarkKey.__repr__` shows only a public fingerprint.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

import numpy as np

from ddpm_guard.generator.errors import GuardError

HEADER = "ddpm-guard-watermark-key-v1"
KEY_BYTES = 32


class WatermarkKey:
    __slots__ = ("_secret", "fingerprint")

    def __init__(self, secret: bytes):
        if len(secret) != KEY_BYTES:
            raise GuardError(f"a watermark key holds {KEY_BYTES} bytes")
        self._secret = secret
        # public, non-reversible id so users can tell keys apart without seeing them
        self.fingerprint = hashlib.sha256(b"ddpm-guard-fingerprint" + secret).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"WatermarkKey(fingerprint={self.fingerprint})"

    __str__ = __repr__

    def __reduce__(self):  # never pickled into logs, caches or worker queues by accident
        raise TypeError("watermark keys cannot be pickled")

    def stream(self, label: str, nbytes: int) -> bytes:
        """nbytes of HMAC-SHA256(key, label || counter) in counter mode."""
        out, counter = bytearray(), 0
        while len(out) < nbytes:
            out += hmac.new(self._secret, label.encode() + counter.to_bytes(8, "big"), hashlib.sha256).digest()
            counter += 1
        return bytes(out[:nbytes])

    def bits(self, label: str, n: int) -> np.ndarray:
        return np.unpackbits(np.frombuffer(self.stream(label, (n + 7) // 8), dtype=np.uint8))[:n]

    def permutation(self, label: str, n: int) -> np.ndarray:
        """A keyed permutation of range(n): argsort of PRF-derived 64-bit values."""
        return np.argsort(np.frombuffer(self.stream(label, 8 * n), dtype=">u8"), kind="stable")

    def tag(self, message: bytes, nbits: int) -> np.ndarray:
        """A keyed MAC of the payload, truncated to nbits: flags a payload decoded wrongly."""
        d = hmac.new(self._secret, b"payload-tag" + message, hashlib.sha256).digest()
        return np.unpackbits(np.frombuffer(d, dtype=np.uint8))[:nbits]


def new_key_file(path: str | os.PathLike, overwrite: bool = False) -> WatermarkKey:
    """Create a key file readable only by its owner. Refuses to overwrite an existing key."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise GuardError(f"{p} already exists; refusing to overwrite a key (delete it first if you mean to)")
    if not p.parent.is_dir():
        raise GuardError(f"{p.parent}: no such folder")
    secret = secrets.token_bytes(KEY_BYTES)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(p, flags, 0o600)  # created 0600: never world-readable, not even for a moment
    except OSError as e:
        raise GuardError(f"{p}: cannot create the key file ({e.strerror})") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, f"{HEADER}\n{secret.hex()}\n".encode())
    finally:
        os.close(fd)
    return WatermarkKey(secret)


def load_key(path: str | os.PathLike) -> WatermarkKey:
    p = Path(path)
    if not p.is_file():
        raise GuardError(f"{p}: no such key file (create one with `ddpm-guard keys new --out {p}`)")
    mode = stat.S_IMODE(p.stat().st_mode)
    if mode & 0o077:
        raise GuardError(f"{p}: permissions {oct(mode)} are too open; run `chmod 600 {p}`")
    try:
        lines = p.read_text().split()
        if len(lines) != 2 or lines[0] != HEADER:
            raise ValueError
        secret = bytes.fromhex(lines[1])
        if len(secret) != KEY_BYTES:
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise GuardError(f"{p}: not a ddpm-guard watermark key file") from None  # content never echoed
    return WatermarkKey(secret)
