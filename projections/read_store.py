"""The SQLite read store: the views the gateway serves, and the sequence they reflect.

Queries are plain synchronous sqlite3 calls. They are primary-key or index lookups on a local
file in WAL mode and finish in microseconds, so they run on the event loop. A projector is the
only writer; it records the last applied stream sequence in the same transaction as the rows.
"""

from __future__ import annotations

import base64
import logging
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from events.errors import ValidationError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS bots (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    target_url TEXT NOT NULL,
    description TEXT NOT NULL,
    kind TEXT NOT NULL,
    tags TEXT NOT NULL,
    script_version INTEGER NOT NULL,
    steps TEXT NOT NULL,
    capabilities TEXT NOT NULL,
    parameters TEXT NOT NULL,
    webhook TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    deleted_at INTEGER
);
CREATE INDEX IF NOT EXISTS bots_by_org ON bots (org_id, seq);
CREATE TABLE IF NOT EXISTS scripts (
    bot_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    steps TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (bot_id, version)
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    permission TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX IF NOT EXISTS keys_by_org ON api_keys (org_id, seq);
CREATE TABLE IF NOT EXISTS executions (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    bot_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    trigger TEXT NOT NULL,
    params TEXT NOT NULL,
    idempotency_key TEXT,
    script_version INTEGER,
    runner_id TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    completed_at INTEGER,
    duration_ms INTEGER,
    failure_reason TEXT,
    failed_step INTEGER,
    screenshot_key TEXT,
    dom_key TEXT,
    extracted TEXT,
    last_seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS executions_by_bot ON executions (bot_id, seq);
CREATE INDEX IF NOT EXISTS executions_by_org ON executions (org_id, seq);
CREATE TABLE IF NOT EXISTS steps (
    execution_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    action TEXT,
    label TEXT,
    status TEXT NOT NULL,
    data TEXT,
    error TEXT,
    started_at INTEGER,
    completed_at INTEGER,
    duration_ms INTEGER,
    PRIMARY KEY (execution_id, idx)
);
CREATE TABLE IF NOT EXISTS logs (
    execution_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    time INTEGER NOT NULL,
    source TEXT NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (execution_id, line)
);
"""

# The tables that replay rebuilds and verify compares, with their natural order.
VIEW_TABLES: dict[str, str] = {
    "bots": "id",
    "scripts": "bot_id, version",
    "api_keys": "id",
    "executions": "id",
    "steps": "execution_id, idx",
    "logs": "execution_id, line",
}


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """Return the sequence a cursor points below; a malformed cursor is a ValidationError."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded.encode()).decode()
        prefix, _, number = text.partition(":")
        if prefix != "s":
            raise ValueError(prefix)
        return int(number)
    except (ValueError, UnicodeDecodeError):
        raise ValidationError(
            f"Invalid cursor {cursor!r}: pass the cursor of a previous page unchanged.",
            {"cursor": cursor},
        ) from None


class ReadStore:
    """One SQLite database holding every view."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path) if str(path) != ":memory:" else path
        if isinstance(self.path, Path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(SCHEMA)
        self._ensure_meta()

    def _ensure_meta(self) -> None:
        with self.transaction():
            self.conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', ?)",
                (uuid.uuid4().hex,),
            )
            self.conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('last_sequence', '0')"
            )
            self.conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    @property
    def store_id(self) -> str:
        return str(self._meta("store_id"))

    @property
    def last_sequence(self) -> int:
        return int(self._meta("last_sequence"))

    def set_last_sequence(self, sequence: int) -> None:
        """Record the applied sequence; call it inside the transaction that applied it."""
        self.conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'last_sequence'", (str(sequence),)
        )

    def _meta(self, key: str) -> str:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row["value"])

    # Queries used by the gateway. Each takes the caller's organization and returns None or
    # an empty list for rows of another organization, so callers cannot tell them apart.

    def bot(self, org_id: str, bot_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(
            "SELECT * FROM bots WHERE id = ? AND org_id = ? AND deleted_at IS NULL",
            (bot_id, org_id),
        ).fetchone()
        return row

    def bots(self, org_id: str, limit: int, before_seq: int | None) -> list[sqlite3.Row]:
        return self._page(
            "SELECT * FROM bots WHERE org_id = ? AND deleted_at IS NULL", (org_id,),
            limit, before_seq,
        )

    def scripts(self, bot_id: str) -> list[sqlite3.Row]:
        return self.conn.execute(
            "SELECT * FROM scripts WHERE bot_id = ? ORDER BY version DESC", (bot_id,)
        ).fetchall()

    def api_key_by_hash(self, key_hash: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(
            "SELECT * FROM api_keys WHERE key_hash = ?", (key_hash,)
        ).fetchone()
        return row

    def api_key(self, org_id: str, key_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(
            "SELECT * FROM api_keys WHERE id = ? AND org_id = ?", (key_id, org_id)
        ).fetchone()
        return row

    def api_keys(self, org_id: str, limit: int, before_seq: int | None) -> list[sqlite3.Row]:
        return self._page("SELECT * FROM api_keys WHERE org_id = ?", (org_id,), limit, before_seq)

    def execution(self, org_id: str, execution_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(
            "SELECT * FROM executions WHERE id = ? AND org_id = ?", (execution_id, org_id)
        ).fetchone()
        return row

    def execution_by_id(self, execution_id: str) -> sqlite3.Row | None:
        """Look up an execution without an organization; for operator tools only."""
        row: sqlite3.Row | None = self.conn.execute(
            "SELECT * FROM executions WHERE id = ?", (execution_id,)
        ).fetchone()
        return row

    def executions(
        self, org_id: str, bot_id: str, limit: int, before_seq: int | None
    ) -> list[sqlite3.Row]:
        return self._page(
            "SELECT * FROM executions WHERE org_id = ? AND bot_id = ?", (org_id, bot_id),
            limit, before_seq,
        )

    def latest_execution(
        self, org_id: str, bot_id: str, status: str | None = None
    ) -> sqlite3.Row | None:
        sql = "SELECT * FROM executions WHERE org_id = ? AND bot_id = ?"
        args: tuple[Any, ...] = (org_id, bot_id)
        if status is not None:
            sql += " AND status = ? AND extracted IS NOT NULL AND extracted != '{}'"
            args += (status,)
        row: sqlite3.Row | None = self.conn.execute(
            sql + " ORDER BY seq DESC LIMIT 1", args
        ).fetchone()
        return row

    def steps(self, execution_id: str) -> list[sqlite3.Row]:
        return self.conn.execute(
            "SELECT * FROM steps WHERE execution_id = ? ORDER BY idx", (execution_id,)
        ).fetchall()

    def logs(self, execution_id: str) -> list[sqlite3.Row]:
        return self.conn.execute(
            "SELECT * FROM logs WHERE execution_id = ? ORDER BY line", (execution_id,)
        ).fetchall()

    def _page(
        self, sql: str, args: tuple[Any, ...], limit: int, before_seq: int | None
    ) -> list[sqlite3.Row]:
        """Newest first by stream sequence; fetch one extra row to know if a next page exists."""
        if before_seq is not None:
            sql += " AND seq < ?"
            args += (before_seq,)
        return self.conn.execute(sql + " ORDER BY seq DESC LIMIT ?", (*args, limit + 1)).fetchall()

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Return every view row in a stable order, for comparing two stores."""
        return {
            table: [
                tuple(row)
                for row in self.conn.execute(f"SELECT * FROM {table} ORDER BY {order}")  # noqa: S608
            ]
            for table, order in VIEW_TABLES.items()
        }
