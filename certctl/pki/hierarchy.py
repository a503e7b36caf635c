"""Child CA certificates of a local CA tree, and RFC 5280 path validation of what we sign.

`build_child_ca` makes a subordinate CA certificate under an `IssuingCA` and enforces the rules a
child must keep towards every CA above it:
- basicConstraints CA:TRUE (critical) with a pathLenConstraint lower than the parent's, and no CA
  child at all under a parent whose pathLen is 0 (RFC 5280 §4.2.1.9);
- keyUsage keyCertSign | cRLSign | digitalSignature (critical, §4.2.1.3);
- SKI by the §4.2.1.2 method (1), AKI = the parent's SKI;
- NameConstraints (critical, §4.2.1.10) whose permitted subtrees lie inside every ancestor's and
  whose excluded subtrees cover every ancestor's;
- the *parent's* CRL distribution point and AIA: the parent publishes the status of its children;
- validity inside the parent's (a child never outlives the CA that vouches for it).

`validate_ca_chain` and `validate_leaf_chain` run path validation before anything is stored or
handed out: our own RFC 5280 §6.1 checks (signatures, validity, basicConstraints, pathLen *counting
the new CA as an intermediate*, keyUsage, name constraints, unknown critical extensions), then
`cryptography`'s verifier (webpki CA rules) as a second, independent implementation. The verifier
treats the target as an end entity, so it cannot see that a CA under a pathLen-0 parent is useless;
and it refuses Ed25519, so chains with an Ed25519 key are checked by our rules alone.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509 import verification

from certctl.domain.errors import ConflictError, ValidationError
from certctl.pki.ca import CA_BACKDATE, IssuingCA, PublicationUrls, add_publication, ca_key_usage
from certctl.pki.name_constraints import check_names, subtree_is_within
from certctl.pki.serials import new_serial
from certctl.pki.signing import sign_certificate

DEFAULT_CHILD_TTL = timedelta(days=5 * 365)

# Critical extensions a relying party (and we) understand; any other critical one fails the path (§6.1.4 (o)).
_KNOWN_CRITICAL = (
    x509.BasicConstraints, x509.KeyUsage, x509.NameConstraints, x509.SubjectAlternativeName,
    x509.ExtendedKeyUsage, x509.PolicyConstraints, x509.InhibitAnyPolicy, x509.CertificatePolicies,
    x509.TLSFeature,
)


# ---- name constraints: wire form <-> X.509 ---------------------------------------------------------
def _general_name(text: str) -> x509.GeneralName:
    """One constraint entry. `DNS:`, `IP:`, `email:` and `URI:` prefixes (openssl's spelling) pick the
    type; without one, a CIDR is an IP range, something with `@` a mailbox, anything else a DNS subtree."""
    raw = text.strip()
    if not raw:
        raise ValidationError("name_constraints: an entry is empty")
    kind, sep, value = raw.partition(":")
    kind = kind.strip().lower() if sep else ""
    if kind not in ("dns", "ip", "email", "uri"):
        kind, value = "", raw
    value = value.strip()
    if kind == "" and "/" in value:
        kind = "ip"
    elif kind == "" and "@" in value:
        kind = "email"
    try:
        if kind == "ip":
            return x509.IPAddress(ipaddress.ip_network(value, strict=True))
        if kind == "email":
            if not value or any(c.isspace() for c in value) or value.count("@") > 1:
                raise ValueError("not a mailbox or mail domain")
            return x509.RFC822Name(value.lower())
        if kind == "uri":
            host = value.lower()
            if not host or "/" in host or any(c.isspace() for c in host):
                raise ValueError("a URI constraint is a host or .domain, not a URL")
            return x509.UniformResourceIdentifier(host)
        host = value.lower().rstrip(".")
        labels = host.lstrip(".").split(".")
        if not host or host.startswith("*") or any(not label or len(label) > 63 for label in labels) \
                or any(not (c.isalnum() or c in "-_") for label in labels for c in label):
            raise ValueError("not a DNS name or .domain")
        return x509.DNSName(host)
    except ValueError as exc:
        raise ValidationError(f"name_constraints: '{raw[:100]}' is not a valid constraint ({exc})") from None


def _text(name: x509.GeneralName) -> str:
    if isinstance(name, x509.IPAddress):
        return str(name.value)
    if isinstance(name, x509.RFC822Name):
        return f"email:{name.value}"
    if isinstance(name, x509.UniformResourceIdentifier):
        return f"URI:{name.value}"
    return str(name.value)


def parse_name_constraints(items: Iterable[Mapping[str, Sequence[str]]]) -> x509.NameConstraints | None:
    """`[{permitted: [...], excluded: [...]}, ...]` (the reference's shape) as one NameConstraints, or None."""
    permitted: list[x509.GeneralName] = []
    excluded: list[x509.GeneralName] = []
    for item in items:
        for text in item.get("permitted") or ():
            name = _general_name(text)
            if name not in permitted:
                permitted.append(name)
        for text in item.get("excluded") or ():
            name = _general_name(text)
            if name not in excluded:
                excluded.append(name)
    if not permitted and not excluded:
        return None
    return x509.NameConstraints(permitted_subtrees=permitted or None, excluded_subtrees=excluded or None)


def name_constraints_json(constraints: x509.NameConstraints | None) -> list[dict[str, list[str]]]:
    if constraints is None:
        return []
    return [{"permitted": [_text(n) for n in constraints.permitted_subtrees or ()],
             "excluded": [_text(n) for n in constraints.excluded_subtrees or ()]}]


def name_constraints_of(cert: x509.Certificate) -> x509.NameConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


def _key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


# ---- the rules a child keeps towards its ancestors -------------------------------------------------
def child_path_len(parent: x509.Certificate, requested: int | None) -> int | None:
    """The child's pathLenConstraint: lower than the parent's (default parent - 1), §4.2.1.9."""
    if requested is not None and requested < 0:
        raise ValidationError("path_len_constraint: must be 0 or more")
    bc = _basic_constraints(parent)
    if bc is None or not bc.ca:
        raise ValidationError(f"CA '{parent.subject.rfc4514_string()}' is not a CA certificate and cannot sign CAs")
    limit = bc.path_length
    if limit is None:
        return requested
    if limit == 0:
        raise ValidationError(
            f"path_len_constraint: the parent CA '{parent.subject.rfc4514_string()}' has pathLen 0 and may only "
            "sign end-entity certificates, not CAs"
        )
    if requested is None:
        return limit - 1
    if requested >= limit:
        raise ValidationError(
            f"path_len_constraint: {requested} must be lower than the parent's pathLen {limit} (RFC 5280 §4.2.1.9)"
        )
    return requested


def _covered(name: x509.GeneralName, by: Sequence[x509.GeneralName]) -> bool:
    same = [b for b in by if type(b) is type(name)]
    return name in same or (bool(same) and subtree_is_within(name, same))


def check_child_name_constraints(child: x509.NameConstraints | None, ancestors: Sequence[x509.Certificate]) -> None:
    """Permitted ⊆ every ancestor's permitted, excluded ⊇ every ancestor's excluded (§4.2.1.10).

    A child without NameConstraints is not checked: the ancestors' constraints still bind every path
    through it (§6.1.4 (g)), so it cannot widen them.
    """
    if child is None:
        return
    for ancestor in ancestors:
        theirs = name_constraints_of(ancestor)
        if theirs is None:
            continue
        label = ancestor.subject.rfc4514_string()
        parent_permitted = list(theirs.permitted_subtrees or ())
        for name in child.permitted_subtrees or ():
            if name not in parent_permitted and not subtree_is_within(name, parent_permitted):
                allowed = ", ".join(_text(p) for p in parent_permitted if type(p) is type(name))
                raise ValidationError(
                    f"name_constraints: permitted '{_text(name)}' is outside what CA '{label}' permits ({allowed})"
                )
        ours_excluded = list(child.excluded_subtrees or ())
        for name in theirs.excluded_subtrees or ():
            if not _covered(name, ours_excluded):
                raise ValidationError(
                    f"name_constraints: CA '{label}' excludes '{_text(name)}'; the child must exclude it too"
                )


def child_validity(parent: x509.Certificate, now: datetime, ttl: timedelta | None) -> tuple[datetime, datetime]:
    """Backdated a little (never before the parent), `ttl` long (5 years by default), capped at the parent's end."""
    if ttl is not None and ttl <= timedelta(0):
        raise ValidationError("ttl_days: must be at least 1")
    if parent.not_valid_after_utc <= now:
        raise ConflictError(f"the parent CA '{parent.subject.rfc4514_string()}' has expired")
    not_before = max(now - CA_BACKDATE, parent.not_valid_before_utc)
    not_after = min(now + (ttl or DEFAULT_CHILD_TTL), parent.not_valid_after_utc)
    return not_before, not_after


def build_child_ca(
    parent: IssuingCA,
    subject: x509.Name,
    public_key: CertificatePublicKeyTypes,
    not_before: datetime,
    not_after: datetime,
    path_len: int | None,
    name_constraints: x509.NameConstraints | None,
    *,
    serial: int | None = None,
    urls: PublicationUrls | None = None,
) -> x509.Certificate:
    """A subordinate CA certificate signed by `parent` (see the module docstring for its content and rules)."""
    if len(subject) == 0:
        raise ValidationError("subject: a CA certificate needs a non-empty subject (RFC 5280 §4.1.2.6)")
    expected = child_path_len(parent.cert, path_len)
    if path_len != expected:  # None (unlimited) under a constrained parent; child_path_len gives the default
        raise ValidationError(f"path_len_constraint: the parent's pathLen requires a value of at most {expected}")
    check_child_name_constraints(name_constraints, (parent.cert, *parent.parents))
    if not_after <= not_before:
        raise ValidationError("the CA certificate's validity ends before it begins")
    if not_before < parent.cert.not_valid_before_utc or not_after > parent.cert.not_valid_after_utc:
        raise ValidationError("the CA certificate's validity must lie inside its parent's")
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(parent.cert.subject)
        .public_key(public_key)
        .serial_number(serial if serial is not None else new_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_len), critical=True)
        .add_extension(ca_key_usage(), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(parent.ski), critical=False)
    )
    if name_constraints is not None:
        builder = builder.add_extension(name_constraints, critical=True)
    builder = add_publication(builder, urls if urls is not None else parent.urls)
    return sign_certificate(builder, parent.signer)


# ---- path validation -------------------------------------------------------------------------------
def _label(cert: x509.Certificate) -> str:
    return f"'{cert.subject.rfc4514_string() or '(empty subject)'}'"


def _sans(cert: x509.Certificate) -> list[x509.GeneralName]:
    try:
        return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


def _self_issued(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer


def _check_path(chain: Sequence[x509.Certificate], at: datetime, *, target_is_ca: bool) -> None:
    """RFC 5280 §6.1 over `chain` = [target, its issuer, ..., trust anchor], raising ValidationError."""
    target, anchor = chain[0], chain[-1]
    for cert in chain:
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise ValidationError(f"certificate {_label(cert)} is not valid at {at.isoformat()}")  # §6.1.3 (a)(2)
        for ext in cert.extensions:
            if ext.critical and not isinstance(ext.value, _KNOWN_CRITICAL):
                raise ValidationError(
                    f"certificate {_label(cert)} has an unknown critical extension {ext.oid.dotted_string}")
    if len(chain) == 1 and not _self_issued(anchor):
        raise ValidationError(f"certificate {_label(anchor)} is not self-issued and has no issuer to chain to")
    if _self_issued(anchor):
        _verify_signature(anchor, anchor)
    for index, cert in enumerate(chain[:-1]):
        issuer = chain[index + 1]
        _verify_signature(cert, issuer)
        try:
            aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
            ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        except x509.ExtensionNotFound:
            aki = ski = None
        if aki is not None and ski is not None and aki != ski:
            raise ValidationError(f"certificate {_label(cert)}: its AKI does not match the SKI of {_label(issuer)}")
    # Not an RFC 5280 rule, but ours: a certificate never outlives the CA that signed it.
    if len(chain) > 1 and target.not_valid_after_utc > chain[1].not_valid_after_utc:
        raise ValidationError(f"certificate {_label(target)} outlives its CA {_label(chain[1])}")
    # Every issuer is a CA allowed to sign certificates, and pathLen counts the intermediates below it
    # (§6.1.4 (k), (l), (m), (n)). A new CA is counted too: it exists to sign further certificates.
    below = 1 if target_is_ca and not _self_issued(target) else 0
    for index in range(1, len(chain)):
        issuer = chain[index]
        bc = _basic_constraints(issuer)
        if bc is None or not bc.ca:
            raise ValidationError(f"certificate {_label(issuer)} is not a CA (basicConstraints CA:TRUE missing)")
        usage = _key_usage(issuer)
        if usage is not None and not usage.key_cert_sign:
            raise ValidationError(f"CA {_label(issuer)} may not sign certificates (keyUsage without keyCertSign)")
        if bc.path_length is not None and below > bc.path_length:
            raise ValidationError(
                f"CA {_label(issuer)} has pathLen {bc.path_length} but {below} CA certificate(s) would follow it"
            )
        if not _self_issued(issuer):
            below += 1
    target_bc = _basic_constraints(target)
    if target_is_ca:
        if target_bc is None or not target_bc.ca:
            raise ValidationError(f"certificate {_label(target)} is not a CA (basicConstraints CA:TRUE missing)")
        usage = _key_usage(target)
        if usage is not None and not usage.key_cert_sign:
            raise ValidationError(f"CA {_label(target)} may not sign certificates (keyUsage without keyCertSign)")
    elif target_bc is not None and target_bc.ca:
        raise ValidationError(f"certificate {_label(target)} is a CA, not an end-entity certificate")
    # Name constraints of each CA bind the names of every certificate below it (§6.1.3 (b), (c)).
    # A self-issued intermediate (key rollover) is exempt as a subject, not as a source of constraints.
    for index, cert in enumerate(chain[:-1]):
        names = _sans(cert)
        if names and (index == 0 or not _self_issued(cert)):
            check_names(names, chain[index + 1:])


def _verify_signature(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    try:
        cert.verify_directly_issued_by(issuer)
    except ValueError:
        raise ValidationError(f"certificate {_label(cert)} was not issued by {_label(issuer)}") from None
    except (InvalidSignature, TypeError):
        raise ValidationError(f"the signature on {_label(cert)} does not verify with the key of {_label(issuer)}") \
            from None


def _webpki_capable(chain: Sequence[x509.Certificate]) -> bool:
    return not any(isinstance(c.public_key(), ed25519.Ed25519PublicKey) for c in chain)


def _require_ca(_policy: verification.Policy, cert: x509.Certificate, ext: Any) -> None:
    if not isinstance(ext, x509.BasicConstraints) or not ext.ca:
        raise ValueError("the new certificate is not a CA")


def _require_cert_sign(_policy: verification.Policy, cert: x509.Certificate, ext: Any) -> None:
    if not isinstance(ext, x509.KeyUsage) or not ext.key_cert_sign:
        raise ValueError("the new CA certificate lacks keyUsage keyCertSign")


def _forbid_ca(_policy: verification.Policy, cert: x509.Certificate, ext: Any) -> None:
    if isinstance(ext, x509.BasicConstraints) and ext.ca:
        raise ValueError("an end-entity certificate must not be a CA")


def _verify_with_cryptography(chain: Sequence[x509.Certificate], at: datetime, *, target_is_ca: bool) -> None:
    if len(chain) < 2 or not _webpki_capable(chain):
        return
    if target_is_ca:
        ee = (verification.ExtensionPolicy.permit_all()
              .require_present(x509.BasicConstraints, verification.Criticality.CRITICAL, _require_ca)
              .require_present(x509.KeyUsage, verification.Criticality.CRITICAL, _require_cert_sign))
    else:
        ee = verification.ExtensionPolicy.permit_all().may_be_present(
            x509.BasicConstraints, verification.Criticality.AGNOSTIC, _forbid_ca)
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store([chain[-1]]))
        .time(at)
        .extension_policies(ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee)
        .build_client_verifier()
    )
    try:
        verified = verifier.verify(chain[0], list(chain[1:-1]))
    except verification.VerificationError as exc:
        raise ValidationError(f"RFC 5280 path validation failed for {_label(chain[0])}: {exc}") from None
    if list(verified.chain) != list(chain):
        raise ValidationError(f"certificate {_label(chain[0])} does not chain through the expected CAs")


def validate_ca_chain(cert: x509.Certificate, parents: Sequence[x509.Certificate], at: datetime) -> None:
    """Validate a new CA certificate up to the last of `parents` (its trust anchor); `parents` empty: a root."""
    chain = [cert, *parents]
    _check_path(chain, at, target_is_ca=True)
    _verify_with_cryptography(chain, at, target_is_ca=True)


def validate_leaf_chain(leaf: x509.Certificate, ca: IssuingCA, at: datetime) -> None:
    """Validate an end-entity certificate through `ca` and its parents, name constraints included."""
    chain = [leaf, ca.cert, *ca.parents]
    _check_path(chain, at, target_is_ca=False)
    _verify_with_cryptography(chain, at, target_is_ca=False)
