"""The `dev` project `eventpipe run` sets up on first start, and its key file.

Only the dev project keeps its key in a file (`var/dev-api-key`, mode 0600): a newcomer needs
a working key at every start, and this one guards nothing but local test data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sqlalchemy import Connection, Engine, select

from api import store
from api.definitions import check_definition
from api.keys import secret_matches, split_key
from shared.db import transaction
from shared.models import api_keys, projects

DEV_PROJECT = "dev"
DEV_CONTACT = "jane@example.com"
DEV_DEFINITION = {
    "eventName": "order_completed",
    "description": "A customer completed an order",
    "properties": [
        {"propertyName": "order_total", "type": "number"},
        {"propertyName": "currency", "type": "string"},
        {"propertyName": "is_first_purchase", "type": "boolean"},
    ],
}
SEED_EVENT = {
    "eventName": "order_completed",
    "email": DEV_CONTACT,
    "eventProperties": {"order_total": 129.99, "currency": "USD", "is_first_purchase": True},
}


def ensure_dev_project(engine: Engine, key_file: Path) -> str:
    """The dev project's API key: the one in `key_file` while it still works, else a new one
    (creating the project, its definition and its contact on first start)."""
    with transaction(engine) as conn:
        project_id = _dev_project_id(conn)
        if project_id is None:
            project_id, key = store.create_project(DEV_PROJECT, conn=conn)
            spec = check_definition(DEV_DEFINITION)
            store.create_definition(project_id, spec, conn=conn)
            store.upsert_contact(project_id, DEV_CONTACT, {"first_name": "Jane"}, conn=conn)
            api_key = key.api_key
        elif _key_works(conn, key_file, project_id):
            return key_file.read_text().strip()
        else:
            api_key = store.create_key(project_id, conn=conn).api_key
    _write_key(key_file, api_key)
    return api_key


def _dev_project_id(conn: Connection) -> str | None:
    row = conn.execute(
        select(projects.c.id).where(projects.c.name == DEV_PROJECT).order_by(projects.c.created_at)
    ).first()
    return None if row is None else str(row.id)


def _key_works(conn: Connection, key_file: Path, project_id: str) -> bool:
    if not key_file.exists():
        return False
    parts = split_key(key_file.read_text().strip())
    if parts is None:
        return False
    row = conn.execute(
        select(api_keys.c.secret_hash).where(
            api_keys.c.id == parts[0],
            api_keys.c.project_id == project_id,
            api_keys.c.revoked_at.is_(None),
        )
    ).first()
    return row is not None and secret_matches(parts[1], row.secret_hash)


def _write_key(key_file: Path, api_key: str) -> None:
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(api_key + "\n")


def seed_curl(base_url: str, api_key: str) -> str:
    """The seed request as a ready-to-paste command."""
    body = json.dumps(SEED_EVENT)
    return (
        f"curl -X POST {base_url}/v1/events/send "
        f"-H 'Authorization: Bearer {api_key}' -H 'Content-Type: application/json' "
        f"-d '{body}'"
    )
