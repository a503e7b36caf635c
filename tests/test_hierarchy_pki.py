"""certctl.pki.hierarchy: child CA certificates, the rules towards their parents, and path validation.

Every chain is also checked by the real `openssl verify` (and `openssl x509 -text` for the content),
so our validator is compared against an independent implementation in both directions.
"""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from certctl.domain.enums import ExtendedKeyUsage
from certctl.domain.errors import ConflictError, ValidationError
from certctl.pki.ca import CA_BACKDATE, IssuingCA, PublicationUrls, build_root, ca_name
from certctl.pki.hierarchy import (
    DEFAULT_CHILD_TTL,
    build_child_ca,
    check_child_name_constraints,
    child_path_len,
    child_validity,
    name_constraints_json,
    parse_name_constraints,
    validate_ca_chain,
    validate_leaf_chain,
)
from certctl.pki.leaf import LeafRequest, build_leaf
from certctl.pki.signers import SoftwareSigner

NOW = datetime.now(UTC).replace(microsecond=0)
PUBLIC = "https://certctl.example.net"


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30, check=False)


def write(path: Path, *certs: x509.Certificate) -> str:
    path.write_bytes(pem(*certs))
    return str(path)


def openssl_verify(tmp: Path, target: x509.Certificate, root: x509.Certificate,
                   untrusted: tuple[x509.Certificate, ...] = ()) -> subprocess.CompletedProcess[str]:
    args = ["verify", "-x509_strict", "-CAfile", write(tmp / "root.pem", root)]
    if untrusted:
        args += ["-untrusted", write(tmp / "untrusted.pem", *untrusted)]
    return openssl(*args, write(tmp / "target.pem", target))


@dataclass
class Tree:
    root: IssuingCA
    policy: IssuingCA  # pathLen 1, name constraints
    issuing: IssuingCA  # pathLen 0


def software(key_spec: str = "ECDSA-P256") -> SoftwareSigner:
    key = ed25519.Ed25519PrivateKey.generate() if key_spec == "Ed25519" else ec.generate_private_key(ec.SECP256R1())
    return SoftwareSigner(f"mem:{id(key)}", key)


def make_root(spec: str = "ECDSA-P256", *, days: int = 3650) -> IssuingCA:
    signer = software(spec)
    cert = build_root(signer, ca_name("Test Root", "certctl tests"), NOW, timedelta(days=days))
    return IssuingCA(id="ica-root", issuer_id="iss-t", cert=cert, parents=(), signer=signer,
                     urls=PublicationUrls.for_ca(PUBLIC, "ica-root"))


def make_child(parent: IssuingCA, ca_id: str, *, path_len: int | None, constraints: x509.NameConstraints | None = None,
               ttl: timedelta | None = None, spec: str = "ECDSA-P256") -> IssuingCA:
    signer = software(spec)
    not_before, not_after = child_validity(parent.cert, NOW, ttl)
    cert = build_child_ca(parent, ca_name(ca_id), signer.public_key(), not_before, not_after,
                          child_path_len(parent.cert, path_len), constraints)
    validate_ca_chain(cert, (parent.cert, *parent.parents), NOW)
    return IssuingCA(id=ca_id, issuer_id="iss-t", cert=cert, parents=(parent.cert, *parent.parents), signer=signer,
                     urls=PublicationUrls.for_ca(PUBLIC, ca_id))


def example_constraints() -> x509.NameConstraints | None:
    return parse_name_constraints([{"permitted": ["example.com", "10.0.0.0/8", "email:example.com"],
                                    "excluded": ["secret.example.com"]}])


@pytest.fixture
def tree() -> Tree:
    root = make_root()
    policy = make_child(root, "ica-policy", path_len=1, constraints=example_constraints())
    issuing = make_child(policy, "ica-issuing", path_len=None)
    return Tree(root, policy, issuing)


def leaf_request(*names: str, key: ec.EllipticCurvePrivateKey | None = None) -> LeafRequest:
    key = key or ec.generate_private_key(ec.SECP256R1())
    return LeafRequest(
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]), public_key=key.public_key(),
        sans=tuple(x509.DNSName(n) for n in names), ekus=(ExtendedKeyUsage.SERVER_AUTH,),
        not_before=NOW - timedelta(minutes=1), not_after=NOW + timedelta(days=30),
    )


def forged_leaf(ca: IssuingCA, name: str) -> x509.Certificate:
    """A leaf signed directly with the CA key, skipping build_leaf's name-constraint check."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = ca.signer.software_key()
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    return (
        x509.CertificateBuilder().subject_name(ca_name(name)).issuer_name(ca.cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(NOW - timedelta(minutes=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca.ski), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(private, hashes.SHA256())
    )


def forged_ca(parent: IssuingCA, cn: str, *, path_len: int | None = 0, critical_extra: bool = False,
              cert_sign: bool = True) -> x509.Certificate:
    """A CA certificate made without build_child_ca's rules (what a buggy or hostile caller could sign)."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = parent.signer.software_key()
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign, crl_sign=True,
                          encipher_only=False, decipher_only=False)
    builder = (
        x509.CertificateBuilder().subject_name(ca_name(cn)).issuer_name(parent.cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=1)).not_valid_after(NOW + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_len), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(parent.ski), critical=False)
    )
    if critical_extra:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00"), critical=True)
    return builder.sign(private, hashes.SHA256())


# ---- the child certificate ---------------------------------------------------------------------------

def test_three_level_tree_verifies_with_openssl_and_carries_the_rfc_5280_extensions(tree: Tree, tmp_path: Path) -> None:
    policy, issuing = tree.policy.cert, tree.issuing.cert
    for target, untrusted in ((policy, ()), (issuing, (policy,))):
        result = openssl_verify(tmp_path, target, tree.root.cert, untrusted)
        assert result.returncode == 0 and ": OK" in result.stdout, result.stdout + result.stderr

    text = openssl("x509", "-noout", "-text", "-in", write(tmp_path / "policy.pem", policy)).stdout
    assert "X509v3 Basic Constraints: critical" in text and "CA:TRUE, pathlen:1" in text
    assert "X509v3 Key Usage: critical" in text and "Digital Signature, Certificate Sign, CRL Sign" in text
    assert "X509v3 Name Constraints: critical" in text
    permitted, excluded = text.split("Permitted:")[1].split("Excluded:")
    assert "DNS:example.com" in permitted and "IP:10.0.0.0/255.0.0.0" in permitted
    assert "email:example.com" in permitted
    assert "DNS:secret.example.com" in excluded
    issuing_text = openssl("x509", "-noout", "-text", "-in", write(tmp_path / "issuing.pem", issuing)).stdout
    assert "CA:TRUE, pathlen:0" in issuing_text  # default: the parent's pathLen - 1
    assert "Name Constraints" not in issuing_text  # none given: the policy CA's still bind (RFC 5280 §6.1.4 (g))


def test_child_identifiers_serial_and_publication_urls_come_from_the_parent(tree: Tree) -> None:
    cert = tree.policy.cert
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())  # RFC 5280 §4.2.1.2 method (1)
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == tree.root.ski.digest
    assert cert.serial_number >= 1 << 64  # at least 64 bits of entropy, positive
    assert cert.issuer == tree.root.cert.subject
    dp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [n.value for p in dp for n in p.full_name or ()] == [f"{PUBLIC}/.well-known/pki/crl/ica-root"]
    aia = {a.access_method: a.access_location.value
           for a in cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value}
    assert aia[AuthorityInformationAccessOID.OCSP] == f"{PUBLIC}/.well-known/pki/ocsp/ica-root"
    assert aia[AuthorityInformationAccessOID.CA_ISSUERS] == f"{PUBLIC}/.well-known/pki/ca/ica-root"
    assert cert.extensions.get_extension_for_class(x509.NameConstraints).critical
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).critical


def test_validity_defaults_to_five_years_backdated_and_is_capped_at_the_parent(tree: Tree) -> None:
    not_before, not_after = child_validity(tree.root.cert, NOW, None)
    assert not_before == max(NOW - CA_BACKDATE, tree.root.cert.not_valid_before_utc)
    assert not_after == NOW + DEFAULT_CHILD_TTL
    short_root = make_root(days=30)
    _, capped = child_validity(short_root.cert, NOW, timedelta(days=365))
    assert capped == short_root.cert.not_valid_after_utc
    with pytest.raises(ConflictError, match="expired"):
        child_validity(short_root.cert, NOW + timedelta(days=31), None)
    with pytest.raises(ValidationError, match="inside its parent"):
        build_child_ca(short_root, ca_name("x"), software().public_key(), NOW, NOW + timedelta(days=60), None, None)


# ---- path length ----------------------------------------------------------------------------------------

def test_path_length_must_shrink_and_a_path_len_zero_ca_signs_no_ca(tree: Tree) -> None:
    assert child_path_len(tree.root.cert, None) is None  # an unconstrained root leaves it open
    assert child_path_len(tree.root.cert, 5) == 5
    assert child_path_len(tree.policy.cert, None) == 0
    with pytest.raises(ValidationError, match="lower than the parent's pathLen 1"):
        child_path_len(tree.policy.cert, 1)
    with pytest.raises(ValidationError, match="pathLen 0"):
        child_path_len(tree.issuing.cert, None)
    with pytest.raises(ValidationError, match="pathLen 0"):
        build_child_ca(tree.issuing, ca_name("too deep"), software().public_key(), NOW, NOW + timedelta(days=1),
                       None, None)
    with pytest.raises(ValidationError):
        build_child_ca(tree.policy, ca_name("too long"), software().public_key(), NOW, NOW + timedelta(days=1),
                       3, None)


def test_validation_counts_the_new_ca_against_its_parents_path_length(tree: Tree, tmp_path: Path) -> None:
    under_zero = forged_ca(tree.issuing, "Under pathLen 0")
    parents = (tree.issuing.cert, *tree.issuing.parents)
    with pytest.raises(ValidationError, match="pathLen 0"):
        validate_ca_chain(under_zero, parents, NOW)
    # openssl accepts the certificate itself (the last certificate of a path is not counted) but not any
    # leaf under it: the reason the CA must be refused before it exists.
    sub = IssuingCA(id="x", issuer_id="iss-t", cert=under_zero, parents=parents, signer=tree.issuing.signer)
    leaf = forged_leaf(sub, "a.example.com")
    result = openssl_verify(tmp_path, leaf, tree.root.cert, (under_zero, tree.issuing.cert, tree.policy.cert))
    assert result.returncode != 0 and "path length" in (result.stdout + result.stderr)


# ---- name constraints -------------------------------------------------------------------------------------

def test_name_constraint_parsing_and_round_trip() -> None:
    nc = parse_name_constraints([{"permitted": ["Example.COM", "DNS:.corp.example.com", "192.168.0.0/16",
                                                "IP:2001:db8::/32", "user@example.com", "URI:.example.com"]},
                                 {"excluded": ["bad.example.com"]}])
    assert nc is not None
    assert nc.permitted_subtrees == [
        x509.DNSName("example.com"), x509.DNSName(".corp.example.com"),
        x509.IPAddress(ipaddress.ip_network("192.168.0.0/16")), x509.IPAddress(ipaddress.ip_network("2001:db8::/32")),
        x509.RFC822Name("user@example.com"), x509.UniformResourceIdentifier(".example.com"),
    ]
    assert name_constraints_json(nc) == [{
        "permitted": ["example.com", ".corp.example.com", "192.168.0.0/16", "2001:db8::/32",
                      "email:user@example.com", "URI:.example.com"],
        "excluded": ["bad.example.com"],
    }]
    assert parse_name_constraints([]) is None and parse_name_constraints([{"permitted": []}]) is None
    for bad in ("", "*.example.com", "10.0.0.1/8", "exa mple.com", "URI:https://example.com/x", "a..b"):
        with pytest.raises(ValidationError, match="name_constraints"):
            parse_name_constraints([{"permitted": [bad]}])


def test_child_permitted_must_lie_inside_and_excluded_must_cover_the_parents(tree: Tree) -> None:
    ancestors = (tree.policy.cert, tree.root.cert)

    def check(permitted: list[str], excluded: list[str]) -> None:
        check_child_name_constraints(parse_name_constraints([{"permitted": permitted, "excluded": excluded}]),
                                     ancestors)

    check(["shop.example.com"], ["secret.example.com"])
    check(["example.com", "10.1.0.0/16", "email:.example.com"], ["secret.example.com"])
    check(["shop.example.com"], ["example.com"])  # a wider exclusion covers the parent's
    with pytest.raises(ValidationError, match=r"'example\.org' is outside"):
        check(["example.org"], ["secret.example.com"])
    with pytest.raises(ValidationError, match="outside"):
        check(["11.0.0.0/8"], ["secret.example.com"])
    with pytest.raises(ValidationError, match="outside"):
        check(["email:example.org"], ["secret.example.com"])
    with pytest.raises(ValidationError, match="must exclude it too"):
        check(["shop.example.com"], [])
    with pytest.raises(ValidationError, match="outside"):
        build_child_ca(tree.policy, ca_name("wide"), software().public_key(), NOW, NOW + timedelta(days=1), 0,
                       parse_name_constraints([{"permitted": ["example.net"], "excluded": ["secret.example.com"]}]))


def test_leaves_under_the_tree_validate_and_names_outside_the_constraints_fail(tree: Tree, tmp_path: Path) -> None:
    leaf = build_leaf(tree.issuing, leaf_request("www.example.com", "api.example.com"), 0x1234_5678_9ABC_DEF0_1)
    validate_leaf_chain(leaf, tree.issuing, NOW)
    chain = (tree.issuing.cert, tree.policy.cert)
    result = openssl_verify(tmp_path, leaf, tree.root.cert, chain)
    assert result.returncode == 0 and ": OK" in result.stdout, result.stdout + result.stderr

    with pytest.raises(ValidationError, match="outside what CA"):
        build_leaf(tree.issuing, leaf_request("www.example.org"), 1 << 70)
    with pytest.raises(ValidationError, match="excluded"):
        build_leaf(tree.issuing, leaf_request("secret.example.com"), 1 << 70)
    for name in ("www.example.org", "x.secret.example.com"):
        forged = forged_leaf(tree.issuing, name)
        with pytest.raises(ValidationError):
            validate_leaf_chain(forged, tree.issuing, NOW)
        result = openssl_verify(tmp_path, forged, tree.root.cert, chain)
        assert result.returncode != 0 and "subtree violation" in result.stdout + result.stderr


# ---- the validator against broken chains -------------------------------------------------------------------

def test_validation_refuses_foreign_signatures_unknown_critical_extensions_and_non_signing_parents(tree: Tree) -> None:
    parents = (tree.policy.cert, tree.root.cert)
    stranger = make_root()
    foreign = forged_ca(stranger, "Signed elsewhere")
    with pytest.raises(ValidationError, match=r"not issued by|does not verify"):
        validate_ca_chain(foreign, parents, NOW)
    with pytest.raises(ValidationError, match="unknown critical extension"):
        validate_ca_chain(forged_ca(tree.policy, "Odd", critical_extra=True), parents, NOW)
    no_sign = forged_ca(tree.root, "No certSign", path_len=None, cert_sign=False)
    with pytest.raises(ValidationError, match="keyCertSign"):
        validate_ca_chain(no_sign, (tree.root.cert,), NOW)
    with pytest.raises(ValidationError, match="not valid at"):
        validate_ca_chain(tree.issuing.cert, parents, NOW + timedelta(days=6 * 365))
    with pytest.raises(ValidationError, match="is a CA, not an end-entity"):
        validate_leaf_chain(tree.issuing.cert, tree.policy, NOW)
    validate_ca_chain(tree.root.cert, (), NOW)  # a root alone: its own signature, CA flag, validity
    with pytest.raises(ValidationError, match="no issuer"):
        validate_ca_chain(tree.policy.cert, (), NOW)


def test_ed25519_chains_are_validated_by_our_rules(tmp_path: Path) -> None:
    # cryptography's verifier refuses Ed25519; our checks alone apply, and openssl agrees with them.
    root = make_root("Ed25519")
    policy = make_child(root, "ica-ed-policy", path_len=1, constraints=example_constraints(), spec="Ed25519")
    issuing = make_child(policy, "ica-ed-issuing", path_len=None, spec="Ed25519")
    result = openssl_verify(tmp_path, issuing.cert, root.cert, (policy.cert,))
    assert result.returncode == 0, result.stdout + result.stderr
    leaf = build_leaf(issuing, leaf_request("ed.example.com"), 1 << 80)
    validate_leaf_chain(leaf, issuing, NOW)
    with pytest.raises(ValidationError, match="pathLen 0"):
        validate_ca_chain(forged_ed25519_ca(issuing), (issuing.cert, *issuing.parents), NOW)


def forged_ed25519_ca(parent: IssuingCA) -> x509.Certificate:
    key = ed25519.Ed25519PrivateKey.generate()
    private = parent.signer.software_key()
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    return (
        x509.CertificateBuilder().subject_name(ca_name("ed under zero")).issuer_name(parent.cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=1)).not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, None)
    )
