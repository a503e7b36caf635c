"""ACME issuer connector rows: persisted client accounts (sealed keys) and ARI renewal windows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, delete, exists, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import aliased

from certctl.store.rows import Row, cached_statement
from certctl.store.schema import (
    acme_client_accounts,
    acme_renewal_info,
    certificate_versions,
    issuers,
    jobs,
    managed_certificates,
    renewal_policies,
)

_a = acme_client_accounts.c
_r = acme_renewal_info.c
_v = certificate_versions.c
_mc = managed_certificates.c


# ---- accounts ---------------------------------------------------------------------------------------
async def get_account(conn: AsyncConnection, issuer_id: str, directory_url: str) -> Row | None:
    stmt = select(acme_client_accounts).where(_a.issuer_id == issuer_id, _a.directory_url == directory_url)
    return (await conn.execute(stmt)).mappings().first()


async def insert_account_if_absent(conn: AsyncConnection, values: Mapping[str, Any]) -> None:
    """Insert unless (issuer, directory) has an account already (another process stored one first)."""
    dialect = conn.dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = insert(acme_client_accounts).values(dict(values)).on_conflict_do_nothing(
        index_elements=["issuer_id", "directory_url"])
    await conn.execute(stmt)


async def set_account_url(conn: AsyncConnection, issuer_id: str, directory_url: str, account_url: str,
                          now: datetime) -> None:
    await conn.execute(update(acme_client_accounts)
                       .where(_a.issuer_id == issuer_id, _a.directory_url == directory_url)
                       .values(account_url=account_url, updated_at=now))


# ---- ARI --------------------------------------------------------------------------------------------
async def replace_renewal_info(conn: AsyncConnection, values: Mapping[str, Any]) -> None:
    """The certificate's ARI row is its newest version's: older versions' rows go."""
    await conn.execute(delete(acme_renewal_info).where(_r.certificate_id == values["certificate_id"]))
    await conn.execute(acme_renewal_info.insert().values(dict(values)))


async def update_renewal_info(conn: AsyncConnection, version_id: str, values: Mapping[str, Any]) -> None:
    await conn.execute(update(acme_renewal_info).where(_r.version_id == version_id).values(dict(values)))


def _is_newest_version() -> Any:
    newer = aliased(certificate_versions)
    mine = aliased(certificate_versions)
    return and_(
        exists().where(mine.c.id == _r.version_id),
        ~exists().where(newer.c.certificate_id == _r.certificate_id,
                        newer.c.created_at > select(mine.c.created_at).where(mine.c.id == _r.version_id)
                        .scalar_subquery()),
    )


async def renewal_info_due_for_check(conn: AsyncConnection, *, now: datetime, statuses: Sequence[str],
                                     limit: int) -> list[Row]:
    """ARI rows to fetch again (next_check_at passed) of live certificates, with the version's PEM."""
    stmt = (
        select(_r.version_id, _r.certificate_id, _r.issuer_id, _r.ari_cert_id, _r.renew_at,
               _r.window_start, _r.window_end, _v.pem_chain)
        .join(certificate_versions, _v.id == _r.version_id)
        .join(managed_certificates, _mc.id == _r.certificate_id)
        .where(_r.next_check_at <= now, _mc.status.in_(list(statuses)), _mc.expires_at > now)
        .order_by(_r.next_check_at)
        .limit(limit)
    )
    return list((await conn.execute(stmt)).mappings())


async def renew_at_of(conn: AsyncConnection, certificate_id: str) -> datetime | None:
    """When ARI says to renew the certificate (its newest version's row), if the CA gave a window."""
    # Built once: the renewal scan asks this for every candidate, and aliasing a table costs more than the query.
    stmt = cached_statement(("acme_renew_at_of",), lambda: select(_r.renew_at).where(
        _r.certificate_id == bindparam("_certificate_id"), _is_newest_version()).limit(1))
    value: datetime | None = (await conn.execute(stmt, {"_certificate_id": certificate_id})).scalar_one_or_none()
    return value


async def ari_due_certificates(conn: AsyncConnection, *, now: datetime, statuses: Sequence[str],
                               issuing_types: Sequence[str], open_statuses: Sequence[str],
                               limit: int) -> list[Row]:
    """Certificates whose ARI moment has come (renew_at <= now, before expiry), renewable, auto-renewed,
    on an enabled issuer, without an open issuing job."""
    stmt = (
        select(_mc.id, _mc.expires_at, _r.renew_at, _r.window_start, _r.window_end)
        .join(managed_certificates, _mc.id == _r.certificate_id)
        .join(issuers, issuers.c.id == _mc.issuer_id)
        .join(renewal_policies, renewal_policies.c.id == _mc.renewal_policy_id)
        .where(
            _r.renew_at <= now, _mc.expires_at > now, _mc.status.in_(list(statuses)),
            issuers.c.enabled.is_(True), renewal_policies.c.auto_renew.is_(True), _is_newest_version(),
            ~exists().where(jobs.c.certificate_id == _mc.id, jobs.c.type.in_(list(issuing_types)),
                            jobs.c.status.in_(list(open_statuses))),
        )
        .order_by(_r.renew_at, _mc.id)
        .limit(limit)
    )
    return list((await conn.execute(stmt)).mappings())


# ---- revocation at the CA -----------------------------------------------------------------------------
async def revocations_to_notify(conn: AsyncConnection, certificate_id: str) -> list[Row]:
    """Revocations of a certificate's outside-CA versions that the CA has not been told about, with the PEM."""
    from certctl.store.schema import certificate_revocations

    rv = certificate_revocations.c
    stmt = (
        select(rv.id, rv.issuer_id, rv.serial_number, rv.reason_code, rv.version_id, _v.pem_chain)
        .join(certificate_versions, _v.id == rv.version_id)
        .where(rv.certificate_id == certificate_id, rv.issuer_notified.is_(False), rv.ca_id.is_(None))
        .order_by(rv.created_at, rv.id)
    )
    return list((await conn.execute(stmt)).mappings())


async def newest_version_pem(conn: AsyncConnection, certificate_id: str) -> Row | None:
    stmt = select(_v.id, _v.ca_id, _v.pem_chain).where(_v.certificate_id == certificate_id) \
        .order_by(_v.created_at.desc(), _v.id.desc()).limit(1)
    return (await conn.execute(stmt)).mappings().first()


async def certificates_with_unnotified_revocations(conn: AsyncConnection, *, issuer_types: Sequence[str],
                                                   since: datetime, limit: int) -> list[str]:
    """Certificates with revocations an outside CA (of these issuer types) has not accepted yet, made since `since`."""
    from certctl.store.schema import certificate_revocations

    rv = certificate_revocations.c
    stmt = (
        select(rv.certificate_id)
        .join(issuers, issuers.c.id == rv.issuer_id)
        .where(rv.issuer_notified.is_(False), rv.ca_id.is_(None), rv.certificate_id.is_not(None),
               rv.created_at >= since, issuers.c.type.in_(list(issuer_types)))
        .group_by(rv.certificate_id)
        .order_by(rv.certificate_id)
        .limit(limit)
    )
    return [str(r[0]) for r in (await conn.execute(stmt)).all()]
