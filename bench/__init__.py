"""Load generation, runs and the command line.

- `cli/`: `tierbench`, one module per command group.
- `spec.py` (typed run specs), `run.py` (the run orchestrator), `rundir.py` (run.json).
- `load/`: the workload, the streaming client, the recorder, the open and closed (locust) loops,
  early stopping, the progress bar.
- `tiers/`: network profiles, pricing, routing policies, the tier gateway, runs through tiers and
  the tier study.
- `ab/`: interleaved A/B runs of two engine variants (`tierbench ab`), for comparisons and
  gates that the machine's drift cannot fool.
- `measure/`: what measures tierbench itself (the instant server, calibration, the soak, vLLM's
  own benchmark client); scripts that regenerate committed results live in tools/.

May import: traces/ (to read and materialize workloads), engines/ (to start servers and for the
process and provenance helpers) and analysis/ (to summarize a finished run). Engines are driven
over HTTP only: nothing here calls an engine in-process.
"""
