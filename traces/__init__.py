"""Agent workload traces: the trace model, readers and writers for real formats, the synthetic
agent workload generator and its fitting, characterization statistics, and materialization of
calls to exact token ids.

May import: the standard library and third-party packages only, nothing else of tierbench.
"""
from traces.errors import TraceError
from traces.model import Call, Session, Trace

__all__ = ["Call", "Session", "Trace", "TraceError"]
