"""Build the signer registry from the environment (the `CERTCTL_SIGNER_*`, `CERTCTL_PKCS11_*` variables).

The file driver is always there (keys in `<data_dir>/keys`, encrypted with `CERTCTL_CA_KEY_PASSPHRASE` when
set), so existing `file:` references keep loading whatever the default is. The PKCS#11 driver is added when
`CERTCTL_PKCS11_MODULE` is set or `CERTCTL_SIGNER_DRIVER=pkcs11`; it logs in here, so a wrong module, token
label or PIN stops the start with a message naming the variable instead of failing the first signature.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from certctl.pki.signers import SignerRegistry
from certctl.pki.signers.base import SignerDriver, SignerError
from certctl.pki.signers.file import FileDriver

DRIVERS = ("file", "pkcs11")


def build_signer_registry(
    *, data_dir: Path, env: Mapping[str, str], allowed_files: Iterable[Path] = ()
) -> SignerRegistry:
    default = (env.get("CERTCTL_SIGNER_DRIVER") or "file").strip().lower()
    if default not in DRIVERS:
        raise SignerError(f"CERTCTL_SIGNER_DRIVER must be one of {', '.join(DRIVERS)}, not '{default}'")
    passphrase = env.get("CERTCTL_CA_KEY_PASSPHRASE") or None
    drivers: list[SignerDriver] = [FileDriver(data_dir / "keys", passphrase=passphrase, allowed_files=allowed_files)]
    if (env.get("CERTCTL_PKCS11_MODULE") or "").strip() or default == "pkcs11":
        drivers.append(_pkcs11_driver(env))
    return SignerRegistry(drivers, default_scheme=default)


def _pkcs11_driver(env: Mapping[str, str]) -> SignerDriver:
    module = (env.get("CERTCTL_PKCS11_MODULE") or "").strip()
    if not module:
        raise SignerError("CERTCTL_PKCS11_MODULE must name the PKCS#11 module (.so) when CERTCTL_SIGNER_DRIVER=pkcs11")
    if not Path(module).is_file():
        raise SignerError(f"CERTCTL_PKCS11_MODULE: '{module}' does not exist or is not a file")
    token_label = (env.get("CERTCTL_PKCS11_TOKEN_LABEL") or "").strip()
    if not token_label:
        raise SignerError("CERTCTL_PKCS11_TOKEN_LABEL must name the token when a PKCS#11 module is configured")
    pin = _pin(env)
    # Imported here: python-pkcs11 is a compiled extension that file-only deployments never need to load.
    from certctl.pki.signers.pkcs11 import Pkcs11Driver, Pkcs11LoginError, Pkcs11TokenNotFound

    driver = Pkcs11Driver(module, token_label, pin)
    try:
        driver.check()
    except Pkcs11LoginError as exc:
        variable = "CERTCTL_PKCS11_PIN_FILE" if env.get("CERTCTL_PKCS11_PIN_FILE") else "CERTCTL_PKCS11_PIN"
        raise SignerError(f"{variable}: {exc}") from exc
    except Pkcs11TokenNotFound as exc:
        raise SignerError(f"CERTCTL_PKCS11_TOKEN_LABEL: {exc}") from exc
    except SignerError as exc:
        raise SignerError(f"CERTCTL_PKCS11_MODULE: {exc}") from exc
    return driver


def _pin(env: Mapping[str, str]) -> str:
    pin = env.get("CERTCTL_PKCS11_PIN") or ""
    pin_file = (env.get("CERTCTL_PKCS11_PIN_FILE") or "").strip()
    if pin and pin_file:
        raise SignerError("set CERTCTL_PKCS11_PIN or CERTCTL_PKCS11_PIN_FILE, not both")
    if pin_file:
        try:
            # One trailing newline is what `echo pin > file` leaves; the PIN itself is taken as written.
            pin = Path(pin_file).read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise SignerError(f"CERTCTL_PKCS11_PIN_FILE: '{pin_file}' cannot be read: {reason}") from None
        if not pin:
            raise SignerError(f"CERTCTL_PKCS11_PIN_FILE: '{pin_file}' is empty")
    if not pin:
        raise SignerError("CERTCTL_PKCS11_PIN or CERTCTL_PKCS11_PIN_FILE must give the token's user PIN")
    return pin
