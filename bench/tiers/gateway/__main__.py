"""`python -m bench.tiers.gateway --config gateway.json --port 9000 [--host H] [--log calls.jsonl]`:
the gateway process (GatewayProcess starts it). Exit status 2 on a bad config."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.tiers.gateway.config import build_policy, load_config
from bench.tiers.gateway.proxy import Gateway, run_forever, serve

if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m bench.tiers.gateway",
                                 description="The tier gateway: a real HTTP proxy in front of each tier's engine.")
    ap.add_argument("--config", required=True, help="gateway config JSON (tiers, routing, seed, max_body_bytes)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--log", default=None, help="append one JSON line per call here")
    ap.add_argument("--trace-chunks", action="store_true", help="log every piece's arrival and delivery time")
    args = ap.parse_args()
    try:
        cfg = load_config(json.loads(Path(args.config).read_text()))
        policy = build_policy(cfg.routing, cfg.tiers)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"bench.tiers.gateway: error: {args.config}: {e}", file=sys.stderr)
        sys.exit(2)
    gw = Gateway(cfg, policy, args.log, args.trace_chunks)
    try:
        run_forever(serve(gw, args.host, args.port))
    except KeyboardInterrupt:
        pass
