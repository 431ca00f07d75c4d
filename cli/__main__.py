"""``python -m comfyui_svd_lab.cli``: the ``svd-lab`` command."""

from . import main

raise SystemExit(main())
