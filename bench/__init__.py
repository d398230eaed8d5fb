"""Load generation and the command line: run specs, the streaming client, the locust user and the
open-loop scheduler, latency tiers and the gateway, the run orchestrator, and `tierbench` itself.

May import: traces/ and engines/ (to start servers and materialize prompts); it drives engines
over HTTP only.
"""
