"""MOVE emulated over COPY, STORE and EXPUNGE: the request, the policies, the rollback."""
