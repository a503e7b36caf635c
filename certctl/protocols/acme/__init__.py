"""The ACME server's web front end (RFC 8555): `routes.router` is mounted at `/acme` by the app."""
