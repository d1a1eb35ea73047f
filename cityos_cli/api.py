"""``cityos api``: run the City OS API (``serve``) and manage its scoped tokens (``token create|list|revoke``).

Tokens live in the store the API config names (``[auth] tokens_file``); the token itself is printed once, at
creation, on stdout (nothing else goes there, so ``cityos api token create ... > file`` captures just it), and is
never stored nor logged: the store keeps its SHA-256.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

__all__ = ["add_parser"]

#: Allocations between two young-generation collections in the API process (Python's default: 700).
GC_THRESHOLD = 50_000


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from cityos_api.app import create_app
    from cityos_api.settings import load_settings

    app = create_app(load_settings(args.config))
    # The API keeps large, long-lived state (the NGSI-LD world, frozen days, formatted times): Python's default
    # collector thresholds walk all of it every ~70,000 allocations, which a 2 MB answer makes in one request and
    # which showed as its slowest 1 %. Everything built at start is frozen out of collection, and collections are
    # rarer (the API makes no reference cycles worth collecting often).
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)
    # proxy_headers: behind the city's TLS reverse proxy on this machine, the client is its X-Forwarded-For (the
    # open routes' rate limit is per client); uvicorn trusts it only from --forwarded-allow-ips (loopback).
    uvicorn.run(app, host=args.host, port=args.port, proxy_headers=True,
                forwarded_allow_ips=args.forwarded_allow_ips, server_header=False)
    return 0


def _store(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from cityos_api.auth import TokenStore
    from cityos_api.settings import load_settings

    settings = load_settings(args.config)
    if settings.auth.tokens_file is None:
        raise SystemExit(f"cityos api token: {args.config} has no [auth] tokens_file")
    return TokenStore(settings.auth.tokens_file)


def _token(args: argparse.Namespace) -> int:
    from cityos_api.auth import parse_expiry

    store = _store(args)
    try:
        if args.token_action == "create":
            rec, token = store.create(args.name, args.scope, parse_expiry(args.expires))
            print(token)
            print(f"token {rec.id} ({rec.name}): scopes {', '.join(rec.scopes)}, expires {rec.expires}; shown "
                  "once: keep it in a 0600 file", file=sys.stderr)
        elif args.token_action == "list":
            rows = [r.public() for r in store.records()]
            if args.json:
                print(json.dumps(rows, indent=2, ensure_ascii=False))
            else:
                print(f"{'id':8}  {'state':7}  {'expires':20}  {'scopes':40}  name")
                for r in rows:
                    print(f"{r['id']:8}  {r['state']:7}  {r['expires']:20}  {','.join(r['scopes']):40}  {r['name']}")
        else:
            rec = store.revoke(args.id)
            print(f"token {rec.id} ({rec.name}) revoked at {rec.revoked}; the API refuses it from its next request")
    except ValueError as exc:
        print(f"cityos api token {args.token_action}: {exc}", file=sys.stderr)
        return 2
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("api", help="the City OS API: serve it, manage its scoped tokens")
    acts = a.add_subparsers(dest="api_action", required=True, metavar="ACTION")
    s = acts.add_parser("serve", help="run the API with uvicorn")
    s.add_argument("--config", required=True, type=Path, help="API TOML config (cityos_api/settings.py)")
    s.add_argument("--host", default="127.0.0.1", help="(default: %(default)s; put a TLS reverse proxy in front)")
    s.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    s.add_argument("--forwarded-allow-ips", default="127.0.0.1",
                   help="proxies whose X-Forwarded-For is trusted (default: %(default)s)")
    s.set_defaults(func=_serve)

    t = acts.add_parser("token", help="scoped tokens: create, list, revoke")
    t.add_argument("--config", required=True, type=Path, help="API TOML config (its [auth] tokens_file)")
    ta = t.add_subparsers(dest="token_action", required=True, metavar="ACTION")
    c = ta.add_parser("create", help="a new token, printed once on stdout")
    # not `choices`: building the parser must not import the API (a gateway runs this CLI); the store checks
    c.add_argument("--scope", action="append", required=True,
                   help="service, internal:fleet or internal:energy-households (repeat for several)")
    c.add_argument("--expires", required=True, help="a duration (12h, 90d, 4w) or a date (YYYY-MM-DD, JST)")
    c.add_argument("--name", required=True, help="who holds it (a service, a person's role), shown by `list`")
    ls = ta.add_parser("list", help="every token: id, state, expiry, scopes, name (never the token)")
    ls.add_argument("--json", action="store_true")
    r = ta.add_parser("revoke", help="refuse a token from now on")
    r.add_argument("id", help="the token's id (8 hex digits, as `list` shows)")
    t.set_defaults(func=_token)
