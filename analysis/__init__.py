"""Analysis of run results: metric definitions, statistics with confidence intervals, comparisons,
the regression gate and HTML reports.

May import: nothing of tierbench's other packages; it reads result files only.
"""
