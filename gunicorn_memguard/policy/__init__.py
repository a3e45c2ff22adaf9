"""The pure decision core: samples and time in, a verdict out. No I/O, no clock, no gunicorn."""

from .limits import HardLimit, SoftLimit, draw_limit
from .verdict import KEEP, REASONS, Action, Monitor, Sample, Verdict
from .worker import Growth, WorkerPolicy, build_policy

__all__ = [
    "KEEP",
    "REASONS",
    "Action",
    "Growth",
    "HardLimit",
    "Monitor",
    "Sample",
    "SoftLimit",
    "Verdict",
    "WorkerPolicy",
    "build_policy",
    "draw_limit",
]
