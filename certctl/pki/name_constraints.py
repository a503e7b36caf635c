"""RFC 5280 §4.2.1.10 name constraints, checked on a leaf's names before it is signed.

Every CA above the leaf that carries NameConstraints is applied: a name of a constrained type
must fall in one of the permitted subtrees of its type (when there are any) and in none of the
excluded ones. DNS, IP, email (rfc822Name) and URI hosts are understood; a CA that constrains a
type we cannot evaluate (directoryName, otherName) refuses names of that type rather than guess.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from cryptography import x509

from certctl.domain.errors import ValidationError


def _dns_within(name: str, base: str) -> bool:
    name, base = name.lower().rstrip("."), base.lower().rstrip(".")
    if not base:
        return True  # an empty constraint matches every name
    if base.startswith("."):
        return name.endswith(base)
    return name == base or name.endswith("." + base)


def _email_within(address: str, base: str) -> bool:
    address, base = address.lower(), base.lower()
    if "@" in base:
        return address == base
    host = address.rsplit("@", 1)[-1]
    if base.startswith("."):
        return host.endswith(base)
    return host == base


def _uri_within(uri: str, base: str) -> bool:
    host = (urlsplit(uri).hostname or "").lower()
    if not host:
        return False
    if base.startswith("."):
        return host.endswith(base.lower())
    return host == base.lower()


def _ip_within(address: ipaddress.IPv4Address | ipaddress.IPv6Address, net: object) -> bool:
    return isinstance(net, ipaddress.IPv4Network | ipaddress.IPv6Network) and address.version == net.version \
        and address in net


def name_within(name: x509.GeneralName, subtree: x509.GeneralName) -> bool | None:
    """True/False when `subtree` applies to the name's type, None when it constrains another type."""
    if isinstance(name, x509.DNSName) and isinstance(subtree, x509.DNSName):
        return _dns_within(name.value.removeprefix("*."), subtree.value)
    if isinstance(name, x509.RFC822Name) and isinstance(subtree, x509.RFC822Name):
        return _email_within(name.value, subtree.value)
    if isinstance(name, x509.UniformResourceIdentifier) and isinstance(subtree, x509.UniformResourceIdentifier):
        return _uri_within(name.value, subtree.value)
    if isinstance(name, x509.IPAddress) and isinstance(subtree, x509.IPAddress):
        if isinstance(name.value, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return _ip_within(name.value, subtree.value)
        return False
    if type(name) is type(subtree):
        return False  # same type we cannot evaluate: never counts as permitted
    return None


def _check_one(name: x509.GeneralName, constraints: x509.NameConstraints, ca_label: str) -> None:
    for subtree in constraints.excluded_subtrees or ():
        if name_within(name, subtree):
            raise ValidationError(f"name constraints: {_show(name)} is excluded by {ca_label} ({_show(subtree)})")
    permitted = [s for s in constraints.permitted_subtrees or () if type(s) is type(name)]
    if permitted and not any(name_within(name, s) for s in permitted):
        allowed = ", ".join(_show(s) for s in permitted)
        raise ValidationError(f"name constraints: {_show(name)} is outside what {ca_label} permits ({allowed})")


def check_names(names: Iterable[x509.GeneralName], cas: Sequence[x509.Certificate]) -> None:
    """Raise ValidationError naming the first leaf name that a CA in `cas` does not allow."""
    names = list(names)
    for ca in cas:
        try:
            constraints = ca.extensions.get_extension_for_class(x509.NameConstraints).value
        except x509.ExtensionNotFound:
            continue
        label = f"CA '{ca.subject.rfc4514_string()}'"
        for name in names:
            _check_one(name, constraints, label)


def subtree_is_within(child: x509.GeneralName, parent_subtrees: Sequence[x509.GeneralName]) -> bool:
    """Whether a child CA's permitted subtree lies inside one of the parent's permitted subtrees."""
    same_type = [p for p in parent_subtrees if type(p) is type(child)]
    if not same_type:
        return True  # the parent does not constrain this type
    if isinstance(child, x509.IPAddress) and isinstance(child.value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        net = child.value
        return any(
            isinstance(p.value, type(net)) and net.subnet_of(p.value)  # type: ignore[arg-type]  # same version
            for p in same_type if isinstance(p, x509.IPAddress)
        )
    if isinstance(child, x509.DNSName):
        return any(_dns_subtree_within(child.value.lower(), p.value.lower()) for p in same_type)
    if isinstance(child, x509.UniformResourceIdentifier):
        return any(_uri_subtree_within(child.value.lower(), p.value.lower()) for p in same_type)
    if isinstance(child, x509.RFC822Name):
        return any(_email_within(child.value if "@" in child.value else "x@" + child.value.lstrip("."), p.value)
                   for p in same_type)
    return False


def _dns_subtree_within(child: str, parent: str) -> bool:
    """DNS subtrees: "x" is x and its subdomains, ".x" its subdomains only; is every name of child in parent?"""
    if not parent:
        return True
    if parent.startswith("."):
        return child.endswith(parent)
    base = child[1:] if child.startswith(".") else child
    return base == parent or base.endswith("." + parent)


def _uri_subtree_within(child: str, parent: str) -> bool:
    """URI host specs (RFC 5280 §4.2.1.10): "x" is exactly host x, ".x" any host below x."""
    if parent.startswith("."):
        return child.endswith(parent)
    return child == parent


def _show(name: x509.GeneralName) -> str:
    kind = {x509.DNSName: "DNS", x509.IPAddress: "IP", x509.RFC822Name: "email",
            x509.UniformResourceIdentifier: "URI"}.get(type(name), type(name).__name__)
    return f"{kind}:{name.value}"
