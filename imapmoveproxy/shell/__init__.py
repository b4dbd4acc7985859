"""The trio shell: listener and drain, one connection's tasks, locks, TLS and upstream setup."""
