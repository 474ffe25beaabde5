"""Who this process is: the name that Leases, Kubernetes Events and kopf use for it.

In a pod, the chart sets ``POD_NAME`` from the downward API. Elsewhere the host name serves.
Never the user name: in the image the process runs as uid 65532, which has no passwd entry,
and ``getpass.getuser()`` raises there.
"""

from __future__ import annotations

import os
import socket


def instance_name(environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get("POD_NAME") or env.get("HOSTNAME") or socket.gethostname() or "webhook-operator"
