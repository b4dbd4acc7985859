"""The IMAP wire: framing, grammar, capability lists, response classification, PROXY headers.

Sans-IO and policy-free: nothing here knows about MOVE or sessions."""
