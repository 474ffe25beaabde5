"""Who may publish: a bearer token checked by a TokenReview, then a SubjectAccessReview for
``create webhookevents.webhook-operator.io`` in the namespace, with results cached briefly.

The cache is keyed by a SHA-256 of the token, never the token itself, and is bounded in
size; a positive or negative answer is reused for ``ttl_s`` so that a busy publisher does
not cost two API calls per event. Tokens are never logged.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from webhook_operator import GROUP
from webhook_operator.ingress.parse import IngressError
from webhook_operator.kube import ApiError, KubeClient

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
REVIEW_TTL_S = 10.0
REVIEW_CACHE_ENTRIES = 4096
# What a review answers when the API server cannot: the client is asked to come back.
REVIEW_RETRY_AFTER_S = 5

K = TypeVar("K")
V = TypeVar("V")


class ExpiringCache(Generic[K, V]):
    """At most ``max_entries`` values, each for ``ttl_s`` seconds; the least recently used goes first."""

    def __init__(self, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        expires, value = item
        if self._clock() >= expires:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = (self._clock() + self.ttl_s, value)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class Identity:
    """The user a TokenReview names; ``error`` is set (and the rest empty) when the token is not valid."""

    username: str = ""
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()
    error: str = ""


@dataclass(frozen=True)
class Access:
    allowed: bool
    reason: str = ""


def token_key(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None when absent or of another scheme."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def identity_from_review(review: dict[str, Any]) -> Identity:
    status = review.get("status") or {}
    if not status.get("authenticated"):
        return Identity(error=str(status.get("error") or "the token is not valid"))
    user = status.get("user") or {}
    extra_map = user.get("extra") or {}
    extra = tuple(sorted((str(k), tuple(str(v) for v in values or ())) for k, values in extra_map.items()))
    return Identity(
        username=str(user.get("username", "")),
        uid=str(user.get("uid", "")),
        groups=tuple(str(g) for g in user.get("groups") or ()),
        extra=extra,
    )


def access_review_body(identity: Identity, namespace: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "resourceAttributes": {"namespace": namespace, "verb": "create", "group": GROUP, "resource": "webhookevents"},
        "user": identity.username,
        "groups": list(identity.groups),
    }
    if identity.uid:
        spec["uid"] = identity.uid
    if identity.extra:
        spec["extra"] = {k: list(v) for k, v in identity.extra}
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}


def access_from_review(review: dict[str, Any], identity: Identity, namespace: str) -> Access:
    status = review.get("status") or {}
    if status.get("allowed") and not status.get("denied"):
        return Access(True)
    why = str(status.get("reason") or "").strip()
    message = (
        f'{identity.username} may not create webhookevents.{GROUP} in namespace "{namespace}", '
        "so it may not publish events there"
    )
    return Access(False, f"{message}: {why}" if why else message)


def unavailable(what: str, exc: Exception) -> IngressError:
    detail = f"{exc.status} {exc.reason}" if isinstance(exc, ApiError) else "unreachable"
    return IngressError(
        503,
        f"the Kubernetes API server could not {what} ({detail}); retry later",
        {"Retry-After": str(REVIEW_RETRY_AFTER_S)},
    )


@dataclass
class Reviewer:
    """Answers "may the bearer of this token publish in this namespace?" with the API server's reviews."""

    kube: KubeClient
    ttl_s: float = REVIEW_TTL_S
    max_entries: int = REVIEW_CACHE_ENTRIES
    clock: Callable[[], float] = time.monotonic
    on_review: Callable[[str], None] = lambda kind: None  # called per API call: "token" or "access"
    _identities: ExpiringCache[bytes, Identity] = field(init=False)
    _access: ExpiringCache[tuple[bytes, str], Access] = field(init=False)

    def __post_init__(self) -> None:
        self._identities = ExpiringCache(self.ttl_s, self.max_entries, self.clock)
        self._access = ExpiringCache(self.ttl_s, self.max_entries, self.clock)

    async def authorize(self, authorization: str | None, namespace: str) -> Identity:
        """The publisher's identity, or IngressError 401 / 403 / 503."""
        token = bearer_token(authorization)
        if token is None:
            raise IngressError(
                401,
                "a bearer token is required: Authorization: Bearer <Kubernetes token>",
                {"WWW-Authenticate": 'Bearer realm="webhook-operator"'},
            )
        key = token_key(token)
        identity = await self._identity(key, token)
        if identity.error:
            raise IngressError(
                401,
                "the bearer token was not accepted by the Kubernetes API server",
                {"WWW-Authenticate": 'Bearer realm="webhook-operator", error="invalid_token"'},
            )
        access = await self._review_access(key, identity, namespace)
        if not access.allowed:
            raise IngressError(403, access.reason)
        return identity

    async def _identity(self, key: bytes, token: str) -> Identity:
        cached = self._identities.get(key)
        if cached is not None:
            return cached
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
        self.on_review("token")
        try:
            identity = identity_from_review(await self.kube.create(TOKEN_REVIEWS, body))
        except (ApiError, OSError) as exc:
            raise unavailable("review the token", exc) from None
        self._identities.put(key, identity)
        return identity

    async def _review_access(self, key: bytes, identity: Identity, namespace: str) -> Access:
        cached = self._access.get((key, namespace))
        if cached is not None:
            return cached
        self.on_review("access")
        try:
            review = await self.kube.create(ACCESS_REVIEWS, access_review_body(identity, namespace))
        except (ApiError, OSError) as exc:
            raise unavailable("review the access", exc) from None
        access = access_from_review(review, identity, namespace)
        self._access.put((key, namespace), access)
        return access
