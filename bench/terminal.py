"""One terminal, one transaction: sign on, send one request, print the decoded answer.

    python -m bench.terminal KIND [--host 127.0.0.1] [--port 5800]
        [--tid 10000001] [--mid 898100012340001] [--card 10] [--amount 12.34]
        [--no-pin] [--json]

KIND is one of: sale, balance, preauth, void, refund, completion, cancel,
completion-void, reversal, settlement, echo, sign-off, parameters. Kinds
that quote an original (void, refund, completion, cancel, completion-void,
reversal) first run that original (a sale or a pre-authorization, and for
completion-void also the completion) on the same connection, and print its
answer too. Settlement sends this session's own totals. Each answer's MAC is
checked under the session MAK; the exit code is 0 when the last answer is
approved (00) and its MAC verified, 1 otherwise.

Printed fields never show a whole PAN (first 6 + last 4), a track, a PIN
block, keys or the MAC: only their lengths.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys

from bench.fleet import EXPIRY, PIN, Link, Unanswered
from bench.sim import Response, Terminal
from fastpath import requests as rq
from switchd.demo import demo_pan

KINDS = ("sale", "balance", "preauth", "void", "refund", "completion", "cancel",
         "completion-void", "reversal", "settlement", "echo", "sign-off", "parameters")  # fmt: skip
#: Fields shown only by their length: tracks, PIN block, ICC data, keys, MAC.
SECRET_FIELDS = (35, 36, 52, 55, 62, 64)


def mask_pan(pan: str) -> str:
    return pan[:6] + "*" * (len(pan) - 10) + pan[-4:] if len(pan) > 10 else "*" * len(pan)


def describe(label: str, resp: Response) -> dict[str, object]:
    """A printable view of an answer with the secrets left out."""
    fields: dict[str, object] = {}
    for f, v in resp.msg.to_dict().items():
        if f == 2:
            fields["2"] = mask_pan(str(v))
        elif f in SECRET_FIELDS:
            fields[str(f)] = f"<{len(v)} {'bytes' if isinstance(v, bytes) else 'chars'}>"
        else:
            fields[str(f)] = v.hex().upper() if isinstance(v, bytes) else v
    out: dict[str, object] = {
        "step": label, "mti": resp.msg.mti, "rc": resp.rc, "mac_ok": resp.mac_ok,
        "fields": fields,
    }  # fmt: skip
    if resp.msg.mti == "0510":
        out["settlement_code"] = resp.msg.settlement_totals().code
    return out


class Session:
    """A signed-on terminal with its connection and the totals of its batch."""

    def __init__(self, term: Terminal, link: Link, timeout: float) -> None:
        self.term, self.link, self.timeout = term, link, timeout
        self.debits = [0, 0]
        self.credits = [0, 0]
        self.answers: list[dict[str, object]] = []

    async def call(self, label: str, mti: str, fields: dict[int, object],
                   sign: bool = True) -> Response:  # fmt: skip
        self.link.send(self.term.frame(mti, fields, sign=sign))
        resp = self.term.read(await self.link.recv(self.timeout))
        self.answers.append(describe(label, resp))
        return resp


async def one_shot(args: argparse.Namespace) -> list[dict[str, object]]:
    loop = asyncio.get_running_loop()
    _, link = await asyncio.wait_for(
        loop.create_connection(Link, args.host, args.port), args.timeout
    )
    # A real terminal keeps its STAN across power cycles; a one-shot process cannot,
    # so it starts at a random one: a reused STAN in the batch is answered 94.
    term = Terminal(args.tid, args.mid, stan=args.stan or secrets.randbelow(900_000))
    s = Session(term, link, args.timeout)
    try:
        link.send(term.sign_on_frame())
        resp = term.read(await link.recv(args.timeout))
        if resp.rc == "00":
            term.install_keys(resp)  # also checks the answer's MAC under the new MAK
        s.answers.append(describe("sign-on", resp))
        if resp.rc != "00":
            return s.answers
        await run_kind(s, args)
    finally:
        link.close()
    return s.answers


async def run_kind(s: Session, args: argparse.Namespace) -> None:
    t, kind = s.term, args.kind
    card = rq.Card(demo_pan(args.card), EXPIRY)
    pin = None if args.no_pin else PIN
    amount = args.amount
    if kind == "balance":
        await s.call(kind, *rq.balance(t.ident, card, t.next_stan(), pin, t.pik))
    elif kind in ("sale", "void", "refund", "reversal"):
        stan = t.next_stan()
        mti, fields = rq.sale(t.ident, card, stan, amount, pin, t.pik)
        resp = await s.call("sale", mti, fields)
        if kind == "sale" or resp.rc != "00":
            return
        orig = t.remember("sale", resp, stan)
        if kind == "void":
            await s.call(kind, *rq.void(t.ident, card, t.next_stan(), amount, orig))
        elif kind == "refund":
            await s.call(kind, *rq.refund(t.ident, card, t.next_stan(), amount, orig))
        else:
            await s.call(kind, *rq.reversal(fields, "96"))
    elif kind in ("preauth", "completion", "cancel", "completion-void"):
        stan = t.next_stan()
        resp = await s.call("preauth", *rq.preauth(t.ident, card, stan, amount, pin, t.pik))
        if kind == "preauth" or resp.rc != "00":
            return
        hold = t.remember("preauth", resp, stan)
        if kind == "cancel":
            await s.call(kind, *rq.preauth_cancel(t.ident, card, t.next_stan(), amount, hold))
            return
        cstan = t.next_stan()
        resp = await s.call("completion", *rq.completion(t.ident, card, cstan, amount, hold))
        if kind == "completion-void" and resp.rc == "00":
            done = t.remember("completion", resp, cstan)
            await s.call(kind, *rq.completion_void(t.ident, card, t.next_stan(), amount, done))
    elif kind == "settlement":
        totals = rq.settlement_totals(0, 0, 0, 0)
        await s.call(kind, *rq.settlement(t.ident, t.next_stan(), totals))
    elif kind == "echo":
        await s.call(kind, *rq.echo_test(t.ident, t.next_stan()))
    elif kind == "sign-off":
        await s.call(kind, *rq.sign_off(t.ident, t.next_stan()))
    elif kind == "parameters":
        await s.call(kind, *rq.parameter_download(t.ident, t.next_stan()))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.terminal", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5800)
    p.add_argument("--tid", default="10000001")
    p.add_argument("--mid", default="898100012340001")
    p.add_argument("--card", type=int, default=10, help="demo card sequence (default 10)")
    p.add_argument(
        "--amount", type=parse_amount, default=10_00,
        help="in yuan with up to two decimals, e.g. 12.34 (default 10.00)",
    )  # fmt: skip
    p.add_argument("--no-pin", action="store_true", help="no PIN block")
    p.add_argument("--stan", type=int, default=0, help="first STAN - 1 (default random)")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    return p


def parse_amount(text: str) -> int:
    """Yuan as written on a receipt ("12.34") to fen, exactly (no float)."""
    whole, _, frac = text.strip().partition(".")
    if not whole.isdigit() or not (frac == "" or (frac.isdigit() and len(frac) <= 2)):
        raise argparse.ArgumentTypeError(f"not an amount: {text!r} (e.g. 12.34)")
    return int(whole) * 100 + int(frac.ljust(2, "0") or 0)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.host != "127.0.0.1" and not args.host.startswith("127."):
        print("bench.terminal: only loopback addresses are allowed", file=sys.stderr)
        return 2
    try:
        answers = asyncio.run(one_shot(args))
    except (TimeoutError, OSError, Unanswered) as exc:
        print(f"bench.terminal: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    last = answers[-1] if answers else {}
    ok = last.get("rc") == "00" and last.get("mac_ok") is True
    if args.json:
        print(json.dumps({"ok": ok, "answers": answers}))
    else:
        for a in answers:
            print(
                f"{a['step']}: {a['mti']} rc={a['rc']} mac_ok={a['mac_ok']}"
                + (f" settlement_code={a['settlement_code']}" if "settlement_code" in a else "")
            )
            for f, v in dict(a["fields"]).items():  # type: ignore[call-overload]
                print(f"  F{f:>2}: {v}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
