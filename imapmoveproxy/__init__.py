"""imapmoveproxy: an IMAP proxy that adds MOVE (RFC 6851) in front of servers that lack it."""

__version__ = "0.1.0"
