"""Bearer tokens for the guide API: who is asking, and which members they may see.

`TAGSTREAM_API_TOKENS` is `token=guide_userid,...`; `*` as the guide makes an operator, who sees
every member. Tokens are secrets: only their SHA-256 digests are kept after parsing, lookups go
by digest (so comparing takes the same time whatever the token), and no message here or in the
API ever contains a token or a part of one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from schemas.errors import TagstreamError

OPERATOR = "*"


class TokenConfigError(TagstreamError):
    """TAGSTREAM_API_TOKENS cannot be parsed; the message says where, never what."""


@dataclass(frozen=True)
class Principal:
    guide: str | None  # the guide's WeCom userid; None for an operator

    @property
    def operator(self) -> bool:
        return self.guide is None

    def may_see_guide(self, guide: str) -> bool:
        return self.guide is None or self.guide == guide

    def may_see_member(self, profile: dict) -> bool:
        if self.guide is None:
            return True
        return any(g.get("userid") == self.guide for g in profile.get("guides") or ())


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenMap:
    """Token digests to principals. Its repr says how many tokens there are, nothing more."""

    def __init__(self, principals: dict[bytes, Principal]) -> None:
        self._principals = principals

    def __repr__(self) -> str:
        return f"TokenMap({len(self._principals)} tokens)"

    def __len__(self) -> int:
        return len(self._principals)

    def principal(self, token: str) -> Principal | None:
        return self._principals.get(digest(token))


def parse_tokens(raw: str) -> TokenMap:
    principals: dict[bytes, Principal] = {}
    for number, entry in enumerate((e.strip() for e in raw.split(",")), start=1):
        if not entry:
            continue
        token, sep, guide = entry.partition("=")
        token, guide = token.strip(), guide.strip()
        where = f"TAGSTREAM_API_TOKENS entry {number}"
        if not sep or not token or not guide:
            raise TokenConfigError(f"{where} is not token=guide_userid (or token=* for an "
                                   "operator)")
        if len(token) < 16:
            raise TokenConfigError(f"{where}: tokens must be at least 16 characters long")
        principal = Principal(None if guide == OPERATOR else guide)
        key = digest(token)
        if key in principals and principals[key] != principal:
            raise TokenConfigError(f"{where} repeats an earlier token for another guide")
        principals[key] = principal
    return TokenMap(principals)


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
