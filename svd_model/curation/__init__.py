"""Data curation as in the SVD paper (arXiv 2311.15127, section 3.1 and appendix C): decode, cascaded cut
detection, clip splitting, motion / text / CLIP scores, captions, filtering, manifest, report.

Library code only: nothing here imports ComfyUI. Nodes in ``training_nodes/`` are thin adapters.
"""
