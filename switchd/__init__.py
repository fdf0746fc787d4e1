"""switchd: the trio daemon (listeners, sessions, handlers, ledger, CLI)."""
