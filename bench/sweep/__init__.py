"""Load sweeps and SLO capacity (`tierbench sweep`): one engine at a sequence of load points on
the same materialized workload, open loop over request rates or closed loop over concurrent
agent sessions, each point a normal run directory; saturation ends a sweep early, and a
bisection finds the highest load at which the SLOs hold.

  axis.py       the load points: lists, geometric series, `auto`
  config.py     SweepConfig: the [sweep] table and the flags over it
  verdict.py    per point: do the SLOs hold (the early-stop rules' decisions), did it saturate
  runner.py     servers kept up across points, the points, the capacity search, sweep.json

May import bench.run / bench.spec / engines.launch (it drives engines over HTTP like `tierbench
run`) and analysis/ (to read each point's results).
"""
