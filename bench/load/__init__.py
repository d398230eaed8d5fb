"""Load generation: the materialized workload (workload.py), the streaming client and its
timestamps (client.py), per-call records written as calls complete (recorder.py), the open-loop
scheduler (open_loop.py), closed-loop agent sessions through locust (closed_loop.py with its
locustfile locust_user.py), one repetition against one endpoint (runner.py), early stopping
(early_stop.py) and the live progress bar (progress.py)."""
