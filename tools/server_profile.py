"""Where the reference server's time goes under a load: py-spy samples of every thread, summed.

    .venv/bin/python -m tools.server_profile examples/azure-cpu.toml   # -> results/reference-cpu/azure-profile/

Starts the spec's reference engine (its server arguments), attaches py-spy (`pip install py-spy`)
to the server process, plays the spec's workload against it (`tierbench run` with the server as a
URL engine), and sums the samples per thread and per category of the innermost frame of ours or
of a library we name (CATEGORIES, the innermost frame that matches). py-spy skips a thread while
it waits (the engine thread for work, the event loop in its poll), so a thread's samples over
the wall time times the rate is its busy share. Writes profile.json (the counts), profile.md (the table) and the raw
collapsed stacks (stacks.txt) under OUT.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROG = "python -m tools.server_profile"
RATE = 200  # samples/s

# (category, substring of a frame "function (file:line)"), tested from the innermost frame out;
# the first frame that matches any entry decides
CATEGORIES = [
    ("attention", "attention.py"), ("attention", "cpu_attention.py"),
    ("sampling", "sampler.py"),
    ("model: matmuls, norms, rotary, MLP", "model.py"),
    ("runner: batch preparation", "model_runner.py"),
    ("scheduler and block pool", "scheduler.py"), ("scheduler and block pool", "block_pool.py"),
    ("scheduler and block pool", "retention.py"),
    ("engine step bookkeeping", "engine.py"),
    ("tokenizer and detokenizer", "tokenizer.py"), ("tokenizer and detokenizer", "tokenizers"),
    ("request handling (engine_loop.py)", "engine_loop.py"),
    ("SSE framing", "sse.py"), ("request parsing", "api_protocol.py"),
    ("HTTP: uvicorn, starlette, fastapi", "uvicorn"), ("HTTP: uvicorn, starlette, fastapi", "starlette"),
    ("HTTP: uvicorn, starlette, fastapi", "fastapi"), ("HTTP: uvicorn, starlette, fastapi", "h11"),
    ("metrics", "metrics.py"),
    ("asyncio", "asyncio"),
]


def category(frames: list[str]) -> str:
    for frame in reversed(frames):  # innermost last in py-spy's collapsed format
        for name, key in CATEGORIES:
            if key in frame:
                return name
    return "other"


def summarize(stacks_path: Path) -> dict:
    """Counts per thread and category from py-spy's raw (collapsed) output with --threads, whose
    first frame names the thread: "thread (TID): NAME"."""
    per = defaultdict(Counter)
    for line in stacks_path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1]
        per[thread][category(frames[1:])] += int(n)
    return {t: dict(c.most_common()) for t, c in per.items()}


def table(counts: dict, wall_s: float) -> str:
    """Per thread: its busy share of the wall time (py-spy leaves out samples of a thread that
    is waiting), then where the busy samples went."""
    lines = []
    for thread, c in sorted(counts.items(), key=lambda kv: -sum(kv[1].values())):
        busy = sum(c.values())
        lines += [f"### {thread}: busy {busy / (wall_s * RATE):.0%} of {wall_s:.0f} s ({busy} samples)", "",
                  "| category | share of busy samples |", "|---|---:|"]
        lines += [f"| {k} | {v / busy:.1%} |" for k, v in c.items()]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.spec import load_spec
    from engines.launch import EngineSpec, Server
    from engines.provenance import provenance
    from engines.tiny_model import ensure_tiny_model

    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[1])
    ap.add_argument("spec", help="a run spec with a reference engine")
    ap.add_argument("--out", default=str(REPO / "results" / "reference-cpu" / "azure-profile"))
    a = ap.parse_args(argv)
    command = " ".join([PROG, *(argv if argv is not None else sys.argv[1:])])
    if shutil.which("py-spy") is None and not (Path(sys.executable).parent / "py-spy").exists():
        print(f"{PROG}: py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    spec = load_spec(a.spec)
    ref = next((e for e in spec.engines if e.kind == "reference"), None)
    if ref is None:
        print(f"{PROG}: {a.spec}: no reference engine in [[engines]]", file=sys.stderr)
        return 2
    model = spec.model if spec.model not in (None, "tiny") else str(ensure_tiny_model(0))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, \
            Server(EngineSpec("reference", model=model, args=list(ref.args)), Path(tmp)).start() as server:
        stacks = out / "stacks.txt"
        spy = subprocess.Popen([pyspy, "record", "--pid", str(server.proc.pid), "--format", "raw", "--threads",
                                "--rate", str(RATE), "--output", str(stacks)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        t0 = time.monotonic()
        run = subprocess.run([sys.executable, "-m", "bench", "run", a.spec, "--engine", server.base_url,
                              "--out", str(Path(tmp) / "run"), "--quiet"], cwd=REPO, capture_output=True, text=True)
        wall_s = time.monotonic() - t0
        spy.send_signal(2)  # SIGINT: py-spy writes what it sampled and exits
        spy.wait(60)
        if run.returncode != 0:
            print(f"{PROG}: the run failed:\n{run.stderr[-2000:]}", file=sys.stderr)
            return 1
        summary = json.loads((Path(tmp) / "run" / "run.json").read_text()).get("summary", {})
    counts = summarize(stacks)
    doc = {"what": "py-spy samples of the reference server per thread and category", "command": command,
           "rate_hz": RATE, "wall_s": round(wall_s, 1), "categories": CATEGORIES, "counts": counts, "run_summary": summary,
           "provenance": provenance(command)}
    (out / "profile.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "profile.md").write_text(f"# Reference server under `{a.spec}`\n\n`{command}` at commit "
                                    f"{doc['provenance']['git_commit'][:7]}\n\n{table(counts, wall_s)}")
    print(table(counts, wall_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
