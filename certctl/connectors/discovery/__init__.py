"""Discovery sources: where certificates certctl does not manage yet are found.

`filesystem` is the agent's scan of its configured directories; the server's network scanner
(certctl.services.network_scan) describes what it is served with the same `describe_certificate`.
"""
