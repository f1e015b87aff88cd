"""Accounts, API keys and audit jobs: SQLAlchemy, a SQLite file in DDPM_GUARD_HOME by default.

An API key is `dg_<id>_<secret>`: `id` (8 hex) finds the row, the secret is 256 bits from `secrets`.
Only SHA-256 of the whole key is stored. A slow password hash buys nothing for a 256-bit random
secret, and a fast one keeps authentication off the request's critical path. Comparison is
constant-time (`hmac.compare_digest`). The plain key is returned once, at creation, and never again.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import ForeignKey, String, create_engine, event, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from ddpm_guard.generator.errors import GuardError

KEY_PREFIX = "dg"
MAX_ACCOUNT_ID = 2**32 - 1  # the account id is the watermark's 32-bit payload


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


class Base(DeclarativeBase):
    pass


class AccountRow(Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created: Mapped[_dt.datetime] = mapped_column(default=_now)


class ApiKeyRow(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # the public part of the key
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    key_hash: Mapped[str] = mapped_column(String(64))
    created: Mapped[_dt.datetime] = mapped_column(default=_now)
    revoked: Mapped[bool] = mapped_column(default=False)


class AuditJobRow(Base):
    __tablename__ = "audit_jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued | running | done | failed
    input_name: Mapped[str] = mapped_column(String(255))
    watermark: Mapped[bool] = mapped_column(default=False)
    done: Mapped[int] = mapped_column(default=0)
    total: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(String(1000), default=None)
    created: Mapped[_dt.datetime] = mapped_column(default=_now)
    updated: Mapped[_dt.datetime] = mapped_column(default=_now)


@dataclass(frozen=True)
class Account:
    id: int
    name: str


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Store:
    """All database access. Thread-safe: each call opens its own short session."""

    def __init__(self, url: str):
        kw = {"connect_args": {"check_same_thread": False}} if url.startswith("sqlite") else {}
        self.engine = create_engine(url, **kw)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        return self._session()

    def create_account(self, name: str) -> Account:
        name = name.strip()
        if not name or len(name) > 64 or not all(c.isalnum() or c in "-_.@" for c in name):
            raise GuardError("an account name is 1-64 characters of letters, digits and - _ . @")
        with self.session() as s:
            existing = s.scalar(select(AccountRow).where(AccountRow.name == name))
            if existing is not None:
                return Account(existing.id, existing.name)
            row = AccountRow(name=name)
            s.add(row)
            try:
                s.commit()
            except IntegrityError:  # created concurrently: use theirs
                s.rollback()
                row = s.scalar(select(AccountRow).where(AccountRow.name == name))
            if row.id > MAX_ACCOUNT_ID:
                raise GuardError("account ids are exhausted (the watermark carries 32 bits)")
            return Account(row.id, row.name)

    def new_api_key(self, account_name: str) -> tuple[Account, str]:
        """(account, plain key). The plain key exists only in this return value."""
        account = self.create_account(account_name)
        key_id = secrets.token_hex(4)
        key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        with self.session() as s:
            s.add(ApiKeyRow(id=key_id, account_id=account.id, key_hash=_hash(key)))
            s.commit()
        return account, key

    def authenticate(self, key: str | None) -> Account | None:
        """The account behind a presented key, or None. Constant-time in the secret."""
        if not key or not key.startswith(KEY_PREFIX + "_") or len(key) > 200:
            return None
        parts = key.split("_", 2)
        if len(parts) != 3:
            return None
        with self.session() as s:
            row = s.get(ApiKeyRow, parts[1])
            # compare against a dummy when the id is unknown, so timing does not reveal which ids exist
            ok = hmac.compare_digest(_hash(key), row.key_hash if row is not None else "0" * 64)
            if row is None or not ok or row.revoked:
                return None
            acc = s.get(AccountRow, row.account_id)
            return Account(acc.id, acc.name) if acc else None

    def account_name(self, account_id: int) -> str | None:
        with self.session() as s:
            acc = s.get(AccountRow, account_id)
            return acc.name if acc else None

    def revoke(self, key_id: str) -> bool:
        with self.session() as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                return False
            row.revoked = True
            s.commit()
            return True


class AuditJobs:
    """Audit jobs in the same database: created queued, picked up in order, resumable after a restart."""

    def __init__(self, store: Store):
        self.store = store

    def create(self, account: Account, input_name: str, watermark: bool) -> str:
        job_id = secrets.token_hex(8)
        with self.store.session() as s:
            s.add(AuditJobRow(id=job_id, account_id=account.id, input_name=input_name[:255], watermark=watermark))
            s.commit()
        return job_id

    def get(self, job_id: str, account: Account | None = None) -> AuditJobRow | None:
        with self.store.session() as s:
            row = s.get(AuditJobRow, job_id)
            if row is None or (account is not None and row.account_id != account.id):
                return None  # another account's job is as absent as a missing one
            return row

    def update(self, job_id: str, **fields) -> None:
        with self.store.session() as s:
            row = s.get(AuditJobRow, job_id)
            if row is not None:
                for k, v in fields.items():
                    setattr(row, k, v)
                row.updated = _now()
                s.commit()

    def unfinished(self) -> list[str]:
        """Jobs a stopped service left queued or running, oldest first."""
        with self.store.session() as s:
            rows = s.scalars(select(AuditJobRow).where(AuditJobRow.status.in_(("queued", "running")))
                             .order_by(AuditJobRow.created)).all()
            return [r.id for r in rows]


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers don't block the writer
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
