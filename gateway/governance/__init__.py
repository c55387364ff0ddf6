"""Data governance: where data may go (residency), the audit trail of administrative acts,
retention of what the gateway keeps, and erasure by person (see docs/governance.md)."""
