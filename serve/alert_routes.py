"""Alert rule management: the handlers behind the admin routes of the API.

Plain async functions over an :class:`~aircast.alert_store.AlertStore`; ``serve.api``
mounts them behind the admin token. A body is validated by :class:`RuleSpec` (known
measure, threshold inside the measure's valid range, duration a whole number of
10-minute windows, exactly one of ``bbox`` or ``sensors``): an invalid one is a 422
naming what is wrong, an unknown rule a 404, a full store a 409. Redis being away
raises ``redis.RedisError``, which the app answers with a 503.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from typing import Any

from fastapi import HTTPException
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel, Field, ValidationError

from aircast import tuning
from aircast.alert_store import AlertStore
from aircast.alerts import Rule, RuleSpec

__all__ = [
    "RuleDeleted",
    "RuleList",
    "create_rule",
    "delete_rule",
    "get_rule",
    "list_rules",
]


class RuleList(BaseModel):
    count: int
    rules: list[Rule]


class RuleDeleted(BaseModel):
    id: str
    deleted: bool = Field(default=True)


def _spec(body: RuleSpec | Mapping[str, Any]) -> RuleSpec:
    if isinstance(body, RuleSpec):
        return body
    try:
        return RuleSpec.model_validate(body)
    except ValidationError as exc:
        # The same shape FastAPI gives a body it validated itself.
        errors = jsonable_encoder(exc.errors(include_url=False, include_context=False))
        raise HTTPException(422, errors) from exc


async def create_rule(store: AlertStore, body: RuleSpec | Mapping[str, Any]) -> Rule:
    """Store a new rule (201); evaluation starts with the next aggregates."""
    spec = _spec(body)
    if await asyncio.to_thread(store.count_rules) >= tuning.ALERT_MAX_RULES:
        raise HTTPException(409, f"at most {tuning.ALERT_MAX_RULES} alert rules; delete some first")
    rule = Rule(**spec.model_dump(), id=uuid.uuid4().hex, created_at=int(time.time()))
    await asyncio.to_thread(store.add_rule, rule)
    return rule


async def list_rules(store: AlertStore) -> RuleList:
    rules = await asyncio.to_thread(store.rules)
    return RuleList(count=len(rules), rules=rules)


async def get_rule(store: AlertStore, rule_id: str) -> Rule:
    rule = await asyncio.to_thread(store.rule, rule_id)
    if rule is None:
        raise HTTPException(404, f"unknown alert rule {rule_id!r}")
    return rule


async def delete_rule(store: AlertStore, rule_id: str) -> RuleDeleted:
    """Remove a rule and its episodes; an episode still open gets no "resolved"."""
    if not await asyncio.to_thread(store.delete_rule, rule_id):
        raise HTTPException(404, f"unknown alert rule {rule_id!r}")
    return RuleDeleted(id=rule_id)
