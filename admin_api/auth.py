"""Bearer tokens with roles.

- ``admin``: everything;
- ``merchant``: read-only, and only what belongs to its own merchant ID;
- ``sre``: ``/metrics`` and ``/readyz`` only.

Tokens are stored as their SHA-256 digest: a leaked table does not give a
usable token. Issued tokens are 256-bit random values, so an unsalted fast
hash is enough (there is nothing to brute-force, unlike a password). The
lookup is cached for `CACHE_S` so a busy scraper does not cost a query per
scrape; a deleted token stops working within that time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import TYPE_CHECKING, Literal

import msgspec

from .errors import ApiError

if TYPE_CHECKING:
    from .context import AdminContext

Role = Literal["admin", "merchant", "sre"]
ROLES: tuple[str, ...] = ("admin", "merchant", "sre")
CACHE_S = 5.0


class Principal(msgspec.Struct, frozen=True):
    name: str
    role: str
    mid: str | None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "swd_" + secrets.token_urlsafe(32)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message)


async def authenticate(ctx: AdminContext, header: str | None) -> Principal:
    if not header:
        raise unauthorized("an Authorization: Bearer token is required")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 256:
        raise unauthorized("an Authorization: Bearer token is required")
    digest = hash_token(token)
    now = time.monotonic()
    hit = ctx.token_cache.get(digest)
    if hit is not None and hit[1] > now:
        principal: Principal | None = hit[0]
    else:
        row = await ctx.read_db.fetchone(
            "SELECT name, token_hash, role, mid FROM api_tokens WHERE token_hash = ?", (digest,)
        )
        # compare_digest: the equality the database did, repeated in constant time.
        ok = row is not None and hmac.compare_digest(row[1], digest)
        principal = Principal(row[0], row[2], row[3]) if ok and row else None
        if len(ctx.token_cache) > 10_000:
            ctx.token_cache.clear()
        ctx.token_cache[digest] = (principal, now + CACHE_S)
    if principal is None:
        raise unauthorized("unknown token")
    return principal


def forbid(message: str = "this token may not do that") -> ApiError:
    return ApiError(403, "forbidden", message)


def check_mid(principal: Principal, mid: str | None) -> None:
    """A merchant token sees its own merchant only."""
    if principal.role == "merchant" and mid != principal.mid:
        raise forbid("a merchant token sees its own merchant only")
