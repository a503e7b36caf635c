"""CRLs: the DER writer against `cryptography`'s builder and `openssl crl`, and the CRL cache of the status service."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certctl.pki.crl import RevokedEntry, build_crl, crl_etag, keep_on_crl
from certctl.pki.signers import hash_for
from certctl.store import status_repo
from tests.conftest import Api, make_settings, start_api, stop_api
from tests.pki_helpers import openssl
from tests.status_helpers import TokenLikeSigner, local_ca, memory_ca, revoke_row, write_pem

REASONS = {
    1: x509.ReasonFlags.key_compromise, 2: x509.ReasonFlags.ca_compromise, 3: x509.ReasonFlags.affiliation_changed,
    4: x509.ReasonFlags.superseded, 5: x509.ReasonFlags.cessation_of_operation, 6: x509.ReasonFlags.certificate_hold,
    8: x509.ReasonFlags.remove_from_crl, 9: x509.ReasonFlags.privilege_withdrawn, 10: x509.ReasonFlags.aa_compromise,
}


def _entries(now: datetime, count: int) -> list[RevokedEntry]:
    # Serials of every shape: 1 octet, top bit set (needs a leading zero octet), odd hex length, 127 bits.
    fixed = [1, 0x7F, 0x80, 0xFF, 0x0ABC, 0x00FF12, 1 << 63, (1 << 127) - 1, 0x0F_0000_0000_0001]
    serials = fixed + [secrets.randbits(127) >> (i % 13) or 1 for i in range(count - len(fixed))]
    codes = [0, 1, 2, 3, 4, 5, 6, 8, 9, 10]
    return [RevokedEntry(s, now - timedelta(minutes=i), codes[i % len(codes)]) for i, s in enumerate(serials)]


def _reference(ca_cert: x509.Certificate, key: object, entries: list[RevokedEntry], number: int, this: datetime,
               nxt: datetime, url: str, spec: str) -> x509.CertificateRevocationList:
    builder = x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject).last_update(this).next_update(nxt)
    for entry in entries:
        revoked = x509.RevokedCertificateBuilder().serial_number(entry.serial).revocation_date(entry.revoked_at)
        if entry.reason_code:
            revoked = revoked.add_extension(x509.CRLReason(REASONS[entry.reason_code]), critical=False)
        builder = builder.add_revoked_certificate(revoked.build())
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    builder = builder.add_extension(x509.CRLNumber(number), critical=False)
    builder = builder.add_extension(x509.IssuingDistributionPoint(
        full_name=[x509.UniformResourceIdentifier(url)], relative_name=None, only_contains_user_certs=False,
        only_contains_ca_certs=False, only_some_reasons=None, indirect_crl=False, only_contains_attribute_certs=False,
    ), critical=True)
    return builder.sign(key, hash_for(spec))  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", ["ECDSA-P256", "ECDSA-P384", "RSA-2048", "Ed25519"])
def test_der_writer_matches_the_cryptography_builder_byte_for_byte(spec: str) -> None:
    ca = memory_ca(spec)
    now = datetime.now(UTC).replace(microsecond=0)
    entries = _entries(now, 60)
    crl = build_crl(ca, entries, number=7, this_update=now, next_update=now + timedelta(hours=24))
    key = ca.signer.software_key()
    assert ca.urls.crl is not None
    reference = _reference(ca.cert, key, entries, 7, now, now + timedelta(hours=24), ca.urls.crl, spec)
    ours = x509.load_der_x509_crl(crl.der)
    assert ours.tbs_certlist_bytes == reference.tbs_certlist_bytes
    assert ours.signature_algorithm_oid == reference.signature_algorithm_oid
    assert ours.is_signature_valid(ca.cert.public_key())  # type: ignore[arg-type]
    if spec in ("Ed25519", "RSA-2048"):  # deterministic signatures: the whole CRL is the same
        assert crl.der == reference.public_bytes(serialization.Encoding.DER)
    assert crl.entries == 60 and crl.number == 7


def test_empty_crl_has_no_revoked_list_and_dates_after_2049_are_generalized_time() -> None:
    ca = memory_ca()
    start = datetime(2049, 12, 31, 12, 0, tzinfo=UTC)
    crl = build_crl(ca, [], number=1, this_update=start, next_update=start + timedelta(days=1))
    key = ca.signer.software_key()
    assert ca.urls.crl is not None
    reference = _reference(ca.cert, key, [], 1, start, start + timedelta(days=1), ca.urls.crl, "ECDSA-P256")
    assert x509.load_der_x509_crl(crl.der).tbs_certlist_bytes == reference.tbs_certlist_bytes
    assert b"\x18\x0f20500101120000Z" in crl.der  # nextUpdate in 2050: GeneralizedTime (RFC 5280 §5.1.2.5)
    assert len(x509.load_der_x509_crl(crl.der)) == 0


def test_openssl_reads_number_reasons_entries_and_distribution_point(tmp_path: Path) -> None:
    ca = memory_ca()
    now = datetime.now(UTC).replace(microsecond=0)
    entries = [RevokedEntry(0x0ABC, now - timedelta(hours=1), 1), RevokedEntry(0x00FF12, now, 0),
               RevokedEntry(0x80, now, 4)]
    crl = build_crl(ca, entries, number=42, this_update=now, next_update=now + timedelta(hours=24))
    (tmp_path / "ca.crl").write_bytes(crl.der)
    text = openssl("crl", "-inform", "DER", "-in", str(tmp_path / "ca.crl"), "-noout", "-text").stdout
    assert "Version 2 (0x1)" in text
    assert re.search(r"X509v3 CRL Number:\s*\n\s*42\b", text), text
    assert re.search(r"X509v3 Issuing Distribution Point: critical\s*\n\s*Full Name:\s*\n\s*URI:" +
                     re.escape(str(ca.urls.crl)), text), text
    assert "X509v3 Authority Key Identifier" in text
    blocks = text.split("Serial Number: ")[1:]
    assert [b.split()[0] for b in blocks] == ["0ABC", "FF12", "80"]
    assert "Key Compromise" in blocks[0]
    assert "CRL entry extensions" not in blocks[1]  # unspecified: no reason extension (RFC 5280 §5.3.1)
    assert "Superseded" in blocks[2]
    write_pem(tmp_path / "ca.pem", ca.cert)
    verified = openssl("crl", "-inform", "DER", "-in", str(tmp_path / "ca.crl"), "-CAfile", str(tmp_path / "ca.pem"),
                       "-noout")
    assert "verify OK" in verified.stdout + verified.stderr


def test_large_crl_uses_long_form_lengths_and_parses() -> None:
    ca = memory_ca()
    now = datetime.now(UTC).replace(microsecond=0)
    entries = _entries(now, 3000)
    crl = build_crl(ca, entries, number=3, this_update=now, next_update=now + timedelta(hours=24))
    parsed = x509.load_der_x509_crl(crl.der)
    assert len(parsed) == 3000 and len(crl.der) > 65536
    assert {r.serial_number for r in parsed} == {e.serial for e in entries}
    found = parsed.get_revoked_certificate_by_serial_number(0x00FF12)
    assert found is not None and found.revocation_date_utc == entries[5].revoked_at


def test_a_signer_without_a_software_key_signs_the_crl_through_sign() -> None:
    ca = memory_ca(token=True)
    now = datetime.now(UTC).replace(microsecond=0)
    crl = build_crl(ca, _entries(now, 20), number=1, this_update=now, next_update=now + timedelta(hours=1))
    assert isinstance(ca.signer, TokenLikeSigner) and ca.signer.calls == 1
    assert x509.load_der_x509_crl(crl.der).is_signature_valid(ca.cert.public_key())  # type: ignore[arg-type]


def test_bad_inputs_are_refused() -> None:
    ca = memory_ca()
    now = datetime.now(UTC)
    with pytest.raises(ValueError, match="nextUpdate"):
        build_crl(ca, [], number=1, this_update=now, next_update=now)
    with pytest.raises(ValueError, match="serial"):
        build_crl(ca, [RevokedEntry(-5, now, 1)], number=1, this_update=now, next_update=now + timedelta(hours=1))


def test_which_revocations_stay_on_the_crl() -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    assert keep_on_crl(not_after=now + timedelta(days=1), short_lived=False, this_update=now)
    assert not keep_on_crl(not_after=now + timedelta(days=1), short_lived=True, this_update=now)
    # Expired a little: stays for one CRL validity after expiry (RFC 5280 §3.3), then leaves.
    assert keep_on_crl(not_after=now - timedelta(hours=23), short_lived=False, this_update=now)
    assert not keep_on_crl(not_after=now - timedelta(hours=25), short_lived=False, this_update=now)
    assert keep_on_crl(not_after=None, short_lived=False, this_update=now)


def test_etag_is_weak_and_names_the_content() -> None:
    assert re.fullmatch(r'W/"[0-9a-f]{32}"', crl_etag(b"abc"))
    assert crl_etag(b"abc") != crl_etag(b"abd")


# ---- the CRL cache (status service), on both back ends -----------------------------------------------

async def test_crl_number_grows_per_generation_and_after_a_restart(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path / "data")
    api, lifespan = await start_api(settings)
    try:
        ca = await local_ca(api)
        status = api.services.status
        first = await status.crl_for(ca.id)
        assert first.number == 1
        assert (await status.crl_for("iss-local")).number == 1  # fresh: served from the cache, not rebuilt
        await revoke_row(api, ca, 0x0ABC)
        second, built = await status._regenerate(ca.id, "revocation")
        assert built and second.number == 2
        assert x509.load_der_x509_crl(second.der).get_revoked_certificate_by_serial_number(0x0ABC) is not None
    finally:
        await stop_api(api, lifespan)
    api, lifespan = await start_api(settings)  # a new process on the same database
    try:
        ca = await local_ca(api)
        await revoke_row(api, ca, 0x0DEF, code=4)
        third = await api.services.status.crl_for(ca.id)  # the count changed: rebuilt on read
        assert third.number == 3
        parsed = x509.load_der_x509_crl(third.der)
        assert parsed.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 3
        assert {r.serial_number for r in parsed} == {0x0ABC, 0x0DEF}
        # The cache row lost (an operator's cleanup): the event log keeps the number going up.
        async with api.services.ctx.db.transaction() as conn:
            from sqlalchemy import delete

            from certctl.store.schema import crl_cache
            await conn.execute(delete(crl_cache))
        api.services.status._crls.clear()
        assert (await api.services.status.crl_for(ca.id)).number == 4
        async with api.services.ctx.db.read() as conn:
            events = await status_repo.recent_crl_events(conn, ca.id, limit=10)
        assert [e["crl_number"] for e in events] == [4, 3, 2, 1]
        assert {e["trigger"] for e in events} == {"on_read", "revocation"}
    finally:
        await stop_api(api, lifespan)


async def test_crl_leaves_out_short_lived_and_long_expired_certificates(api: Api) -> None:
    ca = await local_ca(api)
    now = datetime.now(UTC)
    await revoke_row(api, ca, 0x11, code=1)
    await revoke_row(api, ca, 0x12, short_lived=True)
    await revoke_row(api, ca, 0x13, not_after=now - timedelta(days=3))  # expired long ago: off the list
    await revoke_row(api, ca, 0x14, not_after=now - timedelta(hours=2))  # expired just now: still listed
    answer = await api.services.status.crl_for(ca.id)
    assert {r.serial_number for r in x509.load_der_x509_crl(answer.der)} == {0x11, 0x14}
    async with api.services.ctx.db.read() as conn:
        meta = await status_repo.crl_meta(conn, ca.id)
    assert meta is not None and meta["entries"] == 2 and meta["revocations_seen"] == 4


async def test_concurrent_readers_build_the_crl_once(api: Api) -> None:
    import asyncio

    ca = await local_ca(api)
    answers = await asyncio.gather(*(api.services.status.crl_for(ca.id) for _ in range(8)))
    assert {a.number for a in answers} == {1}
    async with api.services.ctx.db.read() as conn:
        events = await status_repo.recent_crl_events(conn, ca.id, limit=10)
    assert len(events) == 1


async def test_revoked_hook_rebuilds_in_the_background_and_scheduler_tick(api: Api) -> None:
    ca = await local_ca(api)
    status = api.services.status
    assert (await status.crl_for(ca.id)).number == 1
    await revoke_row(api, ca, 0x0F00, code=1)
    await status.revoked({ca.id})
    await status.settle()
    async with api.services.ctx.db.read() as conn:
        meta = await status_repo.crl_meta(conn, ca.id)
    assert meta is not None and meta["crl_number"] == 2 and meta["entries"] == 1
    # A scheduler tick right after: nothing is due, nothing is rebuilt.
    assert await status.regenerate_all() == {"generated": 0, "fresh": 1, "failed": 0}


async def test_scheduler_rebuilds_crls_older_than_the_interval(database_url: str, tmp_path: Path) -> None:
    from certctl.domain.clock import FakeClock

    clock = FakeClock(datetime.now(UTC))
    api, lifespan = await start_api(make_settings(database_url, tmp_path / "data",
                                                  extra={"CERTCTL_CRL_GENERATION_INTERVAL": "30m"}), clock=clock)
    try:
        ca = await local_ca(api)
        status = api.services.status
        assert status.crl_interval == timedelta(minutes=30)
        assert await status.regenerate_all() == {"generated": 1, "fresh": 0, "failed": 0}
        clock.advance(timedelta(minutes=20))
        assert await status.regenerate_all() == {"generated": 0, "fresh": 1, "failed": 0}
        clock.advance(timedelta(minutes=8))  # 28 min: within the tick's 10% slack of 30 min
        assert await status.regenerate_all() == {"generated": 1, "fresh": 0, "failed": 0}
        answer = await status.crl_for(ca.id)
        assert answer.number == 2 and answer.next_update == answer.this_update + timedelta(hours=24)
        clock.advance(timedelta(minutes=31))  # a reader after the interval rebuilds too
        assert (await status.crl_for(ca.id)).number == 3
    finally:
        await stop_api(api, lifespan)


async def test_openssl_verify_with_crl_check_on_issued_certificates(database_url: str, tmp_path: Path) -> None:
    """Two leaves issued through jobs (server key generation), one revoked through the API."""
    from certctl.services.issuance import run_due_issuing_jobs
    from tests import factories
    from tests.pki_helpers import split_pem
    from tests.status_helpers import wire_revocation_hook

    settings = make_settings(database_url, tmp_path / "data", keygen_mode="server", public_url="https://pki.test")
    api, lifespan = await start_api(settings)
    try:
        wire_revocation_hook(api)
        chains = []
        for _ in range(2):
            cert = await factories.seed_certificate(api)
            response = await api.admin.post(f"/api/v1/certificates/{cert['id']}/renew")
            assert response.status_code == 202, response.text
            await run_due_issuing_jobs(api.services.issuance)
            versions = (await api.admin.get(f"/api/v1/certificates/{cert['id']}/versions")).json()["data"]
            chains.append((cert["id"], versions[0]["pem_chain"]))
        response = await api.admin.post(f"/api/v1/certificates/{chains[0][0]}/revoke", json={"reason": "superseded"})
        assert response.status_code == 200, response.text
        await api.services.status.settle()
        blocks = split_pem(chains[0][1])
        (tmp_path / "ca.pem").write_text(blocks[-1])
        (tmp_path / "revoked.pem").write_text(blocks[0])
        (tmp_path / "good.pem").write_text(split_pem(chains[1][1])[0])
        leaf_cert = x509.load_pem_x509_certificate(blocks[0].encode())
        crl_url = leaf_cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value[0].full_name
        path = str(crl_url[0].value).removeprefix("https://pki.test")  # type: ignore[union-attr]
        response = await api.anon.get(path)
        assert response.status_code == 200 and response.headers["content-type"] == "application/pkix-crl"
        (tmp_path / "ca.crl").write_bytes(response.content)
        openssl("crl", "-inform", "DER", "-in", str(tmp_path / "ca.crl"), "-out", str(tmp_path / "crl.pem"))
        revoked = openssl("verify", "-crl_check", "-CAfile", str(tmp_path / "ca.pem"), "-CRLfile",
                          str(tmp_path / "crl.pem"), str(tmp_path / "revoked.pem"), check=False)
        assert revoked.returncode != 0 and "certificate revoked" in revoked.stdout + revoked.stderr
        good = openssl("verify", "-crl_check", "-CAfile", str(tmp_path / "ca.pem"), "-CRLfile",
                       str(tmp_path / "crl.pem"), str(tmp_path / "good.pem"), check=False)
        assert good.returncode == 0 and "good.pem: OK" in good.stdout, good.stdout + good.stderr
        text = openssl("crl", "-in", str(tmp_path / "crl.pem"), "-noout", "-text").stdout
        assert f"Serial Number: {leaf_cert.serial_number:X}" in text.replace("Serial Number: 0", "Serial Number: ")
        assert "Superseded" in text
    finally:
        await stop_api(api, lifespan)


def test_a_key_not_matching_the_ca_certificate_is_caught() -> None:
    from certctl.pki.signers import SignerError, SoftwareSigner

    ca = memory_ca()
    now = datetime.now(UTC)
    wrong = SoftwareSigner("mem:wrong", ec.generate_private_key(ec.SECP256R1()))
    bad = type(ca)(id=ca.id, issuer_id=ca.issuer_id, cert=ca.cert, parents=(), signer=wrong, urls=ca.urls)
    with pytest.raises(SignerError, match="does not hold the key"):
        build_crl(bad, [], number=1, this_update=now, next_update=now + timedelta(hours=1))
    token = TokenLikeSigner(ca.signer)  # type: ignore[arg-type]
    token.sign = lambda data: b"\x30\x06\x02\x01\x01\x02\x01\x01"  # type: ignore[method-assign]
    broken = type(ca)(id=ca.id, issuer_id=ca.issuer_id, cert=ca.cert, parents=(), signer=token, urls=ca.urls)
    with pytest.raises(SignerError, match="does not verify"):
        build_crl(broken, [], number=1, this_update=now, next_update=now + timedelta(hours=1))
