"""The unit tier: tests that need no IMAP server, no socket to a peer and no real time
(``make check``). Its modules are imported as ``unit.test_...``, so that their names never clash
with the integration tests' in tests/."""
