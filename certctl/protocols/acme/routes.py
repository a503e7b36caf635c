"""The ACME web front end (RFC 8555 §7): routes, request authentication (§6.2-6.5) and response shapes.

Mounted at `/acme` (the API-key middleware leaves `/acme/` to JWS). Each profile has its own directory at
`/acme/profile/{profile_id}/directory`; `/acme/directory` is the default profile's directory
(CERTCTL_ACME_SERVER_DEFAULT_PROFILE_ID, else the oldest enabled profile), whose URLs are that profile's.

Every answer, errors included, carries a fresh `Replay-Nonce` (§6.5) and `Link: <directory>;rel="index"`
(§7.1); every error is an RFC 7807 `application/problem+json` document with an RFC 8555 §6.7 type.
Handlers parse, call one service step and shape the answer; they never touch SQL or sign anything.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Mount, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from certctl.domain.acme import AcmeProblem, problem_for
from certctl.domain.errors import CertctlError
from certctl.protocols.acme import jws as J
from certctl.services.acme import AcmeService, AuthzView, OrderView, b64d

log = logging.getLogger("certctl.acme")

JOSE = "application/jose+json"
MAX_BODY = 64 * 1024  # a JWS carrying a CSR or a certificate is a few KiB (the reference's cap)
Row = Mapping[Any, Any]
Handler = Callable[[Request, AcmeService], Awaitable[Response]]


# ---- URLs -------------------------------------------------------------------------------------------
class Urls:
    def __init__(self, request: Request, service: AcmeService, profile_id: str) -> None:
        self.base = service.settings.external_url or f"{request.url.scheme}://{request.headers.get('host', '')}"
        self.profile_id = profile_id
        self.root = f"{self.base}/acme/profile/{profile_id}"

    def of(self, kind: str, ident: str = "") -> str:
        return f"{self.root}/{kind}/{ident}" if ident else f"{self.root}/{kind}"

    def account_id(self, kid: str) -> str:
        prefix = self.root + "/account/"
        if not kid.startswith(prefix) or "/" in kid[len(prefix):] or not kid[len(prefix):]:
            # A kid of another profile or host: RFC 8555 §6.2 wants the account URL exactly.
            raise AcmeProblem("accountDoesNotExist", "the JWS kid is not an account URL of this directory", 400)
        return kid[len(prefix):]


def _rfc3339(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else None


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _problem(problem: AcmeProblem) -> Response:
    body = problem.document()
    body.update({k: v for k, v in problem.extra.items() if k not in ("account_id",)})
    headers = dict(problem.headers)
    if problem.retry_after is not None:
        headers["Retry-After"] = str(int(problem.retry_after + 0.999))
    return Response(orjson.dumps(body), status_code=problem.status, media_type="application/problem+json",
                    headers=headers)


# ---- request authentication -------------------------------------------------------------------------
class Signed:
    """An authenticated request: the JWS, the account (for `kid`) and the key that signed it."""

    def __init__(self, jws: J.Jws, account: Row | None, key: J.AccountKey, prefetched: Any = None) -> None:
        self.jws = jws
        self.account = account
        self.key = key
        self.prefetched = prefetched  # the resource read with the nonce (`prefetch`), for the service step

    def require_account(self) -> Row:
        assert self.account is not None
        return self.account


async def _signed(
    request: Request, service: AcmeService, urls: Urls, *, use: str, prefetch: tuple[str, str] | None = None,
) -> Signed:
    """RFC 8555 §6.2-6.5. `use`: "kid" (most resources), "jwk" (newAccount), "either" (revokeCert).
    `prefetch`: (kind, id) of the resource a POST-as-GET reads, read with the nonce spend (one round trip);
    handed on only once the signature verified."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != JOSE:
        raise AcmeProblem("malformed", f"the Content-Type must be {JOSE}", 415)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise AcmeProblem("malformed", f"the request body exceeds {MAX_BODY} bytes", 413)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise AcmeProblem("malformed", f"the request body exceeds {MAX_BODY} bytes", 413)
    jws = J.parse(body)
    own_url = urls.base + request.url.path
    if jws.url != own_url:
        raise AcmeProblem("unauthorized", f"the JWS url '{jws.url}' is not the request URL '{own_url}'", 401)
    account: Row | None = None
    prefetched: Any = None
    if jws.kid is not None:
        if use == "jwk":
            await service.spend_nonce(jws.nonce)
            raise AcmeProblem("malformed", "this request must be signed with a jwk, not a kid")
        try:
            account_id = urls.account_id(jws.kid)
        except AcmeProblem:
            await service.spend_nonce(jws.nonce)
            raise
        if prefetch is not None and jws.post_as_get:
            row, prefetched = await service.spend_nonce_prefetch(jws.nonce, account_id, *prefetch)
        else:
            row = await service.spend_nonce(jws.nonce, account_id)  # nonce first, then the account
        account = await service.account(urls.profile_id, account_id, row, loaded=True)
        key = J.account_key(account["jwk"])
    else:
        if use == "kid":
            await service.spend_nonce(jws.nonce)
            raise AcmeProblem("malformed", "this request must be signed with the account's kid, not a jwk")
        assert jws.jwk is not None
        try:
            key = J.account_key(jws.jwk)
        except AcmeProblem:
            await service.spend_nonce(jws.nonce)  # the nonce is spent whatever is wrong with the request
            raise
        if use == "jwk":  # newAccount: the key's account comes back with the nonce spend
            account = await service.spend_nonce_for_key(jws.nonce, urls.profile_id, key.thumbprint)
        else:
            await service.spend_nonce(jws.nonce)
    J.verify(jws, key)
    return Signed(jws, account, key, prefetched)


def _post_as_get(signed: Signed) -> None:
    if not signed.jws.post_as_get:
        raise AcmeProblem("malformed", "this resource is read with POST-as-GET (an empty payload)")


# ---- views ------------------------------------------------------------------------------------------
def _order_json(view: OrderView, urls: Urls) -> dict[str, Any]:
    order = view.order
    body: dict[str, Any] = {
        "status": order["status"], "expires": _rfc3339(order["expires_at"]), "identifiers": order["identifiers"],
        "authorizations": [urls.of("authz", a["id"]) for a in view.authzs],
        "finalize": urls.of("order", order["id"]) + "/finalize",
    }
    if order["not_before"] is not None:
        body["notBefore"] = _rfc3339(order["not_before"])
    if order["not_after"] is not None:
        body["notAfter"] = _rfc3339(order["not_after"])
    if order["error"]:
        body["error"] = order["error"]
    if order["version_id"] and order["status"] == "valid":
        body["certificate"] = urls.of("cert", order["version_id"])
    if order["replaces"]:
        body["replaces"] = order["replaces"]
    return body


def _challenge_json(challenge: Row, urls: Urls) -> dict[str, Any]:
    body: dict[str, Any] = {"type": challenge["type"], "url": urls.of("challenge", challenge["id"]),
                            "status": challenge["status"], "token": challenge["token"]}
    if challenge["validated_at"] is not None:
        body["validated"] = _rfc3339(challenge["validated_at"])
    if challenge["error"]:
        body["error"] = challenge["error"]
    if challenge["validation_record"]:
        body["validationRecord"] = challenge["validation_record"]
    return body


def _authz_json(view: AuthzView, urls: Urls) -> dict[str, Any]:
    authz = view.authz
    body: dict[str, Any] = {
        "identifier": {"type": authz["identifier_type"], "value": authz["identifier_value"]},
        "status": authz["status"], "expires": _rfc3339(authz["expires_at"]),
        "challenges": [_challenge_json(c, urls) for c in view.challenges],
    }
    if authz["wildcard"]:
        body["wildcard"] = True
    return body


def _account_json(account: Row, urls: Urls) -> dict[str, Any]:
    body: dict[str, Any] = {"status": account["status"], "contact": account["contact"],
                            "orders": urls.of("account", account["id"]) + "/orders"}
    if account["terms_agreed"]:
        body["termsOfServiceAgreed"] = True
    return body


# ---- handlers ---------------------------------------------------------------------------------------
async def _directory_for(request: Request, service: AcmeService, profile_id: str) -> Response:
    profile = await service.profile(profile_id)
    urls = Urls(request, service, profile.id)
    body: dict[str, Any] = {
        "newNonce": urls.of("new-nonce"), "newAccount": urls.of("new-account"), "newOrder": urls.of("new-order"),
        "revokeCert": urls.of("revoke-cert"), "keyChange": urls.of("key-change"),
    }
    if service.settings.ari_enabled:
        body["renewalInfo"] = urls.of("renewal-info")
    meta: dict[str, Any] = {"externalAccountRequired": service.eab_required(profile.id)}
    if service.settings.tos_url:
        meta["termsOfService"] = service.settings.tos_url
    if service.settings.website:
        meta["website"] = service.settings.website
    if service.settings.caa_identities:
        meta["caaIdentities"] = list(service.settings.caa_identities)
    body["meta"] = meta
    return _json(body)


async def default_directory(request: Request, service: AcmeService) -> Response:
    return await _directory_for(request, service, await service.default_profile_id())


async def directory(request: Request, service: AcmeService) -> Response:
    return await _directory_for(request, service, request.path_params["profile_id"])


async def new_nonce(request: Request, service: AcmeService) -> Response:
    await service.profile(request.path_params["profile_id"])
    # RFC 8555 §7.2: 200 for HEAD, 204 for GET, never cached.
    return Response(status_code=200 if request.method == "HEAD" else 204, headers={"Cache-Control": "no-store"})


async def new_account(request: Request, service: AcmeService) -> Response:
    profile = await service.profile(request.path_params["profile_id"])
    urls = Urls(request, service, profile.id)
    signed = await _signed(request, service, urls, use="jwk")
    account, created = await service.new_account(profile.id, signed.key.jwk, signed.key.thumbprint,
                                                 signed.jws.json_payload(), urls.base + request.url.path,
                                                 signed.account, looked_up=True)
    return _json(_account_json(account, urls), 201 if created else 200,
                 {"Location": urls.of("account", account["id"])})


async def account(request: Request, service: AcmeService) -> Response:
    urls = Urls(request, service, (await service.profile(request.path_params["profile_id"])).id)
    signed = await _signed(request, service, urls, use="kid")
    current = signed.require_account()
    if current["id"] != request.path_params["account_id"]:
        raise AcmeProblem("unauthorized", "the kid is not this account", 403)
    updated = await service.update_account(current, signed.jws.json_payload())
    return _json(_account_json(updated, urls), headers={"Location": urls.of("account", updated["id"])})


async def account_orders(request: Request, service: AcmeService) -> Response:
    urls = Urls(request, service, (await service.profile(request.path_params["profile_id"])).id)
    signed = await _signed(request, service, urls, use="kid")
    _post_as_get(signed)
    current = signed.require_account()
    if current["id"] != request.path_params["account_id"]:
        raise AcmeProblem("unauthorized", "the orders of another account are not yours to list", 403)
    ids, cursor = await service.account_orders(current, request.query_params.get("cursor"))
    headers = {}
    if cursor is not None:  # RFC 8555 §7.1.2.1: pages linked with rel="next"
        headers["Link"] = f'<{urls.of("account", current["id"])}/orders?cursor={cursor}>;rel="next"'
    return _json({"orders": [urls.of("order", i) for i in ids]}, headers=headers)


async def key_change(request: Request, service: AcmeService) -> Response:
    urls = Urls(request, service, (await service.profile(request.path_params["profile_id"])).id)
    signed = await _signed(request, service, urls, use="kid")
    current = signed.require_account()
    try:
        inner_body = orjson.loads(signed.jws.payload)
    except orjson.JSONDecodeError:
        raise AcmeProblem("malformed", "the key change payload is not a JWS") from None
    inner = J.parse(inner_body, inner=True)  # RFC 8555 §7.3.5 checks, in its order
    if inner.jwk is None:
        raise AcmeProblem("malformed", "the inner JWS must carry the new key as jwk")
    if inner.url != signed.jws.url:
        raise AcmeProblem("malformed", "the inner JWS url differs from the outer JWS url")
    new_key = J.account_key(inner.jwk)
    J.verify(inner, new_key)
    payload = inner.json_payload()
    if payload.get("account") != signed.jws.kid:
        raise AcmeProblem("malformed", "the inner JWS account is not the outer JWS kid")
    if not isinstance(payload.get("oldKey"), dict):
        raise AcmeProblem("malformed", "the inner JWS payload has no oldKey")
    old_key = J.account_key(payload["oldKey"])
    try:
        await service.key_change(current, new_key.jwk, new_key.thumbprint, old_key.thumbprint)
    except AcmeProblem as exc:
        other = exc.extra.get("account_id")
        if other:
            exc.headers["Location"] = urls.of("account", str(other))
        raise
    return _json(_account_json(await service.account(urls.profile_id, current["id"]), urls),
                 headers={"Location": urls.of("account", current["id"])})


async def new_order(request: Request, service: AcmeService) -> Response:
    profile = await service.profile(request.path_params["profile_id"])
    urls = Urls(request, service, profile.id)
    signed = await _signed(request, service, urls, use="kid")
    view = await service.new_order(signed.require_account(), profile, signed.jws.json_payload())
    return _json(_order_json(view, urls), 201, {"Location": urls.of("order", view.order["id"])})


async def order(request: Request, service: AcmeService) -> Response:
    urls = Urls(request, service, (await service.profile(request.path_params["profile_id"])).id)
    order_id = request.path_params["order_id"]
    signed = await _signed(request, service, urls, use="kid", prefetch=("order", order_id))
    _post_as_get(signed)
    view = await service.order(signed.require_account(), order_id, signed.prefetched)
    headers = {"Location": urls.of("order", view.order["id"])}
    if view.status in ("pending", "processing"):
        headers["Retry-After"] = "1"
    return _json(_order_json(view, urls), headers=headers)


async def finalize(request: Request, service: AcmeService) -> Response:
    profile = await service.profile(request.path_params["profile_id"])
    urls = Urls(request, service, profile.id)
    signed = await _signed(request, service, urls, use="kid")
    csr = signed.jws.json_payload().get("csr")
    try:
        csr_der = b64d(csr) if isinstance(csr, str) else b""
    except ValueError:
        csr_der = b""
    if not csr_der:
        raise AcmeProblem("malformed", "finalize needs csr: the base64url DER of a PKCS#10 request")
    view = await service.finalize(signed.require_account(), profile, request.path_params["order_id"], csr_der)
    return _json(_order_json(view, urls), headers={"Location": urls.of("order", view.order["id"])})


async def authorization(request: Request, service: AcmeService) -> Response:
    urls = Urls(request, service, (await service.profile(request.path_params["profile_id"])).id)
    authz_id = request.path_params["authz_id"]
    signed = await _signed(request, service, urls, use="kid", prefetch=("authz", authz_id))
    payload = signed.jws.json_payload()
    if payload.get("status") == "deactivated":
        view = await service.deactivate_authorization(signed.require_account(), authz_id)
    elif payload:
        raise AcmeProblem("malformed", "an authorization accepts POST-as-GET or {\"status\": \"deactivated\"}")
    else:
        view = await service.authorization(signed.require_account(), authz_id, signed.prefetched)
    headers = {"Retry-After": "1"} if view.authz["status"] == "pending" else None
    return _json(_authz_json(view, urls), headers=headers)


async def challenge(request: Request, service: AcmeService) -> Response:
    urls = Urls(request, service, (await service.profile(request.path_params["profile_id"])).id)
    signed = await _signed(request, service, urls, use="kid")
    challenge_id = request.path_params["challenge_id"]
    if signed.jws.post_as_get:
        found, authz = await service.challenge(signed.require_account(), challenge_id)
    else:
        if signed.jws.json_payload():
            raise AcmeProblem("malformed", "a challenge response is the empty object {}")
        found, authz = await service.respond_challenge(signed.require_account(), challenge_id)
    headers = {"Link": f'<{urls.of("authz", authz["id"])}>;rel="up"'}
    if found["status"] == "processing":
        headers["Retry-After"] = "1"
    return _json(_challenge_json(found, urls), headers=headers)


async def certificate(request: Request, service: AcmeService) -> Response:
    urls = Urls(request, service, (await service.profile(request.path_params["profile_id"])).id)
    version_id = request.path_params["cert_id"]
    signed = await _signed(request, service, urls, use="kid", prefetch=("cert", version_id))
    _post_as_get(signed)
    raw_alternate = request.path_params.get("alternate", "0")
    if not raw_alternate.isdigit():
        raise AcmeProblem("malformed", "no such alternate chain", 404)
    chain = await service.certificate_chain(signed.require_account(), version_id, int(raw_alternate),
                                            signed.prefetched)
    links = []
    if chain.ca_id:
        links.append(f'<{urls.base}/.well-known/pki/ca/{chain.ca_id}>;rel="up"')
    current = int(raw_alternate)
    for index in range(chain.alternates + 1):
        if index != current:
            target = urls.of("cert", version_id) + (f"/{index}" if index else "")
            links.append(f'<{target}>;rel="alternate"')
    response = Response(chain.pem.encode(), media_type="application/pem-certificate-chain")
    for link in links:
        response.headers.append("Link", link)
    return response


async def revoke_cert(request: Request, service: AcmeService) -> Response:
    urls = Urls(request, service, (await service.profile(request.path_params["profile_id"])).id)
    signed = await _signed(request, service, urls, use="either")
    payload = signed.jws.json_payload()
    raw = payload.get("certificate")
    try:
        cert_der = b64d(raw) if isinstance(raw, str) else b""
    except ValueError:
        cert_der = b""
    if not cert_der:
        raise AcmeProblem("malformed", "revokeCert needs certificate: the base64url DER of the certificate")
    await service.revoke(signed.account, None if signed.account is not None else signed.key.spki, cert_der,
                         payload.get("reason"))
    return Response(status_code=200)


async def renewal_info(request: Request, service: AcmeService) -> Response:
    await service.profile(request.path_params["profile_id"])
    window = await service.renewal_info(request.path_params["cert_id"])
    body = {"suggestedWindow": {"start": _rfc3339(window.start), "end": _rfc3339(window.end)}}
    return _json(body, headers={"Retry-After": str(int(window.retry_after))})


# ---- the router -------------------------------------------------------------------------------------
def _endpoint(handler: Handler, methods: tuple[str, ...]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        service: AcmeService = request.app.state.services.acme
        try:
            if not service.settings.enabled:
                raise AcmeProblem("malformed", "the ACME server is not enabled (CERTCTL_ACME_SERVER_ENABLED)", 404)
            if request.method not in methods:
                problem = AcmeProblem("malformed", f"{request.method} is not allowed here", 405)
                problem.headers["Allow"] = ", ".join(methods)
                raise problem
            response = await handler(request, service)
        except CertctlError as exc:
            response = _problem(problem_for(exc))
        except Exception:
            log.exception("ACME request failed")
            response = _problem(AcmeProblem("serverInternal", "the server could not complete the request", 500))
        _decorate(request, service, response)
        return response

    return endpoint


def _decorate(request: Request, service: AcmeService, response: Response) -> None:
    response.headers["Replay-Nonce"] = service.new_nonce()
    profile_id = request.path_params.get("profile_id")
    base = service.settings.external_url or f"{request.url.scheme}://{request.headers.get('host', '')}"
    index = f"{base}/acme/profile/{profile_id}/directory" if profile_id else f"{base}/acme/directory"
    response.headers.append("Link", f'<{index}>;rel="index"')


async def _not_found(scope: Any, receive: Any, send: Any) -> None:
    request = Request(scope, receive)
    problem = _problem(AcmeProblem("malformed", f"no ACME resource at {request.url.path}", 404))
    services = getattr(request.app.state, "services", None)
    if services is not None:
        problem.headers["Replay-Nonce"] = services.acme.new_nonce()
    await problem(scope, receive, send)


_POST = ("POST",)
_ALL = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_P = "/profile/{profile_id}"
router = Router(routes=[
    Route("/directory", _endpoint(default_directory, ("GET", "HEAD")), methods=_ALL),
    Route(f"{_P}/directory", _endpoint(directory, ("GET", "HEAD")), methods=_ALL),
    Route(f"{_P}/new-nonce", _endpoint(new_nonce, ("GET", "HEAD")), methods=_ALL),
    Route(f"{_P}/new-account", _endpoint(new_account, _POST), methods=_ALL),
    Route(f"{_P}/account/{{account_id}}", _endpoint(account, _POST), methods=_ALL),
    Route(f"{_P}/account/{{account_id}}/orders", _endpoint(account_orders, _POST), methods=_ALL),
    Route(f"{_P}/key-change", _endpoint(key_change, _POST), methods=_ALL),
    Route(f"{_P}/new-order", _endpoint(new_order, _POST), methods=_ALL),
    Route(f"{_P}/order/{{order_id}}", _endpoint(order, _POST), methods=_ALL),
    Route(f"{_P}/order/{{order_id}}/finalize", _endpoint(finalize, _POST), methods=_ALL),
    Route(f"{_P}/authz/{{authz_id}}", _endpoint(authorization, _POST), methods=_ALL),
    Route(f"{_P}/challenge/{{challenge_id}}", _endpoint(challenge, _POST), methods=_ALL),
    Route(f"{_P}/cert/{{cert_id}}", _endpoint(certificate, _POST), methods=_ALL),
    Route(f"{_P}/cert/{{cert_id}}/{{alternate}}", _endpoint(certificate, _POST), methods=_ALL),
    Route(f"{_P}/revoke-cert", _endpoint(revoke_cert, _POST), methods=_ALL),
    Route(f"{_P}/renewal-info/{{cert_id}}", _endpoint(renewal_info, ("GET", "HEAD")), methods=_ALL),
], default=_not_found)


# The router's templates by number of path segments (after /acme/), in the router's order: a request's route is
# found by comparing a few literal segments, where Starlette's routing tries each route's regular expression in
# turn (about a tenth of a millisecond per request, more than the JWS signature check).
_Template = tuple[tuple[tuple[int, str], ...], tuple[tuple[int, str], ...], Any]
_BY_LENGTH: dict[int, list[_Template]] = {}
for _route in router.routes:
    assert isinstance(_route, Route)
    _parts = _route.path.strip("/").split("/")
    _BY_LENGTH.setdefault(len(_parts), []).append((
        tuple((i, p) for i, p in enumerate(_parts) if not p.startswith("{")),
        tuple((i, p[1:-1]) for i, p in enumerate(_parts) if p.startswith("{")), _route.endpoint))


def match_route(path: str) -> tuple[Any, dict[str, str]] | None:
    """The endpoint and path parameters of an `/acme/...` path, as the router would match them; None for none."""
    parts = path[len("/acme/"):].split("/")
    for literals, params, endpoint in _BY_LENGTH.get(len(parts), ()):
        if all(parts[i] == text for i, text in literals) and all(parts[i] for i, _ in params):
            return endpoint, {name: parts[i] for i, name in params}
    return None


class AcmeFastPath:
    """Sends `/acme/...` straight to the ACME endpoints, past the API's layers (API-key auth, per-IP limits, audit,
    CORS, body sanity) that do not apply to JWS-authenticated ACME requests: they cost more CPU than the ACME
    handler. Outer layers (request id, telemetry) still see the request, with the scope keys Starlette's mount and
    route would have set (`endpoint`, `path_params`, `root_path`). The body cap and the NUL check these layers make
    for the API are made in `_signed` and `Jws.json_payload`. Paths no route matches go through the router (its
    404 answer)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.mount = Mount("/acme", app=router)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path", "").startswith("/acme/"):
            found = match_route(scope["path"]) if scope["method"] in _ALL else None
            if found is not None:
                endpoint, params = found
                root_path = scope.get("root_path", "")
                scope.update(endpoint=endpoint, path_params=params, root_path=root_path + "/acme",
                             app_root_path=scope.get("app_root_path", root_path))
                response = await endpoint(Request(scope, receive, send))
                await response(scope, receive, send)
                return
            match, child = self.mount.matches(scope)
            if match == Match.FULL:
                scope.update(child)  # in place, as Starlette's router does: outer layers read the matched route
                await self.mount.handle(scope, receive, send)
                return
        await self.app(scope, receive, send)
