"""Checkpoint files and what is in them: safetensors I/O with the pack's memory policy (:mod:`.checkpoint`,
refusals explained by :mod:`.diagnose`), the one place that reads key names and shapes (:mod:`.detect`), loading
and saving model bundles (:mod:`.loader`), the diffusers-format conversion, and tiny random models for tests and
the CLI's stand-ins (:mod:`.tiny`)."""
