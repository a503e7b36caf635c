"""RFC 5280 §4.2.1.10 name constraints: leaf names against CA constraints, and child subtrees against parents."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from certctl.domain.errors import ValidationError
from certctl.pki.ca import build_root, ca_name
from certctl.pki.name_constraints import check_names, subtree_is_within
from certctl.pki.signers import SoftwareSigner, generate_private_key

D, U, E = x509.DNSName, x509.UniformResourceIdentifier, x509.RFC822Name


def _ip(text: str) -> x509.IPAddress:
    return x509.IPAddress(ipaddress.ip_network(text) if "/" in text else ipaddress.ip_address(text))


def _ca_with(permitted: list[x509.GeneralName] | None, excluded: list[x509.GeneralName] | None) -> x509.Certificate:
    key = generate_private_key("ECDSA-P256")
    root = build_root(SoftwareSigner("m", key), ca_name("NC"), datetime.now(UTC), timedelta(days=1))
    from cryptography.hazmat.primitives import hashes

    return (x509.CertificateBuilder().subject_name(root.subject).issuer_name(root.subject)
            .public_key(key.public_key()).serial_number(1).not_valid_before(root.not_valid_before_utc)
            .not_valid_after(root.not_valid_after_utc)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=excluded),
                           critical=True)
            .sign(key, hashes.SHA256()))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        (D("example.com"), True), (D("a.b.example.com"), True), (D("*.example.com"), True),
        (D("badexample.com"), False), (D("example.org"), False), (D("x.secret.example.com"), False),
        (_ip("10.1.2.3"), True), (_ip("10.2.0.1"), False), (_ip("2001:db8::1"), True),
        (E("ops@example.com"), True), (E("ops@example.org"), False),
        (U("https://api.example.com/x"), True), (U("https://example.org/"), False),
    ],
)
def test_leaf_names_against_permitted_and_excluded_subtrees(name: x509.GeneralName, allowed: bool) -> None:
    ca = _ca_with(
        [D("example.com"), _ip("10.1.0.0/16"), _ip("2001:db8::/32"), E("example.com"), U(".example.com")],
        [D("secret.example.com")],
    )
    if allowed:
        check_names([name], [ca])
    else:
        with pytest.raises(ValidationError, match="name constraints"):
            check_names([name], [ca])


def test_a_type_the_ca_does_not_constrain_is_free() -> None:
    check_names([_ip("192.0.2.1")], [_ca_with([D("example.com")], None)])


@pytest.mark.parametrize(
    ("child", "parents", "inside"),
    [
        (D(".example.com"), [D(".example.com")], True),
        (D("example.com"), [D(".example.com")], False),  # example.com itself is not a subdomain
        (D("a.example.com"), [D("example.com")], True),
        (D(".a.example.com"), [D("example.com")], True),
        (D("example.org"), [D("example.com")], False),
        (U("host.example.com"), [U("host.example.com")], True),
        (U("a.host.example.com"), [U("host.example.com")], False),  # a URI host spec without a dot is one host
        (U("a.host.example.com"), [U(".host.example.com")], True),
        (_ip("10.1.2.0/24"), [_ip("10.1.0.0/16")], True),
        (_ip("10.0.0.0/8"), [_ip("10.1.0.0/16")], False),
        (D("anything.org"), [_ip("10.0.0.0/8")], True),  # the parent does not constrain DNS
    ],
)
def test_child_subtrees_must_lie_inside_the_parents(
    child: x509.GeneralName, parents: list[x509.GeneralName], inside: bool
) -> None:
    assert subtree_is_within(child, parents) is inside
