"""API tokens for scripts: made here, stored as a hash, shown once."""

from typing import Any

from ..models import ApiToken


def api_token_issue(user: Any, name: str = "") -> tuple[ApiToken, str]:
    """A new token of `user` and its key (the only time the key is known)."""
    key = ApiToken.new_key()
    token = ApiToken.objects.create(user=user, name=name, key_hash=ApiToken.digest(key), prefix=key[:8])
    return token, key


def api_token_user(key: str) -> Any | None:
    """The active user a presented key belongs to, or None."""
    row = ApiToken.objects.select_related("user").filter(key_hash=ApiToken.digest(key), user__is_active=True)
    token = row.first()
    return token.user if token is not None else None
