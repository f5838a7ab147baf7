"""Optional third-party packages: when a missing import means "not installed here", and when a bug.

Why: catching every ``ImportError`` as "feature not available" also hides a typo in our own
code (``from core.queu import ...``) or a broken install (``cannot import name ...``) behind a
friendly "not installed" note. Only a :class:`ModuleNotFoundError` whose missing module *is* one
of the optional packages named here (or a submodule of it) means the feature is not installed;
everything else is an error and is shown as one.
"""
from __future__ import annotations

# Parts of the app a machine may lack: CVAT (cvat-sdk), Datumaro files, ONNX export/runtime, the
# Jetson engine (TensorRT, pycuda), extra backbones (timm), fast JPEG decoding (OpenCV).
OPTIONAL_PACKAGES: frozenset[str] = frozenset({
    "cvat_sdk", "datumaro", "onnx", "onnxruntime", "tensorrt", "pycuda", "timm", "cv2",
})


def missing_optional(exc: BaseException, packages: frozenset[str] | set[str] | str = OPTIONAL_PACKAGES
                     ) -> str | None:
    """The optional package whose absence raised ``exc``, else None.

    ``packages``: the optional package(s) the caller is ready to do without (default: all of
    :data:`OPTIONAL_PACKAGES`). Anything else, an ``ImportError`` that is not a missing module
    included, returns None and should be re-raised or shown as an error.
    """
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    allowed = {packages} if isinstance(packages, str) else set(packages)
    top = exc.name.split(".", 1)[0]
    return top if top in allowed else None
