"""Load sweeps and SLO capacity (`tierbench sweep`): one engine at a sequence of load points on
the same materialized workload, open loop over request rates or closed loop over concurrent
agent sessions, each point a normal run directory; saturation ends a sweep early, and a
bisection finds the highest load at which the SLOs hold.

  axis.py       the load points: lists, geometric series, `auto`
  config.py     SweepConfig: the [sweep] table and the flags over it
  runner.py     servers kept up across points, the points, the capacity search, sweep.json
Each point's figures, its SLO verdict and the saturation tests are analysis/sweep.py's (they read
the points' run directories); the sweep's report is analysis/report_sweep.py.

May import bench.run / bench.spec / engines.launch (it drives engines over HTTP like `tierbench
run`) and analysis/ (to read each point's results).
"""
