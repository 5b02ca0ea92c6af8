"""Who is asking and what they may do: roles of accounts, scopes of tokens, and the checks every route shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from specai.errors import ForbiddenError

Role = Literal["admin", "user", "mesh"]
Scope = Literal["read", "write", "mesh", "admin"]
ROLES: tuple[Role, ...] = ("admin", "user", "mesh")
SCOPES: tuple[Scope, ...] = ("read", "write", "mesh", "admin")  # each one allows what the ones before it do
_LEVEL = {scope: level for level, scope in enumerate(SCOPES)}
ROLE_SCOPE: dict[Role, Scope] = {"user": "write", "mesh": "mesh", "admin": "admin"}  # the most a role grants


@dataclass(frozen=True)
class Principal:
    """The account behind a request: a stable user id (never reused), its name, role and the token's scope."""

    user_id: str
    name: str
    role: Role
    scope: Scope

    def allows(self, scope: Scope) -> bool:
        """True when this token's scope includes `scope`."""
        return _LEVEL[self.scope] >= _LEVEL[scope]

    @property
    def is_admin(self) -> bool:
        """Admin powers (every user's data) need an admin account *and* an admin-scoped token."""
        return self.scope == "admin"

    def require(self, scope: Scope, what: str) -> None:
        """Raise ForbiddenError (403) unless this token's scope includes `scope`."""
        if not self.allows(scope):
            raise ForbiddenError(f"{what} needs a token with scope '{scope}' (this one has '{self.scope}')")


LOCAL = Principal(
    user_id="local", name="local", role="admin", scope="admin"
)  # auth disabled: the one local user


def max_scope(role: Role) -> Scope:
    """The widest scope a token of an account with `role` may carry."""
    return ROLE_SCOPE[role]


def check_scope_for_role(scope: Scope, role: Role) -> None:
    """Refuse a key wider than its account (a `user` cannot mint a `mesh` or `admin` key)."""
    if _LEVEL[scope] > _LEVEL[max_scope(role)]:
        raise ForbiddenError(
            f"an account of role '{role}' cannot hold keys of scope '{scope}' (at most '{max_scope(role)}')"
        )
