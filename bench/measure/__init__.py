"""Measurements of tierbench itself, imported by commands and tests: the instant streaming server
(instant_server.py), the client's self-calibration (calibrate.py), the soak of the reference
server (soak.py), and vLLM's own benchmark client run beside ours (vllm_bench.py,
vllm_agreement.py). Scripts that only regenerate committed results live in tools/."""
