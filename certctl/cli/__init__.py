"""The `certctl` command."""
