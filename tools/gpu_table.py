"""README's "On a GPU" figures, generated from results/h100/engine.json (what gpu_bench measured
on a lent H100): the headline keys against their targets, the decode table, and the provenance.

    python -m tools.gpu_table           # rewrite README's `figures:gpu` block (python -m tools.readme_figures: all blocks)
    python -m tools.gpu_table --check   # exit 1 when that block differs from the file
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "results" / "h100" / "engine.json"
README = ROOT / "README.md"


def _verdict(value: float | None, target: float, better: str) -> str:
    if value is None:
        return "not measured"
    ok = value <= target if better == "lower" else value >= target
    return "met" if ok else "**not met**"


def render(record: dict) -> str:
    prov = record["provenance"]
    lines = [f"Measured on an {prov['gpu_name']} (driver {prov['driver']}, torch {prov['torch']}, triton "
             f"{prov['triton']}) at commit `{prov['commit'][:7]}`, {prov['date'][:10]}, whole run "
             f"{record['total_s']:.0f} s ([results/h100/engine.json](results/h100/engine.json)):", "",
             "| key | measured | target | |", "|---|---:|---|---|"]
    for key, t in record["targets"].items():
        v = record.get(key)
        shown = "-" if v is None else f"{v:.3g}"
        sign = "<=" if t["better"] == "lower" else ">="
        lines.append(f"| `{key}` | {shown} {t['unit']} | {sign} {t['target']:g} | {_verdict(v, t['target'], t['better'])} |")
    cells = [c for c in record["stages"].get("decode", {}).get("cells", []) if "ms_per_step" in c]
    if cells:
        lines += ["", "| decode step (ms) | graphs on | graphs off |", "|---|---:|---:|"]
        for bs, ctx in dict.fromkeys((c["batch"], c["context"]) for c in cells):
            on = next((c["ms_per_step"] for c in cells if (c["batch"], c["context"], c.get("graphs")) == (bs, ctx, True)), None)
            off = next((c["ms_per_step"] for c in cells if (c["batch"], c["context"], c.get("graphs")) == (bs, ctx, False)), None)
            lines.append(f"| batch {bs}, context {ctx} | {'-' if on is None else f'{on:.2f}'} | "
                         f"{'-' if off is None else f'{off:.2f}'} |")
    hf = record["stages"].get("hf", {}).get("rows", [])
    if hf:
        lines += ["", "| HF `generate`, 1,024 in / 128 out | engine tok/s | HF tok/s | speedup |", "|---|---:|---:|---:|"]
        for r in hf:
            if "speedup" in r:
                lines.append(f"| batch {r['batch']} | {r['engine_output_tok_per_s']:.0f} | {r['hf_output_tok_per_s']:.0f} | "
                             f"{r['speedup']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    # The table lives in README's `figures:gpu` block, which tools/readme_figures.py renders with
    # the rest; this entry point rewrites or checks that one block.
    from tools.readme_figures import BLOCKS, README as TEXT, replace_block

    ap = argparse.ArgumentParser(prog="python -m tools.gpu_table", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when README.md is not what the result gives")
    args = ap.parse_args()
    text = TEXT.read_text(encoding="utf-8")
    new = replace_block(text, "gpu", BLOCKS["gpu"](ROOT))
    if args.check:
        if new != text:
            print(f"{README}: block 'gpu' differs from {RESULT}; run python -m tools.readme_figures", file=sys.stderr)
            sys.exit(1)
    elif new != text:
        README.write_text(new, encoding="utf-8")
        print(f"rewrote block 'gpu' in {README}")
