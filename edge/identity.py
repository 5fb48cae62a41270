"""Who a request is for: API keys (held as SHA-256 digests, reloaded without a restart), tenants and tiers.

With keys configured, a call must carry a valid ``Authorization: Bearer``
key: its tenant and tier are the key's, never a header's. A keyless call is
``401`` unless ``anonymous_tier`` names the one tier keyless calls may have
(at the default tenant); a call claiming a tenant or tier the key does not
carry is ``403``. Without keys, the ``X-Tenant`` / ``X-Tier`` headers name
them (checked against a tenant registry when one is given), else the default
tenant on the default tier.

The keys file maps each key, or ``sha256:<hex digest>`` of it, to
``{"tenant", "tier", "tokens_per_minute" (optional)}``; only digests are kept
in memory, and :meth:`KeyFile.reload` (on SIGHUP, or when the file changes)
swaps in a new set atomically, keeping the old one if the new file is bad.

>>> ring = KeyRing.parse({"sk-acme": {"tenant": "acme", "tier": "pro"}}, tiers=("enterprise", "pro", "free"))
>>> ring.get("sk-acme"), ring.get("sk-other")
(Identity(tenant='acme', tier='pro', tokens_per_minute=None), None)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from typing import Any, cast

from surgegate.errors import SettingsError
from surgegate.schemas.telemetry import RequestType
from surgegate.telemetry.scopes import NAME_PATTERN

log = logging.getLogger(__name__)

_NAME = re.compile(NAME_PATTERN)
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
#: The longest API key looked at; a longer one is not a key of ours.
MAX_KEY_CHARS = 512


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who a request is for: a tenant on a tier, with its own token budget (tokens per minute) if any."""

    tenant: str
    tier: str
    tokens_per_minute: float | None = None


class BadRequest(Exception):
    """A request the edge cannot classify; ``status`` is 400, 401 or 403, ``param`` the field or header."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param


def digest(key: str) -> str:
    """The SHA-256 digest of an API key, in hex: what is kept and compared."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


class KeyRing:
    """API keys by digest; :meth:`get` looks a presented key up."""

    def __init__(self, by_digest: Mapping[str, Identity]) -> None:
        self._by_digest = dict(by_digest)

    def __len__(self) -> int:
        return len(self._by_digest)

    def get(self, key: str) -> Identity | None:
        """The identity of ``key``, or None for a key that is not one of ours."""
        if not key or len(key) > MAX_KEY_CHARS:
            return None
        return self._by_digest.get(digest(key))

    @classmethod
    def of(cls, keys: Mapping[str, Identity]) -> KeyRing:
        """A ring of plain keys and their identities (embedders and tests; files go through :meth:`parse`)."""
        return cls({digest(k): v for k, v in keys.items()})

    @classmethod
    def parse(cls, raw: Any, *, tiers: tuple[str, ...], source: str = "keys") -> KeyRing:
        """Keys from a decoded keys file; :class:`SettingsError` naming the entry (by its last four characters)
        and what is wrong, tiers included."""
        if not isinstance(raw, dict):
            raise SettingsError(f"{source}: expected an object of API key -> {{tenant, tier}}")
        out = {}
        for key, entry in raw.items():
            name = f"{source}: key ending {str(key)[-4:]!r}"
            named = isinstance(entry, dict) and all(isinstance(entry.get(f), str) for f in ("tenant", "tier"))
            tpm = entry.get("tokens_per_minute") if isinstance(entry, dict) else None
            if not named or not (tpm is None or (isinstance(tpm, (int, float)) and not isinstance(tpm, bool)
                                                 and tpm > 0)):
                raise SettingsError(f'{name}: expected {{"tenant": ..., "tier": ..., "tokens_per_minute": > 0 '
                                    f"(optional)}}")
            entry = cast(dict, entry)
            if entry["tier"] not in tiers:
                raise SettingsError(f"{name}: unknown tier {entry['tier']!r} (the service's tiers: {', '.join(tiers)})")
            if not _NAME.fullmatch(entry["tenant"]):
                raise SettingsError(f"{name}: tenant {entry['tenant']!r} must be 1-64 letters, digits, '_', '.', ':' "
                                    f"or '-'")
            hashed = _DIGEST.match(str(key))
            out[hashed.group(1) if hashed else digest(str(key))] = Identity(
                entry["tenant"], entry["tier"], None if tpm is None else float(tpm))
        return cls(out)


class KeyFile:
    """A keys file and the ring read from it; :meth:`reload` reads it again (on SIGHUP), :meth:`check` when it
    changed on disk. A file that no longer reads keeps the keys in force, and says why."""

    def __init__(self, path: str, *, tiers: tuple[str, ...]) -> None:
        self.path = path
        self.tiers = tiers
        self.ring = self._read()
        self._stamp = self._stat()
        self.reloads = 0
        self.reload_errors = 0

    def _stat(self) -> tuple[float, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime, st.st_size

    def _read(self) -> KeyRing:
        try:
            with open(self.path, encoding="utf-8") as f:
                raw = json.load(f)
        except (OSError, ValueError, RecursionError) as exc:
            raise SettingsError(f"--keys {self.path}: {exc}") from None
        return KeyRing.parse(raw, tiers=self.tiers, source=f"--keys {self.path}")

    def reload(self) -> bool:
        """Read the file again; True when the new keys are in force."""
        self._stamp = self._stat()
        try:
            self.ring = self._read()
        except SettingsError as exc:
            self.reload_errors += 1
            log.warning("keys not reloaded, the ones in force stay: %s", exc)
            return False
        self.reloads += 1
        log.info("keys reloaded from %s: %d keys", self.path, len(self.ring))
        return True

    def check(self) -> bool:
        """Reload if the file changed since it was last read; True when it did and the new keys are in force."""
        return self._stat() != self._stamp and self.reload()


class Identifier:
    """Tenant and tier of a request from its headers (see the module docstring).

    ``tiers`` are the service's, highest first; ``keys`` the keys in force (None: keys are not checked);
    ``tenants`` a tenant registry (tenant -> tier) for header-named tenants.
    """

    def __init__(self, tiers: tuple[str, ...], *, keys: KeyFile | KeyRing | None = None,
                 tenants: Mapping[str, str] | None = None, default_tenant: str = "anonymous",
                 default_tier: str | None = None, anonymous_tier: str | None = None) -> None:
        self.tiers = tiers
        self.keys = keys
        self.tenants = dict(tenants) if tenants is not None else None
        self.default = Identity(default_tenant, default_tier or tiers[-1])
        for option, tier in (("default_tier", self.default.tier), ("anonymous_tier", anonymous_tier)):
            if tier is not None and tier not in tiers:
                raise SettingsError(f"{option}={tier!r}: not a tier of the service (known: {', '.join(tiers)})")
        if not _NAME.fullmatch(default_tenant):
            raise SettingsError(f"default_tenant={default_tenant!r}: must be 1-64 letters, digits, '_', '.', ':' "
                                f"or '-'")
        if anonymous_tier is not None and keys is None:
            raise SettingsError("anonymous_tier: only meaningful with keys (without keys every call is served)")
        if self.tenants is not None:
            bad = sorted(f"{t}: {tier}" for t, tier in self.tenants.items() if tier not in tiers)
            if bad:
                raise SettingsError(f"tenants: unknown tiers ({', '.join(bad)}; known: {', '.join(tiers)})")
        self.anonymous = Identity(default_tenant, anonymous_tier) if anonymous_tier is not None else None

    def _ring(self) -> KeyRing | None:
        keys = self.keys
        return keys.ring if isinstance(keys, KeyFile) else keys

    def identify(self, headers: Mapping[str, str]) -> Identity:
        """Who the request is for; :class:`BadRequest` (400, 401 or 403) naming the header otherwise."""
        ring = self._ring()
        if ring is not None:
            return self._by_key(ring, headers)
        tenant, tier = headers.get("X-Tenant"), headers.get("X-Tier")
        if tenant is None:
            if tier is not None:
                raise BadRequest(400, "missing_tenant", "header X-Tier needs X-Tenant", "X-Tenant")
            return self.default
        if not _NAME.fullmatch(tenant):
            raise BadRequest(400, "malformed_tenant",
                             "header X-Tenant must be 1-64 letters, digits, '_', '.', ':' or '-'", "X-Tenant")
        if self.tenants is not None:
            if tenant not in self.tenants:
                raise BadRequest(403, "unknown_tenant", f"tenant {tenant!r} is not known at this edge", "X-Tenant")
            tier = tier or self.tenants[tenant]
            if tier != self.tenants[tenant]:
                raise BadRequest(403, "tier_not_allowed", f"tenant {tenant!r} may not use tier {tier!r}", "X-Tier")
        tier = tier or self.default.tier
        if tier not in self.tiers:
            raise BadRequest(400, "unknown_tier", f"header X-Tier: unknown tier {tier!r} (known: "
                             f"{', '.join(sorted(self.tiers))})", "X-Tier")
        return Identity(tenant, tier)

    def _by_key(self, ring: KeyRing, headers: Mapping[str, str]) -> Identity:
        auth = headers.get("Authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        claimed_tenant, claimed_tier = headers.get("X-Tenant"), headers.get("X-Tier")
        if not key:
            if self.anonymous is None:
                raise BadRequest(401, "missing_api_key", "You didn't provide an API key. Provide your API key in an "
                                 "Authorization header using Bearer auth (Authorization: Bearer YOUR_KEY).",
                                 "Authorization")
            if claimed_tier not in (None, self.anonymous.tier) or claimed_tenant not in (None, self.anonymous.tenant):
                raise BadRequest(401, "missing_api_key", f"a call without an API key is served as tenant "
                                 f"{self.anonymous.tenant!r} on tier {self.anonymous.tier!r} only; X-Tenant and "
                                 f"X-Tier do not choose another", "Authorization")
            return self.anonymous
        identity = ring.get(key) if key.isascii() else None
        if identity is None:
            raise BadRequest(401, "invalid_api_key", "Incorrect API key provided.", "Authorization")
        if claimed_tenant not in (None, identity.tenant):
            raise BadRequest(403, "tenant_not_allowed", "header X-Tenant names a tenant this API key is not for",
                             "X-Tenant")
        if claimed_tier not in (None, identity.tier):
            raise BadRequest(403, "tier_not_allowed", f"this API key is for tier {identity.tier!r}, not "
                             f"{claimed_tier!r}", "X-Tier")
        return identity


def request_type(headers: Mapping[str, str]) -> RequestType:
    """realtime (the default) or batch, from ``X-Request-Type``; :class:`BadRequest` otherwise."""
    rtype = headers.get("X-Request-Type", "realtime")
    if rtype not in ("realtime", "batch"):
        raise BadRequest(400, "malformed_request_type",
                         f"header X-Request-Type must be realtime or batch, not {rtype[:40]!r}", "X-Request-Type")
    return cast(RequestType, rtype)
