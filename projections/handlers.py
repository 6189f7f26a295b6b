"""Projection handlers: the change each public event makes to the views.

Handlers use only the event's payload and the stream's sequence and timestamp, never the wall
clock, so replaying the stream into an empty store reproduces every row exactly.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from events.store import RecordedEvent
from projections.read_store import dumps

Handler = Callable[[sqlite3.Connection, RecordedEvent, dict[str, Any]], None]

HANDLERS: dict[str, Handler] = {}

# Webhook fields that are secrets: the view keeps only whether they are set.
WEBHOOK_SECRET_FIELDS = ("secret", "password")


def handles(name: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        HANDLERS[name] = handler
        return handler

    return register


def apply_event(conn: sqlite3.Connection, recorded: RecordedEvent) -> None:
    handler = HANDLERS.get(recorded.name)
    if handler is not None:
        handler(conn, recorded, recorded.current_state())


# Bots


@handles("BotCreated")
def bot_created(conn: sqlite3.Connection, e: RecordedEvent, s: dict[str, Any]) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO bots (id, org_id, seq, name, target_url, description, kind, tags,"
        " script_version, steps, capabilities, parameters, webhook, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, '[]', '{}', '{}', NULL, ?, ?)",
        (
            e.aggregate_id, e.org_id, e.sequence, s["name"], s["target_url"], s["description"],
            s["kind"], dumps(s["tags"]), e.time_ms, e.time_ms,
        ),
    )


@handles("BotStepsUpdated")
def bot_steps_updated(conn: sqlite3.Connection, e: RecordedEvent, s: dict[str, Any]) -> None:
    conn.execute(
        "UPDATE bots SET steps = ?, script_version = ?, updated_at = ? WHERE id = ?",
        (dumps(s["steps"]), s["version"], e.time_ms, e.aggregate_id),
    )
    conn.execute(
        "INSERT OR REPLACE INTO scripts (bot_id, version, steps, created_at) VALUES (?, ?, ?, ?)",
        (e.aggregate_id, s["version"], dumps(s["steps"]), e.time_ms),
    )


@handles("BotManifestUpdated")
def bot_manifest_updated(conn: sqlite3.Connection, e: RecordedEvent, s: dict[str, Any]) -> None:
    if s.get("capabilities") is not None:
        conn.execute(
            "UPDATE bots SET capabilities = ? WHERE id = ?",
            (dumps(s["capabilities"]), e.aggregate_id),
        )
    if s.get("parameters") is not None:
        conn.execute(
            "UPDATE bots SET parameters = ? WHERE id = ?",
            (dumps(s["parameters"]), e.aggregate_id),
        )
    if s.get("webhook") is not None:
        conn.execute(
            "UPDATE bots SET webhook = ? WHERE id = ?",
            (dumps(public_webhook(s["webhook"])), e.aggregate_id),
        )
    conn.execute("UPDATE bots SET updated_at = ? WHERE id = ?", (e.time_ms, e.aggregate_id))


def public_webhook(webhook: dict[str, Any]) -> dict[str, Any]:
    """Return the webhook section without its secrets, with a flag telling whether each is set."""
    view = {k: v for k, v in webhook.items() if k not in WEBHOOK_SECRET_FIELDS}
    view.pop("encryptedSecrets", None)
    stored = set(view.pop("secretFields", []))
    for field in WEBHOOK_SECRET_FIELDS:
        view[f"{field}Set"] = field in stored
    return view


@handles("BotDeleted")
def bot_deleted(conn: sqlite3.Connection, e: RecordedEvent, s: dict[str, Any]) -> None:
    conn.execute("UPDATE bots SET deleted_at = ? WHERE id = ?", (e.time_ms, e.aggregate_id))


# API keys


@handles("ApiKeyCreated")
def api_key_created(conn: sqlite3.Connection, e: RecordedEvent, s: dict[str, Any]) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO api_keys (id, org_id, seq, name, permission, key_hash, prefix,"
        " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            e.aggregate_id, e.org_id, e.sequence, s["name"], s["permission"], s["key_hash"],
            s["prefix"], e.time_ms,
        ),
    )


@handles("ApiKeyRevoked")
def api_key_revoked(conn: sqlite3.Connection, e: RecordedEvent, s: dict[str, Any]) -> None:
    conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (e.time_ms, e.aggregate_id))


# Executions


def _touch(conn: sqlite3.Connection, e: RecordedEvent, sql: str, args: tuple[Any, ...]) -> None:
    conn.execute(
        f"UPDATE executions SET {sql}, last_seq = ? WHERE id = ?",  # noqa: S608
        (*args, e.sequence, e.aggregate_id),
    )


@handles("ExecutionRequested")
def execution_requested(conn: sqlite3.Connection, e: RecordedEvent, s: dict[str, Any]) -> None:
    program = s.get("program") or {}
    conn.execute(
        "INSERT OR REPLACE INTO executions (id, org_id, bot_id, seq, status, trigger, params,"
        " idempotency_key, script_version, created_at, last_seq)"
        " VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?)",
        (
            e.aggregate_id, e.org_id, s["bot_id"], e.sequence, s["trigger"], dumps(s["params"]),
            s.get("idempotency_key"), program.get("scriptVersion"), e.time_ms, e.sequence,
        ),
    )


@handles("ExecutionStarted")
def execution_started(conn: sqlite3.Connection, e: RecordedEvent, s: dict[str, Any]) -> None:
    _touch(
        conn, e, "status = 'running', started_at = ?, runner_id = ?, attempt = ?",
        (e.time_ms, s["runner_id"], s["attempt"]),
    )


@handles("StepStarted")
def step_started(conn: sqlite3.Connection, e: RecordedEvent, s: dict[str, Any]) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO steps (execution_id, idx, action, label, status, started_at)"
        " VALUES (?, ?, ?, ?, 'running', ?)",
        (e.aggregate_id, s["index"], s["action"], s.get("label"), e.time_ms),
    )
    _touch(conn, e, "status = status", ())


def _finish_step(
    conn: sqlite3.Connection, e: RecordedEvent, s: dict[str, Any], status: str
) -> None:
    conn.execute(
        "INSERT INTO steps (execution_id, idx, status) VALUES (?, ?, ?)"
        " ON CONFLICT (execution_id, idx) DO NOTHING",
        (e.aggregate_id, s["index"], status),
    )
    conn.execute(
        "UPDATE steps SET status = ?, data = ?, error = ?, completed_at = ?, duration_ms = ?"
        " WHERE execution_id = ? AND idx = ?",
        (
            status, dumps(s.get("data")), s.get("error"), e.time_ms, s["duration_ms"],
            e.aggregate_id, s["index"],
        ),
    )
    _touch(conn, e, "status = status", ())


@handles("StepCompleted")
def step_completed(conn: sqlite3.Connection, e: RecordedEvent, s: dict[str, Any]) -> None:
    _finish_step(conn, e, s, "completed")


@handles("StepFailed")
def step_failed(conn: sqlite3.Connection, e: RecordedEvent, s: dict[str, Any]) -> None:
    _finish_step(conn, e, s, "failed")


@handles("LogsAppended")
def logs_appended(conn: sqlite3.Connection, e: RecordedEvent, s: dict[str, Any]) -> None:
    row = conn.execute(
        "SELECT COALESCE(MAX(line), -1) AS last FROM logs WHERE execution_id = ?",
        (e.aggregate_id,),
    ).fetchone()
    first = int(row["last"]) + 1
    conn.executemany(
        "INSERT INTO logs (execution_id, line, time, source, level, message)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [
            (e.aggregate_id, first + n, line["time"], line["source"], line["level"],
             line["message"])
            for n, line in enumerate(s["lines"])
        ],
    )
    _touch(conn, e, "status = status", ())


def _finish_execution(
    conn: sqlite3.Connection, e: RecordedEvent, s: dict[str, Any], status: str
) -> None:
    _touch(
        conn, e,
        "status = ?, completed_at = ?, duration_ms = ?, failure_reason = ?, failed_step = ?,"
        " screenshot_key = ?, dom_key = ?, extracted = COALESCE(?, extracted)",
        (
            status, e.time_ms, s.get("duration_ms"), s.get("reason"), s.get("failed_step"),
            s.get("screenshot_key"), s.get("dom_key"),
            dumps(s["extracted"]) if s.get("extracted") is not None else None,
        ),
    )


@handles("ExecutionCompleted")
def execution_completed(conn: sqlite3.Connection, e: RecordedEvent, s: dict[str, Any]) -> None:
    _finish_execution(conn, e, s, "completed")


@handles("ExecutionFailed")
def execution_failed(conn: sqlite3.Connection, e: RecordedEvent, s: dict[str, Any]) -> None:
    _finish_execution(conn, e, s, "failed")


@handles("ExecutionTimedOut")
def execution_timed_out(conn: sqlite3.Connection, e: RecordedEvent, s: dict[str, Any]) -> None:
    _finish_execution(conn, e, s, "timed_out")


@handles("ExecutionCancelRequested")
def execution_cancel_requested(
    conn: sqlite3.Connection, e: RecordedEvent, s: dict[str, Any]
) -> None:
    _touch(conn, e, "cancel_requested = 1", ())


@handles("ExecutionCancelled")
def execution_cancelled(conn: sqlite3.Connection, e: RecordedEvent, s: dict[str, Any]) -> None:
    _touch(
        conn, e, "status = 'cancelled', completed_at = ?, failure_reason = ?,"
        " duration_ms = CASE WHEN started_at IS NULL THEN 0 ELSE ? - started_at END",
        (e.time_ms, s.get("reason"), e.time_ms),
    )

