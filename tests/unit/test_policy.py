"""URL checks and the destination policy (blocked ranges, --allow-cidr, resolution)."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from webhook_operator.policy import (
    BlockedDestination,
    DestinationPolicy,
    IPAddress,
    ParsedURL,
    PolicyViolation,
    allowed_addresses,
    blocked_range,
    parse_url,
    system_resolve,
)


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


# --- parse_url ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://hooks.example.com/identity", ParsedURL("https", "hooks.example.com", 443, "/identity")),
        ("https://hooks.example.com", ParsedURL("https", "hooks.example.com", 443, "/")),
        ("https://hooks.example.com?x=1", ParsedURL("https", "hooks.example.com", 443, "/?x=1")),
        ("https://Hooks.Example.COM:8443/a/b?c=d&e=f", ParsedURL("https", "hooks.example.com", 8443, "/a/b?c=d&e=f")),
        ("HTTPS://hooks.example.com/", ParsedURL("https", "hooks.example.com", 443, "/")),
        ("https://hooks.example.com/p#fragment", ParsedURL("https", "hooks.example.com", 443, "/p")),
        ("https://203.0.113.7/x", ParsedURL("https", "203.0.113.7", 443, "/x")),
        ("https://[::1]/x", ParsedURL("https", "::1", 443, "/x")),
        ("https://[::1]:8443/", ParsedURL("https", "::1", 8443, "/")),
        ("https://[2001:DB8:0:0::1]:9/", ParsedURL("https", "2001:db8::1", 9, "/")),
        ("https://bücher.example/x", ParsedURL("https", "xn--bcher-kva.example", 443, "/x")),
        ("https://svc_name.team.example/", ParsedURL("https", "svc_name.team.example", 443, "/")),
        ("https://hooks.example.com./", ParsedURL("https", "hooks.example.com.", 443, "/")),
        ("https://hooks.example.com:65535/", ParsedURL("https", "hooks.example.com", 65535, "/")),
    ],
)
def test_valid_https_urls_parse(url: str, expected: ParsedURL) -> None:
    assert parse_url(url, allow_http=False) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://receiver.dev/hook", ParsedURL("http", "receiver.dev", 80, "/hook")),
        ("http://127.0.0.1:8080", ParsedURL("http", "127.0.0.1", 8080, "/")),
        ("http://[::1]:8080/x", ParsedURL("http", "::1", 8080, "/x")),
    ],
)
def test_http_urls_need_allow_http(url: str, expected: ParsedURL) -> None:
    with pytest.raises(PolicyViolation) as info:
        parse_url(url, allow_http=False)
    assert info.value.reason == "InsecureURL"
    assert "--allow-http" in info.value.message
    assert "https://" in info.value.message
    assert parse_url(url, allow_http=True) == expected


@pytest.mark.parametrize(
    ("url", "mentions"),
    [
        ("", "scheme"),
        ("hooks.example.com/path", "scheme"),
        ("//hooks.example.com/path", "scheme"),
        ("ftp://hooks.example.com/", "ftp"),
        ("ws://hooks.example.com/", "ws"),
        ("file:///etc/passwd", "file"),
        ("https://", "no host"),
        ("https:///path", "no host"),
        ("https:hooks.example.com", "no host"),
        ("https://user@hooks.example.com/", "user info"),
        ("https://user:pw@hooks.example.com/", "user info"),
        ("https://:pw@hooks.example.com/", "user info"),
        ("https://evil.example\\@hooks.example.com/", "user info"),
        ("https://hooks.example.com:0/", "port 0"),
        ("https://hooks.example.com:65536/", "ort"),
        ("https://hooks.example.com:-1/", "ort"),
        ("https://hooks.example.com:http/", "ort"),
        ("https://[::1/", "Invalid IPv6"),
        ("https://[not-an-ip]/", "not-an-ip"),
        ("https://[fe80::1%25eth0]/", "zone"),
        ("https://hooks example.com/", "whitespace"),
        ("https://hooks.example.com/a b", "whitespace"),
        ("https://hooks.example.com/\n", "whitespace"),
        ("https://hooks.exa\tmple.com/", "whitespace"),
        ("https://hooks.example.com/\x00", "control"),
        ("https://127.1/", "four decimal octets"),
        ("https://2130706433/", "four decimal octets"),
        ("https://0x7f.0.0.1/", "four decimal octets"),
        ("https://0x7f000001/", "four decimal octets"),
        ("https://127.000.000.001/", "four decimal octets"),
        ("https://1.2.3.4.5/", "four decimal octets"),
        ("https://hooks.example.123/", "four decimal octets"),
        ("https://hooks..example.com/", "not a valid DNS name"),
        ("https://-hooks.example.com/", "not a valid DNS name"),
        ("https://hooks-.example.com/", "not a valid DNS name"),
        ("https://hooks%2eexample.com/", "not a valid DNS name"),
        ("https://hooks,example.com/", "not a valid DNS name"),
        ("https://" + "a" * 64 + ".example.com/", "not a valid DNS name"),
        ("https://" + ("a" * 60 + ".") * 5 + "com/", "253"),
        ("https://hooks.example.com/" + "p" * 2030, "2048"),
    ],
)
def test_invalid_urls_are_rejected_with_the_reason(url: str, mentions: str) -> None:
    with pytest.raises(PolicyViolation) as info:
        parse_url(url, allow_http=True)
    assert info.value.reason == "InvalidURL"
    assert mentions in info.value.message
    assert "https://hooks.example.com/path" in info.value.message
    assert str(info.value) == info.value.message


def test_a_url_of_exactly_2048_characters_is_accepted() -> None:
    url = "https://hooks.example.com/"
    url += "p" * (2048 - len(url))
    assert len(url) == 2048
    assert parse_url(url, allow_http=False).host == "hooks.example.com"


def test_a_very_long_invalid_url_is_shortened_in_the_message() -> None:
    with pytest.raises(PolicyViolation) as info:
        parse_url("gopher://" + "x" * 3000, allow_http=False)
    assert len(info.value.message) < 400


def test_allow_http_does_not_admit_other_schemes() -> None:
    with pytest.raises(PolicyViolation) as info:
        parse_url("gopher://hooks.example.com/", allow_http=True)
    assert info.value.reason == "InvalidURL"


# --- blocked_range -----------------------------------------------------------------------

BLOCKED = [
    # IPv4
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "reserved"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.0.0.1", "private"),
    ("10.255.255.255", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "CGNAT"),
    ("100.127.255.255", "CGNAT"),
    ("169.254.0.1", "link-local"),
    ("169.254.169.254", "cloud metadata"),
    ("192.0.0.8", "IETF protocol assignments"),
    ("192.0.2.1", "documentation"),
    ("198.51.100.1", "documentation"),
    ("203.0.113.1", "documentation"),
    ("192.88.99.1", "6to4 relay"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.255", "benchmarking"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.254", "reserved"),
    ("255.255.255.255", "broadcast"),
    # IPv6
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("fc00::1", "ULA"),
    ("fd12:3456:789a::1", "ULA"),
    ("fd00:ec2::254", "cloud metadata"),
    ("fe80::1", "link-local"),
    ("febf:ffff::1", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"),
    ("2001:2::1", "benchmarking"),
    ("2001:10::1", "IETF protocol assignments"),
    ("100::1", "discard"),
    ("64:ff9b:1::a00:1", "NAT64"),
    ("5f00::1", "SRv6"),
    ("::2", "reserved"),
    ("::0.0.0.2", "reserved"),
    ("1000::1", "reserved"),
    ("4000::1", "reserved"),
    # IPv6 forms that reach an IPv4 address are judged by that address
    ("::ffff:127.0.0.1", "loopback, as IPv4-mapped 127.0.0.1"),
    ("::ffff:10.1.2.3", "private (RFC 1918), as IPv4-mapped"),
    ("::ffff:169.254.169.254", "cloud metadata"),
    ("64:ff9b::7f00:1", "loopback, as NAT64 127.0.0.1"),
    ("64:ff9b::a9fe:a9fe", "cloud metadata"),
    ("2002:7f00:1::1", "loopback, as 6to4 127.0.0.1"),
    ("2002:c0a8:101::1", "private"),
    ("2001:0:7f00:1::", "loopback, as Teredo server 127.0.0.1"),
    # Teredo client 10.0.0.1 is stored bit-inverted: f5ff:fffe.
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "private (RFC 1918), as Teredo client 10.0.0.1"),
]

PUBLIC = [
    "1.1.1.1",
    "8.8.8.8",
    "9.255.255.255",
    "11.0.0.0",
    "100.63.255.255",
    "100.128.0.0",
    "126.255.255.255",
    "128.0.0.0",
    "169.253.255.255",
    "169.255.0.0",
    "172.15.255.255",
    "172.32.0.0",
    "192.0.1.1",
    "192.167.255.255",
    "192.169.0.0",
    "198.17.255.255",
    "198.20.0.0",
    "223.255.255.255",
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
    "2a00:1450::1",
    "2001:db9::1",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::1",
    "2001:0:4136:e378:8000:63bf:f7f7:f7f7",  # Teredo: server 65.54.227.120, client 8.8.8.8
]


@pytest.mark.parametrize(("address", "name"), BLOCKED)
def test_blocked_ranges_are_named(address: str, name: str) -> None:
    found = blocked_range(ip(address))
    assert found is not None
    assert name in found


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_not_blocked(address: str) -> None:
    assert blocked_range(ip(address)) is None


def test_metadata_address_is_called_cloud_metadata_not_just_link_local() -> None:
    assert blocked_range(ip("169.254.169.254")) == "link-local (cloud metadata)"
    assert blocked_range(ip("169.254.169.253")) == "link-local"


# --- DestinationPolicy -------------------------------------------------------------------


def test_default_policy_allows_only_public_addresses() -> None:
    policy = DestinationPolicy()
    assert policy.check_ip(ip("8.8.8.8")) is None
    assert policy.check_ip(ip("127.0.0.1")) == "loopback"


@pytest.mark.parametrize(
    ("cidrs", "address", "allowed"),
    [
        (["127.0.0.0/8"], "127.0.0.1", True),
        (["127.0.0.0/8"], "127.1.2.3", True),
        (["127.0.0.0/8"], "::1", False),
        (["127.0.0.0/8"], "::ffff:127.0.0.1", True),
        (["::1/128"], "::1", True),
        (["::1/128"], "127.0.0.1", False),
        (["10.1.0.0/16"], "10.1.200.3", True),
        (["10.1.0.0/16"], "10.2.0.1", False),
        (["10.1.2.3"], "10.1.2.3", True),
        (["10.1.2.3"], "10.1.2.4", False),
        (["fd00::/8"], "fd00:1::5", True),
        (["fd00::/8"], "fc00::5", False),
        (["169.254.169.254/32"], "169.254.169.254", True),
        (["0.0.0.0/0"], "10.0.0.1", True),
        (["::/0"], "fe80::1", True),
        (["::/0"], "10.0.0.1", False),
    ],
)
def test_allow_cidr_opens_exactly_its_range(cidrs: list[str], address: str, allowed: bool) -> None:
    policy = DestinationPolicy.from_strings(cidrs)
    result = policy.check_ip(ip(address))
    assert (result is None) is allowed


def test_allow_cidr_does_not_block_public_addresses() -> None:
    policy = DestinationPolicy.from_strings(["10.0.0.0/8"])
    assert policy.check_ip(ip("8.8.8.8")) is None


def test_from_strings_accepts_host_bits_and_whitespace() -> None:
    policy = DestinationPolicy.from_strings([" 10.1.2.3/8 ", "fd00::1/8"])
    assert policy.allow_cidrs == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


@pytest.mark.parametrize("bad", ["", "10.0.0.0/33", "not-a-cidr", "10.0.0/8x", "fd00::/129", "localhost"])
def test_from_strings_rejects_bad_cidrs_clearly(bad: str) -> None:
    with pytest.raises(ValueError, match=r"--allow-cidr .* is not an IP range; expected CIDR notation"):
        DestinationPolicy.from_strings(["10.0.0.0/8", bad])


# --- resolution and allowed_addresses ----------------------------------------------------


class FakeDNS:
    """A resolver with a fixed table; records the names it was asked for."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.asked.append((host, port))
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ip(a) for a in self.table[host]]


async def test_public_name_resolves_to_its_addresses_in_order() -> None:
    dns = FakeDNS({"hooks.example.com": ["2606:4700::1", "1.1.1.1"]})
    assert await allowed_addresses("hooks.example.com", 443, DestinationPolicy(), dns) == [
        ip("2606:4700::1"),
        ip("1.1.1.1"),
    ]
    assert dns.asked == [("hooks.example.com", 443)]


async def test_only_allowed_addresses_of_a_mixed_answer_are_returned() -> None:
    dns = FakeDNS({"mixed.example": ["10.0.0.1", "1.1.1.1", "127.0.0.1", "8.8.8.8"]})
    assert await allowed_addresses("mixed.example", 443, DestinationPolicy(), dns) == [ip("1.1.1.1"), ip("8.8.8.8")]


@pytest.mark.parametrize(
    ("addresses", "names"),
    [
        (["10.0.0.1"], ["10.0.0.1 (private (RFC 1918))"]),
        (["169.254.169.254"], ["169.254.169.254 (link-local (cloud metadata))"]),
        (["127.0.0.1", "::1"], ["127.0.0.1 (loopback)", "::1 (loopback)"]),
        (["fd00:ec2::254"], ["fd00:ec2::254 (link-local (cloud metadata))"]),
    ],
)
async def test_a_name_with_only_blocked_addresses_is_a_blocked_destination(
    addresses: list[str], names: list[str]
) -> None:
    dns = FakeDNS({"internal.example": addresses})
    with pytest.raises(BlockedDestination) as info:
        await allowed_addresses("internal.example", 443, DestinationPolicy(), dns)
    violation = info.value
    assert isinstance(violation, PolicyViolation)
    assert violation.reason == "BlockedDestination"
    assert "internal.example" in violation.message
    for name in names:
        assert name in violation.message
    first = ip(addresses[0])
    assert f"--allow-cidr {first}/{first.max_prefixlen}" in violation.message


async def test_many_blocked_addresses_are_summarised() -> None:
    dns = FakeDNS({"big.example": [f"10.0.0.{n}" for n in range(1, 9)]})
    with pytest.raises(BlockedDestination) as info:
        await allowed_addresses("big.example", 443, DestinationPolicy(), dns)
    assert "and 3 more" in info.value.message
    assert len(info.value.blocked) == 8


async def test_allow_cidr_lets_an_internal_name_through() -> None:
    dns = FakeDNS({"receiver.dev": ["127.0.0.1"]})
    policy = DestinationPolicy.from_strings(["127.0.0.0/8"])
    assert await allowed_addresses("receiver.dev", 8443, policy, dns) == [ip("127.0.0.1")]


@pytest.mark.parametrize(
    ("host", "address"),
    [("127.0.0.1", "127.0.0.1"), ("::1", "::1"), ("[::1]", "::1"), ("10.9.8.7", "10.9.8.7"), ("[fe80::1]", "fe80::1")],
)
async def test_blocked_ip_literals_never_reach_the_resolver(host: str, address: str) -> None:
    dns = FakeDNS({})
    with pytest.raises(BlockedDestination) as info:
        await allowed_addresses(host, 443, DestinationPolicy(), dns)
    assert address in info.value.message
    assert dns.asked == []


@pytest.mark.parametrize(("host", "address"), [("8.8.8.8", "8.8.8.8"), ("[2606:4700::1]", "2606:4700::1")])
async def test_public_ip_literals_are_allowed_without_lookup(host: str, address: str) -> None:
    dns = FakeDNS({})
    assert await allowed_addresses(host, 443, DestinationPolicy(), dns) == [ip(address)]
    assert dns.asked == []


async def test_a_name_that_does_not_resolve_is_unresolvable_not_blocked() -> None:
    with pytest.raises(PolicyViolation) as info:
        await allowed_addresses("missing.example", 443, DestinationPolicy(), FakeDNS({}))
    assert type(info.value) is PolicyViolation
    assert info.value.reason == "UnresolvableHost"
    assert "missing.example" in info.value.message


async def test_an_empty_answer_is_unresolvable() -> None:
    with pytest.raises(PolicyViolation) as info:
        await allowed_addresses("empty.example", 443, DestinationPolicy(), FakeDNS({"empty.example": []}))
    assert info.value.reason == "UnresolvableHost"


async def test_system_resolve_returns_literals_directly() -> None:
    assert await system_resolve("192.0.2.5", 443) == [ip("192.0.2.5")]
    assert await system_resolve("[2001:db8::5]", 443) == [ip("2001:db8::5")]


async def test_system_resolve_resolves_localhost_without_duplicates() -> None:
    # "localhost" comes from /etc/hosts, so this needs no network.
    addresses = await system_resolve("localhost", 443)
    assert addresses
    assert len(addresses) == len(set(addresses))
    assert all(a.is_loopback for a in addresses)


async def test_system_resolve_failure_becomes_unresolvable_host() -> None:
    # .invalid is reserved (RFC 6761) and never resolves.
    with pytest.raises(PolicyViolation) as info:
        await allowed_addresses("no-such-host.invalid", 443, DestinationPolicy())
    assert info.value.reason == "UnresolvableHost"


async def test_localhost_is_blocked_by_default_and_allowed_in_dev_mode() -> None:
    with pytest.raises(BlockedDestination):
        await allowed_addresses("localhost", 443, DestinationPolicy())
    dev = DestinationPolicy.from_strings(["127.0.0.0/8", "::1/128"])
    assert await allowed_addresses("localhost", 443, dev)


SECRET_URLS = [
    ("http://hooks.example.com/t/SECRET-PATH?token=SECRET-QUERY", "http://hooks.example.com"),
    ("https://user:SECRET-PASS@hooks.example.com:8443/SECRET-PATH", "https://hooks.example.com:8443"),
    ("https://hooks.example.com/SECRET-PATH?token=SECRET-QUERY\n", "https://hooks.example.com"),
    ("ftp://hooks.example.com/SECRET-PATH?token=SECRET-QUERY", "ftp://hooks.example.com"),
    ("https://bad_host!.example.com/SECRET-PATH?token=SECRET-QUERY", "https://bad_host!.example.com"),
    ("https://[::1/SECRET-PATH?token=SECRET-QUERY", "https://[::1"),
    ("https://hooks.example.com:0/SECRET-PATH", "https://hooks.example.com:0"),
]


@pytest.mark.parametrize(("url", "shown"), SECRET_URLS)
def test_url_messages_show_scheme_host_and_port_only(url: str, shown: str) -> None:
    with pytest.raises(PolicyViolation) as info:
        parse_url(url, allow_http=False)
    assert info.value.reason in ("InvalidURL", "InsecureURL")
    assert "SECRET" not in info.value.message, info.value.message
    assert repr(shown) in info.value.message


async def test_a_blocked_destination_message_shows_no_path_or_query() -> None:
    url = parse_url("https://127.0.0.1:8443/SECRET-PATH?token=SECRET-QUERY", allow_http=False)
    with pytest.raises(BlockedDestination) as info:
        await allowed_addresses(url.host, url.port, DestinationPolicy.from_strings([]))
    assert "127.0.0.1" in info.value.message and "SECRET" not in info.value.message
