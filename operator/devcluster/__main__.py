"""`python -m devcluster`: the commands behind `make cluster`, `make cluster-node`, `make image`, `make dev`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def up_down_status(command: str, action: str, state_dir: Path) -> int:
    """``cluster`` (the control plane) or ``node`` (the control plane plus a kubelet node)."""
    from devcluster import binaries
    from devcluster.controlplane import ControlPlane, ControlPlaneError
    from devcluster.node import Node, NodeError

    plane = ControlPlane(state_dir.resolve())
    target: ControlPlane | Node = plane if command == "cluster" else Node(plane)
    try:
        if action == "up":
            target.up()
        elif action == "down":
            target.down()  # the control plane's down stops its node first
        else:
            running = target.running()
            print("running" if running else "stopped")
            return 0 if running else 1
    except (ControlPlaneError, NodeError, binaries.BinariesUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devcluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cluster = sub.add_parser("cluster", help="start/stop the local control plane (and its node, when one runs)")
    cluster.add_argument("action", choices=["up", "down", "status"])
    cluster.add_argument("--state-dir", default=".cluster")
    binaries = sub.add_parser("binaries", help="find or build the binaries and print their paths")
    binaries.add_argument("names", nargs="*")
    node = sub.add_parser("node", help="start/stop the local control plane plus one real kubelet node")
    node.add_argument("action", choices=["up", "down", "status"])
    node.add_argument("--state-dir", default=".cluster")
    image = sub.add_parser("image", help="build the Dockerfile as webhook-operator:dev; import it into a running node")
    image.add_argument("--state-dir", default=".cluster")
    sub.add_parser("system", help="install the Debian packages the tests and the node need (as root)")
    dev = sub.add_parser("dev", help="local control plane + CRDs + operator (--dev) + demo receiver + examples")
    dev.add_argument("--receiver-port", type=int, default=9443)
    dev.add_argument(
        "--no-event-bus",
        dest="event_bus",
        action="store_false",
        help="CR mode only: no local nats-server (JetStream) and no --event-bus",
    )
    args = parser.parse_args(argv)

    if args.command in ("cluster", "node"):
        return up_down_status(args.command, args.action, Path(args.state_dir))
    if args.command == "image":
        from devcluster import image as image_module

        return image_module.main(Path(args.state_dir).resolve())
    if args.command == "system":
        from devcluster import system

        return system.ensure()
    if args.command == "binaries":
        from devcluster import binaries as bins

        return bins.main(args.names)
    if args.command == "dev":
        from devcluster import devloop

        return devloop.main(receiver_port=args.receiver_port, event_bus=args.event_bus)
    return 2


if __name__ == "__main__":
    sys.exit(main())
