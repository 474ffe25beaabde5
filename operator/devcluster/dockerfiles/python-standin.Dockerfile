# A local stand-in for the official python slim image, for machines that reach Debian's package
# mirror and PyPI but no image registry: Debian's Python 3.11 in a venv at the official image's
# prefix, so `python3`, `pip` and console scripts live in /usr/local/bin as there.
ARG DEBIAN_IMAGE=webhook-operator-local/debian:bookworm
FROM ${DEBIAN_IMAGE}
ENV LANG=C.UTF-8
# Extra CA certificates of this machine (a TLS-inspecting egress, a company CA): trusted by apt and pip.
COPY certs/ /usr/local/share/ca-certificates/
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && update-ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /usr/local \
 && /usr/local/bin/pip install --no-cache-dir --cert /etc/ssl/certs/ca-certificates.crt -q -U pip setuptools wheel
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
CMD ["python3"]
