"""`webhook-operator`: run the operator. The local-cluster tools live in the separate `devcluster` package."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable

from webhook_operator import __version__
from webhook_operator.identity import instance_name
from webhook_operator.settings import Settings, add_run_arguments, settings_from_args

# Client libraries kopf imports whenever they are installed, to recognise their model objects;
# the operator passes kopf none, and not loading them saves about 25 MB per process.
UNUSED_CLIENT_LIBRARIES = ("kubernetes", "pykube", "kubernetes_asyncio")


def keep_unused_clients_out() -> None:
    """Make the imports of those libraries fail (kopf then skips them) unless credentials need one."""
    from webhook_operator.kubeconfig import needs_client_library

    if needs_client_library():
        return  # an exec plugin or auth-provider: the kubernetes package runs it
    for name in UNUSED_CLIENT_LIBRARIES:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


# asyncio gives every TLS connection a 256 KiB read buffer, filled in at once: with a hundred
# delivery connections and the API client's, a quarter of the operator's memory. A TLS record is at
# most 16 KiB, so 32 KiB loses nothing but a few reads of large responses.
TLS_READ_BUFFER_BYTES = 32 * 1024


def smaller_tls_read_buffers() -> None:
    import asyncio.sslproto

    protocol = getattr(asyncio.sslproto, "SSLProtocol", None)
    if protocol is not None and getattr(protocol, "max_size", 0) > TLS_READ_BUFFER_BYTES:
        protocol.max_size = TLS_READ_BUFFER_BYTES


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (a dependency on Linux and macOS): its loop, sockets and
    TLS are C code, about a sixth less CPU per delivery than asyncio's in the bus benchmark; else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(settings: Settings) -> int:
    keep_unused_clients_out()
    smaller_tls_read_buffers()
    import kopf

    from webhook_operator import handlers  # noqa: F401  (registers the handlers)

    kopf.configure(
        debug=settings.log_level == "DEBUG",
        verbose=settings.log_level == "DEBUG",
        quiet=settings.log_level in ("WARNING", "ERROR"),
        log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL,
    )
    logging.getLogger().setLevel(settings.log_level)
    # Delivery URLs stay out of the logs at every level (a path or query often carries a token):
    # nothing here logs them, and neither HTTP client (deliveries', the API's) logs requests.
    if settings.log_level != "DEBUG":
        # One line per handled watch event drowns what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_operate(settings))
    return 0


async def _operate(settings: Settings) -> None:
    """Serve the probes from the first second, then run kopf (whose startup handler loads the webhooks)."""
    import kopf

    from webhook_operator import runtime as rt
    from webhook_operator.probes import ProbeServer

    runtime = rt.build_runtime(settings)
    probes = ProbeServer(settings.bind_address, settings.health_port, runtime.facts)
    await probes.start()
    try:
        # kopf's own liveness endpoint would only answer after the startup handlers: ours replaces it.
        await kopf.operator(
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            standalone=True,
            # kopf would otherwise name itself after getpass.getuser(), which fails for a uid
            # without a passwd entry (the image's 65532).
            identity=instance_name(),  # type: ignore[arg-type]  # kopf's Identity is a NewType of str
            memo=kopf.Memo(settings=settings, runtime=runtime),
        )
    finally:
        await probes.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="webhook-operator", description="Webhooks as Kubernetes resources.")
    parser.add_argument("--version", action="version", version=f"webhook-operator {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="run the operator against the current kubeconfig or in-cluster config")
    add_run_arguments(run_parser)
    args = parser.parse_args(argv)

    if args.command == "run":
        return run(settings_from_args(args))
    return 2


if __name__ == "__main__":
    sys.exit(main())
