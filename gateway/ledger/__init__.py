"""The spend ledger: one ``SpendRecord`` per request, written off the request path in batches
to SQLite (default) or PostgreSQL, with a daily roll-up for reports. See docs/ledger.md."""

from gateway.ledger.db import create_ledger_engine, ledger_url
from gateway.ledger.ledger import Ledger
from gateway.ledger.migrate import current_revision, head_revision, upgrade
from gateway.ledger.records import Operation, SpendRecord, Surface, TokenCounts, token_counts
from gateway.ledger.reports import (
    GroupBy,
    RecordPage,
    SpendRow,
    export_records_csv,
    render_report,
    report_csv,
    spend_records,
    spend_report,
    write_records_csv,
)
from gateway.ledger.store import rebuild_daily, write_batch
from gateway.ledger.writer import LedgerWriter

__all__ = [
    "GroupBy",
    "Ledger",
    "LedgerWriter",
    "Operation",
    "RecordPage",
    "SpendRecord",
    "SpendRow",
    "Surface",
    "TokenCounts",
    "create_ledger_engine",
    "current_revision",
    "export_records_csv",
    "head_revision",
    "ledger_url",
    "rebuild_daily",
    "render_report",
    "report_csv",
    "spend_records",
    "spend_report",
    "token_counts",
    "upgrade",
    "write_batch",
    "write_records_csv",
]
