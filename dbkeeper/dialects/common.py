"""SQL both dialects share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, text


def owner_groups(
    conn: Connection,
    table: str,
    condition: str,
    params: dict[str, Any],
    owner: str,
    moment: str,
    to_datetime: Callable[[Any], Any],
    limit: int,
) -> list[dict[str, Any]]:
    """Rows matching ``condition`` grouped by ``owner`` (quoted): count and oldest
    ``moment`` (an ordered SQL expression of the time column), most rows first."""
    result = conn.execute(
        text(
            f"SELECT {owner}, count(*), min({moment}) FROM {table} WHERE {condition} "
            f"GROUP BY {owner} ORDER BY count(*) DESC, {owner} LIMIT :limit"
        ),
        {**params, "limit": limit},
    )
    return [
        {"owner": who, "rows": int(count), "oldest": to_datetime(oldest)}
        for who, count, oldest in result
    ]
