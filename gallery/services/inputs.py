"""Normalising what callers hand to the services: free text, tags, the acting user."""

import hashlib
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser


def clean_text(value: str | None, max_length: int) -> str:
    """One line of text: runs of whitespace become one space, cut to the field's length."""
    return " ".join((value or "").split())[:max_length]


def clean_tags(tags: str | list[str] | None) -> list[str]:
    """At most 50 distinct tags of up to 50 characters (a comma-separated string is split)."""
    if isinstance(tags, str):
        tags = tags.split(",")
    cleaned = [clean_text(t, 50) for t in (tags or [])]
    return list(dict.fromkeys(t for t in cleaned if t))[:50]


def acting_user(user: AbstractBaseUser | AnonymousUser | None) -> Any:
    """The user to record as the actor: None for anonymous visitors and scripts."""
    return user if getattr(user, "is_authenticated", False) else None


def visitor_key(user: AbstractBaseUser | AnonymousUser | None, address: str) -> str:
    """Who a visitor is, for "once per visitor" rules: the account when signed in, else a
    hash of the address (the address itself is not stored)."""
    if user is not None and user.is_authenticated:
        return f"user:{user.pk}"
    return "addr:" + hashlib.sha256(address.encode()).hexdigest()[:24]
