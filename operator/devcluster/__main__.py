"""`python -m devcluster`: the commands behind `make cluster`, `make cluster-node`, `make image`, `make dev`."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devcluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cluster = sub.add_parser("cluster", help="start/stop the local control plane (and its node, when one runs)")
    cluster.add_argument("action", choices=["up", "down", "status"])
    cluster.add_argument("--state-dir", default=".cluster")
    binaries = sub.add_parser("binaries", help="find or build the binaries and print their paths")
    binaries.add_argument("names", nargs="*")
    dev = sub.add_parser("dev", help="local control plane + CRDs + operator (--dev) + demo receiver + examples")
    dev.add_argument("--receiver-port", type=int, default=9443)
    args = parser.parse_args(argv)

    if args.command == "cluster":
        from devcluster import controlplane

        return controlplane.main([args.action, "--state-dir", args.state_dir])
    if args.command == "binaries":
        from devcluster import binaries as bins

        return bins.main(args.names)
    if args.command == "dev":
        from devcluster import devloop

        return devloop.main(receiver_port=args.receiver_port)
    return 2


if __name__ == "__main__":
    sys.exit(main())
