"""The pure decision core: samples and time in, a verdict out. No I/O, no clock, no gunicorn."""

from .limits import Allowance, Ceiling, SoftLimit, draw_limit
from .verdict import GRACEFUL, KEEP, REASONS, Action, Monitor, Reason, Sample, Verdict
from .worker import Growth, WorkerPolicy, build_policy

__all__ = [
    "GRACEFUL",
    "KEEP",
    "REASONS",
    "Action",
    "Allowance",
    "Growth",
    "Ceiling",
    "Monitor",
    "Reason",
    "Sample",
    "SoftLimit",
    "Verdict",
    "WorkerPolicy",
    "build_policy",
    "draw_limit",
]
