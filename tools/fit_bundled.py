"""Regenerate the bundled profiles (traces/profiles/*.json) from the shared real traces:
`python -m tools.fit_bundled [--shared DIR] [--tokenizer DIR]`.

- agentic-coding: fitted on the WEKA kv-cache-tester Claude Code sessions.
- swe-agent: fitted on the mini-swe-agent SWE-bench trajectories, tokenized with the tiny model's
  tokenizer (the SWE trace is text; token counts depend on the tokenizer).
- demo: swe-agent scaled down by `DEMO_SCALE` (traces.profile.scale_profile) so that a session
  runs in seconds on a CPU with the 2-layer tiny model.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from traces.fit import fit_profile
from traces.profile import Profile, scale_profile

PROFILES = Path(__file__).resolve().parents[1] / "traces" / "profiles"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "traces"
WEKA = "weka-kv-cache-tester"
SWE = "mini-swe-agent-gemini3-swebench"
# Prompts of a few hundred tokens (the tiny model's context is 8192), outputs of 16-32 tokens,
# 4-8 calls a session, think times of a fraction of a second to a couple of seconds, and no
# context above 4096 tokens.
DEMO_SCALE = dict(token_scale=0.1, think_scale=0.25, max_calls=8, min_calls=4, output_range=(16, 32),
                  think_clip=(0.2, 2.0), max_context=4096)


def tiny_tokenizer_dir() -> str | None:
    """The tiny model's directory (its tokenizer reads the SWE text trace), or None if the
    engines package is not there. bench/ may import engines/."""
    try:
        from engines.tiny_model import ensure_tiny_model
    except ImportError:
        return None
    return str(ensure_tiny_model())


def demo_from(swe: Profile) -> Profile:
    return scale_profile(swe, **DEMO_SCALE, name="demo", note=(
        "made by tools.fit_bundled: scale_profile(swe-agent, " + ", ".join(f"{k}={v}" for k, v in DEMO_SCALE.items())
        + "), a CPU demo with the tiny model"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.fit_bundled", description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(SHARED), help="the shared traces folder")
    ap.add_argument("--tokenizer", default=None, help="tokenizer dir for the SWE text trace (default: the tiny model's)")
    ap.add_argument("--out", default=str(PROFILES), help="where the profiles go")
    args = ap.parse_args(argv)
    from traces.load import load_trace
    shared, out = Path(args.shared), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    weka = load_trace(shared / WEKA, progress=True)
    p = fit_profile(weka, "agentic-coding", source=(
        "Claude Code sessions (WEKA kv-cache-tester, github.com/callanjfox/kv-cache-tester): real coding-agent "
        "sessions with their subagents, 64-token prefix blocks, think times by stop reason"))
    _write(p, out)

    tok = args.tokenizer or tiny_tokenizer_dir()
    if tok is None:
        print("swe-agent and demo not refitted: no tokenizer (pass --tokenizer DIR)", file=sys.stderr)
        return 1
    swe = load_trace(shared / SWE, tokenizer_dir=tok, progress=True)
    p = fit_profile(swe, "swe-agent", source=(
        "mini-swe-agent v1.15.0 on SWE-bench Verified with gemini-3-pro-preview (github.com/SWE-agent/mini-swe-agent "
        "trajectories): one bash command per step, linear history; tokens counted with the tiny model's tokenizer; "
        "think times estimated from response timestamps"))
    p.notes.append(f"tokenizer: {swe.meta.get('tokenizer', tok)} (vocabulary {swe.meta.get('tokenizer_vocab_size')})")
    _write(p, out)
    _write(demo_from(p), out)
    return 0


def _write(p: Profile, out: Path) -> None:
    # Name the trace as the shared folder does, not by this machine's absolute path.
    src = Path(p.fitted_from.get("path", ""))
    if src.is_absolute() and SHARED in src.parents:
        p.fitted_from["path"] = "shared/traces/" + src.relative_to(SHARED).as_posix()
    path = out / f"{p.name}.json"
    p.save(path)
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    sys.exit(main())
