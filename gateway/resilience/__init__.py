"""Running a Plan honestly: retries and fail-over per attempt (``attempts``), each attempt's
I/O through the transport (``upstream``), and the guard on every upstream stream
(``stream_guard``: stalls, cuts and malformed events never pass as a complete answer)."""

from gateway.resilience.attempts import AttemptRecord, Attempts, run_plan, within
from gateway.resilience.stream_guard import UpstreamStream, has_output
from gateway.resilience.upstream import open_response, read_answer

__all__ = [
    "AttemptRecord",
    "Attempts",
    "UpstreamStream",
    "has_output",
    "open_response",
    "read_answer",
    "run_plan",
    "within",
]
