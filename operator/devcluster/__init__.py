"""Local-cluster tooling for developing and testing webhook-operator.

Builds and caches the binaries, starts the local control plane and a real kubelet node,
builds the image, and runs the ``make dev`` loop. Kept apart from the runtime package: the
operator never imports it and the wheel and image do not carry it.
"""
