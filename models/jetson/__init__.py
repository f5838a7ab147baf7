"""Jetson deployment: TensorRT engine builder and runner (copied into the bundle) + bundle maker.

``common.py``, ``build_engine.py`` and ``run_engine.py`` run on the device from the bundle folder
and import nothing from this project; ``bundle.py`` runs here and packs them.
"""
