"""Issuer connectors: certificate authorities outside certctl that sign our CSRs (ACME first).

The local CA (GenericCA) is not a connector: it signs in-process through `certctl.pki` and
`certctl.services.ca_service`. Everything else is reached through `registry.create_issuer`.
"""
