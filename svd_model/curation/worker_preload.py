"""What the local engine's forkserver imports once, before it forks the curation workers (workers.mp_context):
the per-video pipeline, and what a worker's first video would otherwise load on first use. Every worker then
starts with them in memory (about 0.05 s less per worker than importing them during its first video).
"""

from __future__ import annotations

import numpy.ma  # noqa: F401 - np.median imports it on its first call (the cut scan, the text score)
from PIL import Image

from . import pipeline, text  # noqa: F401 - text: scoring imports it on first use

Image.preinit()  # the image plugins PIL loads on its first save (the report thumbnails are JPEG)
