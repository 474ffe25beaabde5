"""Bus connection settings from flags (pure: nats-py is imported only where the bus is used)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

PASSWORD_ENV = "WEBHOOK_OPERATOR_EVENT_BUS_PASSWORD"
TOKEN_ENV = "WEBHOOK_OPERATOR_EVENT_BUS_TOKEN"


@dataclass(frozen=True)
class BusSettings:
    servers: tuple[str, ...]
    creds_file: str | None = None  # a .creds file (JWT + NKey seed), as the nats CLI takes it
    nkey_seed_file: str | None = None
    user: str | None = None
    password_file: str | None = None  # else $WEBHOOK_OPERATOR_EVENT_BUS_PASSWORD
    token_file: str | None = None  # else $WEBHOOK_OPERATOR_EVENT_BUS_TOKEN
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    dedupe_window_s: float = 15 * 60.0  # Nats-Msg-Id de-duplication window of the events stream
    log_max_age_s: float = 24 * 3600.0  # request log kept this long...
    log_max_bytes: int = 1024**3  # ...and at most this much in all...
    log_max_per_webhook: int = 10_000  # ...and this many records per webhook
    replicas: int = 1  # JetStream replicas of the streams (3 on a 3-node NATS cluster)
    # A message not acknowledged for this long goes to another replica (a crashed one's, say); held
    # messages get in-progress acks every third of it.
    ack_wait_s: float = 30.0


def connection_from_args(args: Any, servers: tuple[str, ...]) -> BusSettings:
    """How to reach NATS, from the ``--event-bus-*`` flags the operator and the plugin share."""
    return BusSettings(
        servers=servers,
        creds_file=args.event_bus_creds,
        nkey_seed_file=args.event_bus_nkey,
        user=args.event_bus_user,
        password_file=args.event_bus_password_file,
        token_file=args.event_bus_token_file,
        tls_ca=args.event_bus_tls_ca,
        tls_cert=args.event_bus_tls_cert,
        tls_key=args.event_bus_tls_key,
    )


def _read(path: str | None) -> str | None:
    if not path:
        return None
    with open(path, encoding="utf-8") as handle:
        return handle.read().strip()


def connect_options(bus: BusSettings) -> dict[str, object]:
    """Keyword arguments of ``nats.connect`` (files read here; no secret is ever logged)."""
    options: dict[str, object] = {
        "servers": list(bus.servers),
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 1,
        "connect_timeout": 5,
        "allow_reconnect": True,
        # Publications buffered while reconnecting: the ingress answers 503 rather than wait long.
        "pending_size": 8 * 1024 * 1024,
    }
    if bus.creds_file:
        options["user_credentials"] = bus.creds_file
    if bus.nkey_seed_file:
        options["nkeys_seed"] = bus.nkey_seed_file
    if bus.user:
        options["user"] = bus.user
        password = _read(bus.password_file) or os.environ.get(PASSWORD_ENV)
        if password:
            options["password"] = password
    token = _read(bus.token_file) or os.environ.get(TOKEN_ENV)
    if token:
        options["token"] = token
    if bus.tls_ca or bus.tls_cert or any(s.startswith("tls://") for s in bus.servers):
        import ssl

        context = ssl.create_default_context(cafile=bus.tls_ca)
        if bus.tls_cert:
            context.load_cert_chain(bus.tls_cert, bus.tls_key)
        options["tls"] = context
    return options
