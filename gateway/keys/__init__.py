"""Virtual keys and teams: stored hashed in the ledger's database (``store``), created and
changed by one set of rules (``admin``) whichever surface asks."""

from gateway.keys.admin import (
    KeyAdmin,
    KeyChange,
    KeySpec,
    TeamChange,
    TeamSpec,
    key_store_disabled,
)
from gateway.keys.sessions import SessionStore, ui_sessions_table
from gateway.keys.store import (
    KEY_FIELDS,
    KEY_PREFIX,
    LIMIT_FIELDS,
    KeyStore,
    Limited,
    Team,
    VirtualKey,
    hash_key,
    keys_table,
    teams_table,
)

__all__ = [
    "KEY_FIELDS",
    "KEY_PREFIX",
    "LIMIT_FIELDS",
    "KeyAdmin",
    "KeyChange",
    "KeySpec",
    "KeyStore",
    "Limited",
    "SessionStore",
    "Team",
    "TeamChange",
    "TeamSpec",
    "VirtualKey",
    "hash_key",
    "key_store_disabled",
    "keys_table",
    "teams_table",
    "ui_sessions_table",
]
