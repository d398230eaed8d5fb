"""`tierbench serve` (the reference engine's server) and `tierbench model` (checkpoints for tests and demos)."""
from __future__ import annotations

from pathlib import Path

from bench.cli.common import BadInput, add_command


SERVE_DESCRIPTION = (
    'Serve a Llama-family checkpoint with the in-repo reference engine: /v1/completions, '
    '/v1/chat/completions (streaming), /v1/models, /health, /metrics.')


def register(sub) -> None:
    from engines.reference.serve_args import add_serve_arguments
    sp = add_command(sub, "serve", "start the reference engine's OpenAI-compatible server", SERVE_DESCRIPTION)
    add_serve_arguments(sp)
    sp.set_defaults(func=cmd_serve)

    model = add_command(sub, "model", "build models for tests and demos")
    msub = model.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    sp = add_command(msub, "tiny", "write a tiny random Llama checkpoint with its tokenizer (a few MB)")
    sp.add_argument("out_dir", metavar="OUT_DIR")
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(func=cmd_model_tiny)


def cmd_serve(args) -> int:
    from engines.reference.server import run_from_args
    if not Path(args.model).exists() and args.load_format != "dummy":
        raise BadInput(f"{args.model}: no such model directory (field 'model')")
    try:
        run_from_args(args)
    except (FileNotFoundError, ValueError) as e:  # a checkpoint the engine cannot load
        raise BadInput(f"{args.model}: {e}") from None
    return 0


def cmd_model_tiny(args) -> int:
    from engines.tiny_model import build_tiny_model
    out = build_tiny_model(args.out_dir, seed=args.seed)
    size = sum(p.stat().st_size for p in Path(out).iterdir())
    print(f"wrote {out} ({size / 1e6:.1f} MB, seed {args.seed})")
    return 0
