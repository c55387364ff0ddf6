"""The spend ledger: one ``SpendRecord`` per request, written off the request path in batches
to SQLite (default) or PostgreSQL, with a daily roll-up for reports. See docs/ledger.md.

``records`` says what a record is (no database driver: a remote client reads records with it),
``ledger`` is one process's ledger (database, schema, writer), ``writer`` batches, ``store``
writes, ``reports`` and ``series`` read, ``schema`` and ``migrations`` describe the tables.
"""
