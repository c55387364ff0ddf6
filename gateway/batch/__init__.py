"""Batch jobs and the files they read and write (OpenAI's ``/v1/files`` and ``/v1/batches``),
run on any provider that batches, priced at batch prices and kept in the ledger."""

from gateway.batch.service import Batches, BatchPoller, batch_headers, batch_object, file_object

__all__ = ["BatchPoller", "Batches", "batch_headers", "batch_object", "file_object"]
