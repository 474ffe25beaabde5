"""Which webhook URLs and destination addresses the operator will deliver to.

The same checks run when a Webhook is reconciled and again when a delivery connects.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import idna

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

MAX_URL_LENGTH = 2048
DEFAULT_PORTS = {"https": 443, "http": 80}

# Labels may carry underscores: cluster-internal and SRV-style names use them.
_HOST_LABEL_RE = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
# A last label that is all digits or hex is read as a number by inet_aton ("127.1", "0x7f.1", "2130706433").
_NUMERIC_LABEL_RE = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")


class PolicyViolation(Exception):
    """A URL or destination the operator refuses; `reason` is a condition reason, `message` says what to do."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class BlockedDestination(PolicyViolation):
    """No address of the destination passes the destination policy."""

    def __init__(self, host: str, blocked: list[tuple[IPAddress, str]]) -> None:
        shown = ", ".join(f"{ip} ({name})" for ip, name in blocked[:5])
        if len(blocked) > 5:
            shown += f" and {len(blocked) - 5} more"
        first = blocked[0][0]
        message = (
            f"blocked destination: {host} resolves only to addresses in blocked ranges: {shown}. "
            "Webhook endpoints must be public addresses; if this destination is intended, "
            f"run the operator with --allow-cidr {first}/{first.max_prefixlen} (or a wider range)."
        )
        super().__init__("BlockedDestination", message)
        self.host = host
        self.blocked = blocked


@dataclass(frozen=True)
class ParsedURL:
    scheme: str
    host: str  # lower-case, IDNA-encoded; IPv6 without brackets
    port: int
    target: str  # path and query, at least "/"


def shown_url(url: str) -> str:
    """``scheme://host[:port]`` of a URL, the only part a message may show: its path, query and user
    info often carry a token, and a message ends up in status, logs and Events."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0].rpartition("@")[2]
    shown = f"{scheme}://{netloc}" if scheme else netloc
    return shown if len(shown) <= 100 else shown[:97] + "..."


def _invalid(url: str, problem: str) -> PolicyViolation:
    shown = shown_url(url)
    return PolicyViolation(
        "InvalidURL",
        f"spec.url {shown!r} is not a valid webhook URL: {problem}. "
        "Expected an absolute URL like https://hooks.example.com/path.",
    )


def _normalise_host(url: str, netloc: str, hostname: str) -> str:
    if netloc.startswith("["):
        if "%" in hostname:
            raise _invalid(url, "IPv6 zone identifiers are not supported")
        try:
            return str(ipaddress.IPv6Address(hostname))
        except ValueError:
            raise _invalid(url, f"{hostname!r} is not an IPv6 address") from None
    if not hostname.isascii():
        try:
            hostname = idna.encode(hostname).decode("ascii")
        except idna.IDNAError as exc:
            raise _invalid(url, f"host {hostname!r} is not a valid internationalised name ({exc})") from None
    name = hostname.rstrip(".") if hostname.endswith(".") and hostname != "." else hostname
    if len(name) > 253 or not name:
        raise _invalid(url, "the host name is empty or longer than 253 characters")
    labels = name.split(".")
    if _NUMERIC_LABEL_RE.match(labels[-1]):
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            raise _invalid(
                url, f"host {hostname!r} is neither a DNS name nor an IPv4 address in four decimal octets"
            ) from None
    for label in labels:
        if not _HOST_LABEL_RE.match(label):
            raise _invalid(url, f"host {hostname!r} is not a valid DNS name")
    return hostname


def parse_url(url: str, *, allow_http: bool) -> ParsedURL:
    """Parse and check a webhook URL; raises PolicyViolation (`InvalidURL` or `InsecureURL`)."""
    if len(url) > MAX_URL_LENGTH:
        raise _invalid(url, f"it is {len(url)} characters long, the limit is {MAX_URL_LENGTH}")
    # urlsplit silently drops tabs and newlines, so a URL with them would not be the one that was checked.
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise _invalid(url, "it contains whitespace or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
        hostname = parts.hostname
    except ValueError as exc:
        raise _invalid(url, str(exc)) from None
    scheme = parts.scheme.lower()
    if scheme == "http":
        if not allow_http:
            raise PolicyViolation(
                "InsecureURL",
                f"spec.url {shown_url(url)!r} uses plain http://; deliveries must use https:// so payloads and "
                "signatures are encrypted. Change the URL to https://, or run the operator with --allow-http "
                "(meant for development).",
            )
    elif scheme != "https":
        raise _invalid(url, f"scheme {parts.scheme + ':' if parts.scheme else '(none)'} is not supported, use https")
    if "@" in parts.netloc:
        raise _invalid(url, "user info (user:password@) is not allowed; send credentials in spec.headers")
    if not hostname:
        raise _invalid(url, "it has no host")
    host = _normalise_host(url, parts.netloc, hostname)
    if port is None:
        port = DEFAULT_PORTS[scheme]
    elif port == 0:
        raise _invalid(url, "port 0 is not a usable port")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return ParsedURL(scheme=scheme, host=host, port=port, target=target)


def _nets(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


# Ordered: the first range that contains an address names it, so narrow ranges come before wide ones.
_BLOCKED_V4: tuple[tuple[tuple[IPNetwork, ...], str], ...] = (
    (_nets("0.0.0.0/32"), "unspecified"),
    (_nets("0.0.0.0/8"), "reserved (this network, 0.0.0.0/8)"),
    (_nets("127.0.0.0/8"), "loopback"),
    (_nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"), "private (RFC 1918)"),
    (_nets("100.64.0.0/10"), "CGNAT (100.64.0.0/10)"),
    (_nets("169.254.169.254/32"), "link-local (cloud metadata)"),
    (_nets("169.254.0.0/16"), "link-local"),
    (_nets("192.0.0.0/24"), "reserved (IETF protocol assignments)"),
    (_nets("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"), "reserved (documentation)"),
    (_nets("192.88.99.0/24"), "reserved (6to4 relay anycast)"),
    (_nets("198.18.0.0/15"), "reserved (benchmarking)"),
    (_nets("224.0.0.0/4"), "multicast"),
    (_nets("255.255.255.255/32"), "reserved (broadcast)"),
    (_nets("240.0.0.0/4"), "reserved (240.0.0.0/4)"),
)

_BLOCKED_V6: tuple[tuple[tuple[IPNetwork, ...], str], ...] = (
    (_nets("::/128"), "unspecified"),
    (_nets("::1/128"), "loopback"),
    (_nets("fd00:ec2::254/128"), "link-local (cloud metadata)"),
    (_nets("fc00::/7"), "private (IPv6 ULA)"),
    (_nets("fe80::/10"), "link-local"),
    (_nets("fec0::/10"), "reserved (site-local)"),
    (_nets("ff00::/8"), "multicast"),
    (_nets("64:ff9b:1::/48"), "reserved (local-use NAT64)"),
    (_nets("100::/64"), "reserved (discard-only)"),
    (_nets("2001:2::/48"), "reserved (benchmarking)"),
    (_nets("2001:db8::/32", "3fff::/20"), "reserved (documentation)"),
    (_nets("2001::/23"), "reserved (IETF protocol assignments)"),
    (_nets("5f00::/16"), "reserved (SRv6 SIDs)"),
)

_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIXTOFOUR = ipaddress.IPv6Network("2002::/16")
_TEREDO = ipaddress.IPv6Network("2001::/32")
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")


def _embedded_v4(ip: ipaddress.IPv6Address) -> list[tuple[ipaddress.IPv4Address, str]]:
    """IPv4 addresses a translation or tunnelling form of `ip` would reach, with the form's name."""
    if ip in _IPV4_MAPPED:
        return [(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "IPv4-mapped")]
    if ip in _NAT64:
        return [(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "NAT64")]
    if ip in _SIXTOFOUR:
        return [(ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF), "6to4")]
    if ip in _TEREDO:
        server = ipaddress.IPv4Address((int(ip) >> 64) & 0xFFFFFFFF)
        client = ipaddress.IPv4Address(~int(ip) & 0xFFFFFFFF)
        return [(server, "Teredo server"), (client, "Teredo client")]
    return []


def blocked_range(ip: IPAddress) -> str | None:
    """The short name of the blocked range `ip` lies in, or None for a public address."""
    if isinstance(ip, ipaddress.IPv4Address):
        for networks, name in _BLOCKED_V4:
            if any(ip in network for network in networks):
                return name
        return None
    embedded = _embedded_v4(ip)
    if embedded:
        for v4, form in embedded:
            inner = blocked_range(v4)
            if inner is not None:
                return f"{inner}, as {form} {v4}"
        return None
    for networks, name in _BLOCKED_V6:
        if any(ip in network for network in networks):
            return name
    if ip not in _GLOBAL_UNICAST_V6:
        return "reserved (outside IPv6 global unicast 2000::/3)"
    return None


@dataclass(frozen=True)
class DestinationPolicy:
    """Public addresses are allowed; blocked ranges only where an `--allow-cidr` range covers them."""

    allow_cidrs: tuple[IPNetwork, ...] = ()

    def check_ip(self, ip: IPAddress) -> str | None:
        """None if the operator may dial `ip`, else the name of the blocked range."""
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            # ::ffff:127.0.0.1 reaches 127.0.0.1, so an IPv4 allow range covers it too.
            candidates.append(ip.ipv4_mapped)
        if any(candidate in network for candidate in candidates for network in self.allow_cidrs):
            return None
        return blocked_range(ip)

    @classmethod
    def from_strings(cls, cidrs: Iterable[str]) -> DestinationPolicy:
        """Build a policy from `--allow-cidr` values; raises ValueError naming a bad value."""
        networks: list[IPNetwork] = []
        for cidr in cidrs:
            try:
                networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
            except ValueError as exc:
                raise ValueError(
                    f"--allow-cidr {cidr!r} is not an IP range; expected CIDR notation such as "
                    f"10.0.0.0/8, 192.168.1.20/32 or fd00::/8 ({exc})"
                ) from None
        return cls(allow_cidrs=tuple(networks))


def ip_literal(host: str) -> IPAddress | None:
    """The address `host` spells, if it is an IP literal (IPv6 with or without brackets), else None."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def system_resolve(host: str, port: int) -> list[IPAddress]:
    """Resolve `host` with the system resolver (TCP results, de-duplicated, in resolver order)."""
    literal = ip_literal(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    addresses: list[IPAddress] = []
    for family, _type, _proto, _canonname, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


async def allowed_addresses(
    host: str,
    port: int,
    policy: DestinationPolicy,
    resolve: Resolver = system_resolve,
) -> list[IPAddress]:
    """The addresses of `host` the policy allows, in resolver order.

    Raises BlockedDestination when there are addresses but none is allowed, and
    PolicyViolation `UnresolvableHost` when the name does not resolve.
    """
    literal = ip_literal(host)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        try:
            addresses = await resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise PolicyViolation(
                "UnresolvableHost",
                f"cannot resolve host {host}: {exc}. Check the host name in spec.url and the cluster's DNS.",
            ) from exc
        if not addresses:
            raise PolicyViolation(
                "UnresolvableHost",
                f"host {host} resolves to no addresses. Check the host name in spec.url and the cluster's DNS.",
            )
    allowed: list[IPAddress] = []
    blocked: list[tuple[IPAddress, str]] = []
    for address in addresses:
        range_name = policy.check_ip(address)
        if range_name is None:
            allowed.append(address)
        else:
            blocked.append((address, range_name))
    if not allowed:
        raise BlockedDestination(host, blocked)
    return allowed
