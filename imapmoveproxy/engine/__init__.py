"""The sans-IO session: client input, upstream routing, the selected mailbox, commands in flight."""
