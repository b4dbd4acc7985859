"""The MOVE journal: what a MOVE was doing, kept durable so that the user's next login finishes a
MOVE the proxy's own death interrupted (:mod:`.entry`, :mod:`.recovery`, :mod:`.store`)."""
