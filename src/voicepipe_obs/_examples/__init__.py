"""Packaged examples: ``voice_pipeline`` (a link to ``examples/voice_pipeline.py``,
installed as a copy) and ``demo``, the library side of ``voicepipe demo``.

Importable as ``voicepipe_obs._examples.voice_pipeline`` so that
``voicepipe retry ID --app voicepipe_obs._examples.voice_pipeline`` works from a
wheel install. Nothing here is imported by the rest of the package.
"""
