"""A small DNS responder for tests: answers from an in-memory zone on 127.0.0.1 (UDP and TCP, one free port).

In a test:

    with DnsResponder() as dns:
        dns.set_a("www.acme.test", "127.0.0.1")
        dns.add_txt("_acme-challenge.www.acme.test", value)
        settings = ValidationSettings(dns_resolvers=(("127.0.0.1", dns.port),), ...)

It answers like a recursive resolver by default: a CNAME is followed inside the zone and the chain and the
target's records all go into the answer. With `chase_cnames=False` it answers like an authoritative server
whose CNAME target lives elsewhere (only the CNAME), so the client has to follow it. Names it does not know
get NXDOMAIN; known names without the asked type get an empty NOERROR answer.

For certbot's `--manual-auth-hook`/`--manual-cleanup-hook`, start it with `control=True`: a small HTTP control
port (POST/DELETE `/txt?name=...&value=...`) lets another process change the TXT records, and
`hook_command("auth")` / `hook_command("cleanup")` give the command lines to pass to certbot. Those run this
file as a script:

    python tests/dns_responder.py certbot-auth --control http://127.0.0.1:PORT     # CERTBOT_DOMAIN, _VALIDATION
    python tests/dns_responder.py certbot-cleanup --control http://127.0.0.1:PORT
    python tests/dns_responder.py add-txt --control URL NAME VALUE
    python tests/dns_responder.py clear-txt --control URL NAME
    python tests/dns_responder.py serve [--control-port-file FILE]                   # standalone, until killed
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from dnslib import AAAA, CNAME, QTYPE, RCODE, RR, TXT, A, DNSRecord  # type: ignore[import-untyped]
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer  # type: ignore[import-untyped]

TTL = 1


def _key(name: str) -> str:
    return name.lower().rstrip(".")


class _Resolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, responder: DnsResponder) -> None:
        self.responder = responder

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        reply.header.aa = 1
        qname = str(request.q.qname)
        qtype = QTYPE[request.q.qtype]
        with self.responder.lock:
            self.responder.queries.append((_key(qname), qtype))
            name = _key(qname)
            if not self.responder.known(name):
                reply.header.rcode = RCODE.NXDOMAIN
                return reply
            for _ in range(10):
                target = self.responder.cnames.get(name)
                if target is None or qtype == "CNAME":
                    break
                reply.add_answer(RR(name + ".", QTYPE.CNAME, rdata=CNAME(target + "."), ttl=TTL))
                if not self.responder.chase_cnames:
                    return reply
                name = target
                if not self.responder.known(name):
                    reply.header.rcode = RCODE.NXDOMAIN
                    return reply
            for rdata in self.responder.records(name, qtype):
                reply.add_answer(RR(name + ".", getattr(QTYPE, qtype), rdata=rdata, ttl=TTL))
        return reply


class DnsResponder:
    """An in-memory zone served on 127.0.0.1:<port> over UDP and TCP (threads; stop() or a with block)."""

    def __init__(self, *, chase_cnames: bool = True, control: bool = False) -> None:
        self.lock = threading.RLock()
        self.chase_cnames = chase_cnames
        self.txt: dict[str, list[str]] = defaultdict(list)
        self.a: dict[str, list[str]] = defaultdict(list)
        self.aaaa: dict[str, list[str]] = defaultdict(list)
        self.cnames: dict[str, str] = {}
        self.queries: list[tuple[str, str]] = []  # (name, type) as asked, for assertions
        self._servers: list[DNSServer] = []
        self._control: ThreadingHTTPServer | None = None
        self.port = 0
        self._want_control = control

    # ---- records --------------------------------------------------------------------------------------
    def known(self, name: str) -> bool:
        return any(name in table and table[name] for table in (self.txt, self.a, self.aaaa)) or name in self.cnames

    def records(self, name: str, qtype: str) -> list[Any]:
        if qtype == "TXT":
            return [TXT(value) for value in self.txt.get(name, [])]
        if qtype == "A":
            return [A(value) for value in self.a.get(name, [])]
        if qtype == "AAAA":
            return [AAAA(value) for value in self.aaaa.get(name, [])]
        if qtype == "CNAME" and name in self.cnames:
            return [CNAME(self.cnames[name] + ".")]
        return []

    def add_txt(self, name: str, value: str) -> None:
        with self.lock:
            self.txt[_key(name)].append(value)

    def set_txt(self, name: str, *values: str) -> None:
        with self.lock:
            self.txt[_key(name)] = list(values)

    def clear_txt(self, name: str, value: str | None = None) -> None:
        with self.lock:
            key = _key(name)
            self.txt[key] = [] if value is None else [v for v in self.txt.get(key, []) if v != value]

    def set_a(self, name: str, *addresses: str) -> None:
        with self.lock:
            self.a[_key(name)] = list(addresses)

    def set_aaaa(self, name: str, *addresses: str) -> None:
        with self.lock:
            self.aaaa[_key(name)] = list(addresses)

    def set_cname(self, name: str, target: str) -> None:
        with self.lock:
            self.cnames[_key(name)] = _key(target)

    def clear(self, name: str) -> None:
        """Forget every record of `name`."""
        with self.lock:
            key = _key(name)
            for table in (self.txt, self.a, self.aaaa):
                table.pop(key, None)
            self.cnames.pop(key, None)

    # ---- serving --------------------------------------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def control_url(self) -> str:
        if self._control is None:
            raise RuntimeError("the responder was started without control=True")
        return f"http://127.0.0.1:{self._control.server_address[1]}"

    def hook_command(self, kind: str) -> str:
        """A shell command line for certbot's --manual-auth-hook ("auth") or --manual-cleanup-hook ("cleanup")."""
        script = os.path.abspath(__file__)
        return " ".join(shlex.quote(part) for part in
                        (sys.executable, script, f"certbot-{kind}", "--control", self.control_url))

    def start(self) -> DnsResponder:
        resolver = _Resolver(self)
        logger = DNSLogger(log="-request,-reply,-truncated,-error", prefix=False)
        for _ in range(20):
            udp = DNSServer(resolver, address="127.0.0.1", port=0, logger=logger)
            port = udp.server.server_address[1]
            try:
                tcp = DNSServer(resolver, address="127.0.0.1", port=port, tcp=True, logger=logger)
            except OSError:
                udp.server.server_close()
                continue
            self._servers = [udp, tcp]
            self.port = port
            break
        else:
            raise RuntimeError("no free port for the DNS responder")
        for server in self._servers:  # a short poll interval: stop() returns in milliseconds
            threading.Thread(target=server.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        if self._want_control:
            self._control = ThreadingHTTPServer(("127.0.0.1", 0), _control_handler(self))
            threading.Thread(target=self._control.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.server.shutdown()
            server.server.server_close()
        self._servers = []
        if self._control is not None:
            self._control.shutdown()
            self._control.server_close()
            self._control = None

    def __enter__(self) -> DnsResponder:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


def _control_handler(responder: DnsResponder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _params(self) -> tuple[str, str | None]:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            return query.get("name", [""])[0], query.get("value", [None])[0]

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            name, value = self._params()
            if not name or value is None:
                self._answer(400)
                return
            responder.add_txt(name, value)
            self._answer(204)

        def do_DELETE(self) -> None:
            name, value = self._params()
            if not name:
                self._answer(400)
                return
            responder.clear_txt(name, value)
            self._answer(204)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


# ---- command line (certbot hooks) -------------------------------------------------------------------------

def _call(control: str, method: str, name: str, value: str | None) -> None:
    query = {"name": name} | ({"value": value} if value is not None else {})
    request = urllib.request.Request(f"{control.rstrip('/')}/txt?{urllib.parse.urlencode(query)}", method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        if response.status != 204:
            raise SystemExit(f"control port answered {response.status}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dns_responder", description="the tests' DNS responder")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("certbot-auth", "certbot-cleanup"):
        commands.add_parser(name).add_argument("--control", required=True)
    add = commands.add_parser("add-txt")
    add.add_argument("--control", required=True)
    add.add_argument("name")
    add.add_argument("value")
    clear = commands.add_parser("clear-txt")
    clear.add_argument("--control", required=True)
    clear.add_argument("name")
    serve = commands.add_parser("serve")
    serve.add_argument("--control-port-file", help="write '<dns port> <control url>' here once serving")
    args = parser.parse_args(argv)
    if args.command in ("certbot-auth", "certbot-cleanup"):
        domain = os.environ["CERTBOT_DOMAIN"].removeprefix("*.")
        value = os.environ["CERTBOT_VALIDATION"]
        method = "POST" if args.command == "certbot-auth" else "DELETE"
        _call(args.control, method, f"_acme-challenge.{domain}", value)
    elif args.command == "add-txt":
        _call(args.control, "POST", args.name, args.value)
    elif args.command == "clear-txt":
        _call(args.control, "DELETE", args.name, None)
    else:
        responder = DnsResponder(control=True).start()
        line = f"{responder.port} {responder.control_url}\n"
        if args.control_port_file:
            with open(args.control_port_file, "w") as handle:
                handle.write(line)
        sys.stdout.write(line)
        sys.stdout.flush()
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            responder.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
