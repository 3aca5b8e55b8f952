"""A scriptable SMTP sink for mailbridge's relay tests and benchmark (aiosmtpd).

Offers STARTTLS (required) or implicit TLS, SMTP AUTH (PLAIN/LOGIN) against one user, scripted
failures, and records every accepted message as <maildir>/<seq>.eml plus <seq>.json (envelope).
Prints "READY <port>" on stdout once it accepts connections; stops on SIGTERM/SIGINT.
"""

import argparse
import asyncio
import json
import logging
import os
import signal
import ssl
import sys
import warnings

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--implicit-tls", action="store_true")
    p.add_argument("--auth", help="USER:PASSWORD; AUTH is then required")
    p.add_argument("--maildir", help="write accepted messages here")
    p.add_argument("--mail-fail", help="reply to the first --mail-fail-count MAIL FROM commands")
    p.add_argument("--mail-fail-count", type=int, default=0)
    p.add_argument("--rcpt-fail", help="reply to the first --rcpt-fail-count RCPT TO commands")
    p.add_argument("--rcpt-fail-count", type=int, default=0)
    p.add_argument("--reject", action="append", default=[], help="ADDRESS=REPLY for RCPT TO:<ADDRESS>")
    p.add_argument(
        "--per-connection",
        type=int,
        default=0,
        help="accept this many messages on a connection, then end it (as Exim's "
        "smtp_accept_max_per_connection does)",
    )
    p.add_argument(
        "--per-connection-reply",
        default="",
        help="with --per-connection: answer the next MAIL FROM with this reply and close; "
        "empty: close silently right after the last accepted message",
    )
    p.add_argument(
        "--after-data",
        choices=["drop", "stall"],
        help="for the first --after-data-count messages: keep the message, then close the "
        "connection without a reply (drop) or never reply (stall), so that the client cannot "
        "know whether it was accepted",
    )
    p.add_argument("--after-data-count", type=int, default=1)
    p.add_argument(
        "--no-pipelining",
        action="store_true",
        help="do not offer PIPELINING (RFC 2920), which the sink offers by default as Postfix "
        "and Exim do (aiosmtpd reads pipelined commands either way)",
    )
    return p.parse_args()


class Sink:
    def __init__(self, args):
        self.args = args
        self.seq = 0
        self.mail_fails = args.mail_fail_count
        self.rcpt_fails = args.rcpt_fail_count
        self.after_data_left = args.after_data_count if args.after_data else 0
        self.reject = {}
        for item in args.reject:
            addr, reply = item.split("=", 1)
            self.reject[addr.lower()] = reply

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        # With this hook, aiosmtpd leaves recording the client's name to it.
        session.host_name = hostname
        if not self.args.no_pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        limit = self.args.per_connection
        if limit and getattr(session, "accepted", 0) >= limit and self.args.per_connection_reply:
            # The reply is written before the loop runs the close, which flushes it first.
            asyncio.get_running_loop().call_soon(server.transport.close)
            return self.args.per_connection_reply
        if self.args.mail_fail and self.mail_fails > 0:
            self.mail_fails -= 1
            return self.args.mail_fail
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        # Whether the client's next command (RCPT) had already arrived with this MAIL: the
        # client pipelined them (aiosmtpd reads one line at a time from this buffer).
        session.pipelined = len(getattr(server._reader, "_buffer", b"")) > 0
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.args.rcpt_fail and self.rcpt_fails > 0:
            self.rcpt_fails -= 1
            return self.args.rcpt_fail
        reply = self.reject.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.seq += 1
        if self.args.maildir:
            base = os.path.join(self.args.maildir, "%06d" % self.seq)
            with open(base + ".json.tmp", "w") as f:
                json.dump(
                    {
                        "mail_from": envelope.mail_from,
                        "rcpt_tos": envelope.rcpt_tos,
                        "pipelined": getattr(session, "pipelined", False),
                    },
                    f,
                )
            os.rename(base + ".json.tmp", base + ".json")
            with open(base + ".eml.tmp", "wb") as f:
                f.write(envelope.original_content)
            # The .eml appears last: a reader that sees it sees the whole message.
            os.rename(base + ".eml.tmp", base + ".eml")
        if self.after_data_left > 0:
            # The message is kept (a real server may have queued it) but its answer is lost.
            self.after_data_left -= 1
            if self.args.after_data == "drop":
                server.transport.abort()
            # Closing the connection cancels this handler; a stall waits for the client to.
            await asyncio.sleep(3600)
        session.accepted = getattr(session, "accepted", 0) + 1
        limit = self.args.per_connection
        if limit and session.accepted >= limit and not self.args.per_connection_reply:
            asyncio.get_running_loop().call_soon(server.transport.close)
        return "250 2.0.0 Ok: queued as %d" % self.seq


def main():
    args = parse_args()
    # aiosmtpd's own deprecation notes and expected handshake failures are noise in test output.
    warnings.simplefilter("ignore")
    logging.getLogger("mail.log").setLevel(logging.CRITICAL)
    tls_context = None
    if args.tls_cert:
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(args.tls_cert, args.tls_key)
    authenticator = None
    if args.auth:
        user, password = args.auth.split(":", 1)

        def authenticator(server, session, envelope, mechanism, auth_data):
            if (
                isinstance(auth_data, LoginPassword)
                and auth_data.login.decode() == user
                and auth_data.password.decode() == password
            ):
                return AuthResult(success=True)
            # handled=False: aiosmtpd answers 535 itself (handled=True would leave the client waiting).
            return AuthResult(success=False, handled=False)

    kwargs = dict(
        hostname="127.0.0.1",
        port=args.port,
        authenticator=authenticator,
        auth_required=bool(args.auth),
        data_size_limit=10 * 1024 * 1024,
    )
    if args.implicit_tls:
        kwargs["ssl_context"] = tls_context
        kwargs["auth_require_tls"] = False
    elif tls_context is not None:
        kwargs["tls_context"] = tls_context
        kwargs["require_starttls"] = True
        kwargs["auth_require_tls"] = True
    else:
        kwargs["auth_require_tls"] = False
    controller = Controller(Sink(args), **kwargs)
    if args.port == 0:
        # aiosmtpd needs a concrete port; take a free one.
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        controller.port = s.getsockname()[1]
        s.close()
    controller.start()
    print("READY %d" % controller.port, flush=True)
    stop = asyncio.new_event_loop()
    done = stop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        stop.add_signal_handler(sig, lambda: done.done() or done.set_result(None))
    stop.run_until_complete(done)
    controller.stop()


if __name__ == "__main__":
    sys.exit(main())
