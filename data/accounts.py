"""Team accounts, sign-in throttling and the audit trail, kept in the workspace's project database.

Why here and in their own tables: accounts belong to one project (a workspace), so they travel
with it; the tables are created on demand (``CREATE TABLE IF NOT EXISTS``) rather than through the
store's numbered migrations, so a workspace that never serves a team carries none of this.

Passwords are hashed with argon2id (``argon2-cffi``); only the hash is stored and nothing here
can turn it back into the password. Failed sign-ins are counted per user name: after
``FREE_FAILURES`` misses each further miss locks that name for an exponentially growing time
(``BASE_DELAY_S * 2**k``, capped at ``MAX_DELAY_S``), recorded in the store so that every browser
tab, and a restarted app, sees the same lock.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Mapping

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from data.errors import UserError
from data.store import ProjectStore

ROLES: tuple[str, ...] = ("annotator", "reviewer", "maintainer")  # each may what the one before may
MIN_PASSWORD_LENGTH = 8
FREE_FAILURES = 3          # misses allowed before the delay starts
BASE_DELAY_S = 2.0
MAX_DELAY_S = 15 * 60.0

_HASHER = PasswordHasher()

TABLES = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('annotator','reviewer','maintainer')),
    pw_hash TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS signin_failures (
    name TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    last_at REAL NOT NULL,
    locked_until REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    user TEXT NOT NULL,
    role TEXT,
    action TEXT NOT NULL,
    job_id INTEGER,
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS audit_user ON audit(user, at);
CREATE INDEX IF NOT EXISTS audit_job ON audit(job_id);
"""


class AccountError(UserError):
    """An account request the workspace refuses (unknown user, weak password, ...)."""


class SignInRefused(UserError):
    """Wrong name or password, a disabled account, or a name locked after repeated failures."""

    def __init__(self, message: str, *, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Account:
    name: str
    role: str
    disabled: bool
    created_at: float


def ensure_tables(store: ProjectStore) -> None:
    """Create the tables once per connection (cheap no-op afterwards)."""
    if getattr(store, "_accounts_ready", False):
        return
    for statement in TABLES.split(";"):
        if statement.strip():
            store.conn.execute(statement)
    store._accounts_ready = True  # type: ignore[attr-defined]


def _check_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 64 or any(c.isspace() for c in name):
        raise AccountError("a user name must be 1-64 characters without spaces")
    return name


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    return role


def _hash(password: str) -> str:
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise AccountError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    return _HASHER.hash(password)


def has_accounts(store: ProjectStore) -> bool:
    """True once any enabled account exists (the app then asks everyone to sign in)."""
    ensure_tables(store)
    return store.conn.execute("SELECT 1 FROM users WHERE disabled=0 LIMIT 1").fetchone() is not None


def add_user(store: ProjectStore, name: str, role: str, password: str) -> Account:
    ensure_tables(store)
    name, role, pw_hash = _check_name(name), _check_role(role), _hash(password)
    now = time.time()
    with store.transaction():
        if store.conn.execute("SELECT 1 FROM users WHERE name=?", (name,)).fetchone():
            raise AccountError(f"user {name!r} exists already; use `users passwd` or `users disable`")
        store.conn.execute("INSERT INTO users(name, role, pw_hash, created_at, updated_at) "
                           "VALUES (?,?,?,?,?)", (name, role, pw_hash, now, now))
    return account(store, name)


def account(store: ProjectStore, name: str) -> Account:
    ensure_tables(store)
    row = store.conn.execute("SELECT * FROM users WHERE name=?", (name,)).fetchone()
    if row is None:
        raise AccountError(f"no user {name!r}")
    return Account(row["name"], row["role"], bool(row["disabled"]), row["created_at"])


def list_users(store: ProjectStore) -> list[Account]:
    ensure_tables(store)
    return [Account(r["name"], r["role"], bool(r["disabled"]), r["created_at"])
            for r in store.conn.execute("SELECT * FROM users ORDER BY name")]


def set_disabled(store: ProjectStore, name: str, disabled: bool = True) -> None:
    account(store, name)
    store.conn.execute("UPDATE users SET disabled=?, updated_at=? WHERE name=?",
                       (int(disabled), time.time(), name))


def set_password(store: ProjectStore, name: str, password: str) -> None:
    account(store, name)
    pw_hash = _hash(password)
    with store.transaction():
        store.conn.execute("UPDATE users SET pw_hash=?, updated_at=? WHERE name=?",
                           (pw_hash, time.time(), name))
        store.conn.execute("DELETE FROM signin_failures WHERE name=?", (name,))


def set_role(store: ProjectStore, name: str, role: str) -> None:
    account(store, name)
    store.conn.execute("UPDATE users SET role=?, updated_at=? WHERE name=?",
                       (_check_role(role), time.time(), name))


def failure_delay(failures: int) -> float:
    """Seconds a name stays locked after its ``failures``-th consecutive miss."""
    if failures <= FREE_FAILURES:
        return 0.0
    return min(MAX_DELAY_S, BASE_DELAY_S * 2 ** (failures - FREE_FAILURES - 1))


def failures(store: ProjectStore, name: str) -> tuple[int, float]:
    """(consecutive failed sign-ins, locked until epoch seconds) for a name."""
    ensure_tables(store)
    row = store.conn.execute("SELECT failures, locked_until FROM signin_failures WHERE name=?",
                             (name,)).fetchone()
    return (int(row[0]), float(row[1])) if row else (0, 0.0)


def verify(store: ProjectStore, name: str, password: str, *, now: float | None = None) -> Account:
    """Check a sign-in; returns the account or raises :class:`SignInRefused`.

    A locked name is refused before the password is even looked at, so guessing during the lock
    costs nothing but tells nothing. The message never says whether the name exists.
    """
    ensure_tables(store)
    now = time.time() if now is None else now
    name = (name or "").strip()
    count, locked_until = failures(store, name)
    if locked_until > now:
        wait = locked_until - now
        raise SignInRefused(f"too many failed sign-ins for {name!r}; try again in {wait:.0f} s",
                            retry_after_s=wait)
    row = store.conn.execute("SELECT * FROM users WHERE name=?", (name,)).fetchone()
    ok = False
    if row is not None:
        try:
            ok = _HASHER.verify(row["pw_hash"], password or "")
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            ok = False
    else:
        try:  # same work for an unknown name, so timing does not reveal which names exist
            _HASHER.verify(_DUMMY_HASH, password or "")
        except VerificationError:
            pass
    if ok and not row["disabled"]:
        store.conn.execute("DELETE FROM signin_failures WHERE name=?", (name,))
        if _HASHER.check_needs_rehash(row["pw_hash"]):
            store.conn.execute("UPDATE users SET pw_hash=? WHERE name=?",
                               (_HASHER.hash(password), name))
        return Account(row["name"], row["role"], False, row["created_at"])
    if ok:  # right password, disabled account: say so, do not count it as guessing
        raise SignInRefused(f"the account {name!r} is disabled; ask a maintainer")
    count += 1
    delay = failure_delay(count)
    store.conn.execute(
        "INSERT INTO signin_failures(name, failures, last_at, locked_until) VALUES (?,?,?,?) "
        "ON CONFLICT(name) DO UPDATE SET failures=excluded.failures, last_at=excluded.last_at, "
        "locked_until=excluded.locked_until", (name, count, now, now + delay))
    extra = f"; sign-in for this name is paused for {delay:.0f} s" if delay else ""
    raise SignInRefused(f"wrong user name or password{extra}", retry_after_s=delay)


_DUMMY_HASH = _HASHER.hash("not a real password, only for constant-time refusals")


# -- audit trail -------------------------------------------------------------------------------
def record(store: ProjectStore, user: str, action: str, details: Mapping[str, Any] | None = None,
           *, role: str | None = None, job_id: int | None = None,
           at: float | None = None) -> int:
    """Append one audit entry (who, when, what); entries are never updated or deleted."""
    ensure_tables(store)
    cur = store.conn.execute(
        "INSERT INTO audit(at, user, role, action, job_id, details) VALUES (?,?,?,?,?,?)",
        (time.time() if at is None else at, user, role, action, job_id,
         json.dumps(dict(details or {}), default=str)))
    return int(cur.lastrowid)


def audit_entries(store: ProjectStore, *, user: str | None = None, action: str | None = None,
                  job_id: int | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Audit entries, newest first, optionally for one person, action or job."""
    ensure_tables(store)
    clauses, args = [], []
    for column, value in (("user", user), ("action", action), ("job_id", job_id)):
        if value is not None:
            clauses.append(f"{column}=?")
            args.append(value)
    sql = "SELECT * FROM audit" + (" WHERE " + " AND ".join(clauses) if clauses else "")
    sql += " ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit else "")
    out = []
    for r in store.conn.execute(sql, args):
        d = dict(r)
        d["details"] = json.loads(d["details"])
        out.append(d)
    return out


def audit_users(store: ProjectStore) -> list[str]:
    ensure_tables(store)
    return [r[0] for r in store.conn.execute("SELECT DISTINCT user FROM audit ORDER BY user")]
