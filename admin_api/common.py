"""Helpers shared by the route modules: cursors, the data-version bump, lookups."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import orjson

from switchd.db import Cursor

from .errors import ApiError, not_found

#: The same statement as switchd.store.bump_version, run inside the write's own
#: transaction so the change and its announcement commit together.
BUMP_VERSION = "UPDATE data_version SET version = version + 1 WHERE id = 1"


def bump_version(c: Cursor) -> None:
    c.execute(BUMP_VERSION)


def encode_cursor(key: list[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(key)).decode().rstrip("=")


def decode_cursor(cursor: str, shape: tuple[type, ...]) -> list[Any]:
    """The key a previous page ended at; anything else is a 422 on `cursor`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = orjson.loads(raw)
    except (ValueError, orjson.JSONDecodeError):
        raise ApiError(422, "invalid", "not a cursor this API returned", "cursor") from None
    if (
        not isinstance(key, list)
        or len(key) != len(shape)
        or not all(type(v) is t for v, t in zip(key, shape, strict=True))
    ):
        raise ApiError(422, "invalid", "not a cursor this API returned", "cursor")
    return key


def merchant_exists(c: Cursor, mid: str) -> bool:
    c.execute("SELECT 1 FROM merchants WHERE mid = ?", (mid,))
    return c.fetchone() is not None


def require_merchant(c: Cursor, mid: str) -> None:
    if not merchant_exists(c, mid):
        raise not_found(f"merchant {mid}", "mid")


def day_start_us(day: dt.date) -> int:
    """Midnight UTC of `day` in µs (reports use UTC calendar days)."""
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()) * 1_000_000


def to_us(moment: dt.datetime) -> int:
    """A query's datetime in µs; one without a zone is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1_000_000)


def check_range(since: dt.date, until: dt.date, max_days: int = 366) -> None:
    if until < since:
        raise ApiError(422, "invalid", "until is before since", "until")
    if (until - since).days > max_days:
        raise ApiError(422, "invalid", f"at most {max_days} days at a time", "until")
