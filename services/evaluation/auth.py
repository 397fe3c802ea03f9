"""Token authentication: metadata ``authorization: Bearer <token>`` on every call.

Tokens come from ``ALIGN_TOKENS_FILE`` (one per line, optionally ``name:token``; blank
lines and ``#`` comments ignored) and/or ``ALIGN_TOKENS`` (comma separated, same
``name:token`` form). Comparison is constant time (``hmac.compare_digest``) against every
configured token, so timing does not reveal which token nearly matched.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from align.errors import InvalidInputError

AUTH_HEADER = "authorization"
SCHEME = "bearer"
MIN_TOKEN_LENGTH = 8
#: Values of deploy/env.example that must never reach a running server.
PLACEHOLDERS = ("change-me",)


def is_placeholder(secret: str) -> bool:
    return any(p in secret.lower() for p in PLACEHOLDERS)


def _parse_entry(entry: str, where: str, default_name: str) -> tuple[str, str]:
    if ":" in entry:
        name, token = entry.split(":", 1)
        name, token = name.strip(), token.strip()
    else:
        name, token = default_name, entry.strip()
    if not name:
        raise InvalidInputError(where, "has an empty name before ':'", "name:token or token")
    if is_placeholder(token):
        raise InvalidInputError(
            where,
            f"token of {name!r} is the placeholder from deploy/env.example",
            "a long random token (openssl rand -hex 24)",
        )
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise InvalidInputError(
            where,
            f"token of {name!r} is {len(token)} characters or contains spaces",
            f"at least {MIN_TOKEN_LENGTH} characters, no whitespace",
        )
    return name, token


def parse_tokens_file(path: str | Path) -> dict[str, str]:
    """``{token: name}`` from a tokens file; a bad line raises naming file and line."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise InvalidInputError(
            "ALIGN_TOKENS_FILE", f"cannot read {p}: {exc.strerror}", "a readable file"
        ) from None
    out: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, token = _parse_entry(stripped, f"{p}:{lineno}", f"token{lineno}")
        out[token] = name
    return out


def parse_tokens_env(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, entry in enumerate(value.split(","), start=1):
        if entry.strip():
            name, token = _parse_entry(entry.strip(), f"ALIGN_TOKENS[{i}]", f"env{i}")
            out[token] = name
    return out


def load_tokens(
    tokens_file: str | Path | None = None,
    tokens: Iterable[str] | str | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """All configured tokens as ``{token: name}``: explicit arguments first, then the
    ``ALIGN_TOKENS_FILE`` / ``ALIGN_TOKENS`` environment variables."""
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    file = tokens_file or env.get("ALIGN_TOKENS_FILE")
    if file:
        out.update(parse_tokens_file(file))
    if tokens is not None:
        text = tokens if isinstance(tokens, str) else ",".join(tokens)
        out.update(parse_tokens_env(text))
    elif env.get("ALIGN_TOKENS"):
        out.update(parse_tokens_env(env["ALIGN_TOKENS"]))
    return out


class Authenticator:
    """Checks the bearer token of a call; ``identify`` returns the token's name or None."""

    def __init__(self, tokens: Mapping[str, str], allow_anonymous: bool = False) -> None:
        if not tokens and not allow_anonymous:
            raise InvalidInputError(
                "tokens",
                "none configured",
                "ALIGN_TOKENS_FILE or ALIGN_TOKENS (or --insecure-no-auth for local use)",
            )
        self._tokens = [(t.encode(), n) for t, n in tokens.items()]
        self.allow_anonymous = allow_anonymous and not tokens

    def identify(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
        if self.allow_anonymous:
            return "anonymous"
        header = None
        for key, value in metadata or ():
            if key.lower() == AUTH_HEADER:
                header = value.decode() if isinstance(value, bytes) else value
                break
        if header is None:
            return None
        scheme, _, presented = header.strip().partition(" ")
        if scheme.lower() != SCHEME or not presented.strip():
            return None
        given = presented.strip().encode()
        found: str | None = None
        for token, name in self._tokens:  # compare with all: no early exit
            if hmac.compare_digest(token, given):
                found = name
        return found

    @staticmethod
    def problem(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
        """Why a call was refused (never echoes the token)."""
        keys = [k.lower() for k, _ in metadata or ()]
        if AUTH_HEADER not in keys:
            return "missing metadata 'authorization: Bearer <token>'"
        return "invalid token in metadata 'authorization' (expected 'Bearer <token>')"
