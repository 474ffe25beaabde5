"""The review cache and the review bodies: bounded, expiring, keyed by a token hash; who is asked about what."""

from __future__ import annotations

from webhook_operator.ingress.review import (
    ExpiringCache,
    Identity,
    access_from_review,
    access_review_body,
    bearer_token,
    identity_from_review,
    token_key,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_cached_answer_lasts_its_ttl_then_is_gone() -> None:
    clock = Clock()
    cache: ExpiringCache[str, bool] = ExpiringCache(10.0, 100, clock)
    cache.put("a", False)
    clock.now += 9.9
    assert cache.get("a") is False
    clock.now += 0.1
    assert cache.get("a") is None
    assert len(cache) == 0


def test_the_cache_keeps_at_most_its_size_dropping_the_least_recently_used() -> None:
    cache: ExpiringCache[int, int] = ExpiringCache(10.0, 3, Clock())
    for i in range(3):
        cache.put(i, i)
    assert cache.get(0) == 0  # now the most recently used
    cache.put(3, 3)
    assert len(cache) == 3
    assert cache.get(1) is None and cache.get(0) == 0 and cache.get(3) == 3


def test_the_cache_key_is_a_hash_not_the_token() -> None:
    key = token_key("secret-token")
    assert b"secret-token" not in key and len(key) == 32 and key == token_key("secret-token")


def test_bearer_tokens() -> None:
    assert bearer_token("Bearer abc.def") == "abc.def"
    assert bearer_token("bearer  abc ") == "abc"
    for value in (None, "", "Bearer", "Bearer   ", "Basic dXNlcjpwdw==", "abc"):
        assert bearer_token(value) is None


def test_identity_from_a_token_review() -> None:
    review = {
        "status": {
            "authenticated": True,
            "user": {
                "username": "system:serviceaccount:shop:publisher",
                "uid": "u-1",
                "groups": ["system:serviceaccounts", "system:authenticated"],
                "extra": {"authentication.kubernetes.io/pod-name": ["p"]},
            },
        }
    }
    identity = identity_from_review(review)
    assert identity.username == "system:serviceaccount:shop:publisher" and identity.uid == "u-1"
    assert identity.extra == (("authentication.kubernetes.io/pod-name", ("p",)),) and not identity.error


def test_an_unauthenticated_review_is_an_error_identity() -> None:
    assert identity_from_review({"status": {"authenticated": False, "error": "invalid bearer token"}}).error
    assert identity_from_review({"status": {}}).error


def test_the_access_review_asks_for_create_webhookevents_as_that_user() -> None:
    identity = Identity("alice", "u-1", ("devs",), (("scopes", ("a", "b")),))
    spec = access_review_body(identity, "shop")["spec"]
    assert spec["resourceAttributes"] == {
        "namespace": "shop",
        "verb": "create",
        "group": "webhook-operator.io",
        "resource": "webhookevents",
    }
    assert (spec["user"], spec["uid"], spec["groups"], spec["extra"]) == (
        "alice",
        "u-1",
        ["devs"],
        {"scopes": ["a", "b"]},
    )


def test_a_denied_review_says_who_may_not_do_what_where() -> None:
    access = access_from_review({"status": {"allowed": False}}, Identity("alice"), "shop")
    assert not access.allowed
    assert access.reason == (
        'alice may not create webhookevents.webhook-operator.io in namespace "shop", so it may not publish events there'
    )
    assert access_from_review({"status": {"allowed": True}}, Identity("a"), "s").allowed
    assert not access_from_review({"status": {"allowed": True, "denied": True}}, Identity("a"), "s").allowed
