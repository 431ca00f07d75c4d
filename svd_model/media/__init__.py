"""Pixels in and out: reading videos and images (:mod:`.video`, :mod:`.image`), probing and refusing damaged
files (:mod:`.probe`), writing videos (:mod:`.write`), resizing (:mod:`.resize`) and colour spaces
(:mod:`.colour`)."""
