"""Optional imports (issue 11, defect 6): only a missing *optional* package is "not available"."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from data.optional import OPTIONAL_PACKAGES, missing_optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))
import ui  # noqa: E402  - the same module object the pages import


def test_missing_optional_names_only_optional_packages() -> None:
    assert "cvat_sdk" in OPTIONAL_PACKAGES
    assert missing_optional(ModuleNotFoundError("x", name="cvat_sdk")) == "cvat_sdk"
    assert missing_optional(ModuleNotFoundError("x", name="tensorrt.plugins")) == "tensorrt"
    assert missing_optional(ModuleNotFoundError("x", name="core.queu")) is None  # a typo
    assert missing_optional(ImportError("cannot import name 'Y'", name="cvat_sdk")) is None
    assert missing_optional(ModuleNotFoundError("x")) is None                   # no name
    assert missing_optional(ValueError("cvat_sdk")) is None
    assert missing_optional(ModuleNotFoundError("x", name="cv2"), "cv2") == "cv2"
    assert missing_optional(ModuleNotFoundError("x", name="onnx"), "cv2") is None


class _FakeSt:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def warning(self, text: str, **kwargs) -> None:
        self.calls.append(("warning", text))

    def error(self, text: str, **kwargs) -> None:
        self.calls.append(("error", text))


@pytest.mark.parametrize("exc, kind, text", [
    (ModuleNotFoundError("No module named 'cvat_sdk'", name="cvat_sdk"), "warning",
     "CVAT is not available in this installation (the cvat_sdk package is not installed)."),
    (ModuleNotFoundError("No module named 'core.queu'", name="core.queu"), "error",
     "Something went wrong (ModuleNotFoundError)"),
    (ImportError("cannot import name 'Client' from 'cvat_sdk'"), "error",
     "Something went wrong (ImportError)"),
])
def test_page_guard_tells_a_missing_feature_from_a_bug(monkeypatch, exc, kind, text) -> None:
    fake = _FakeSt()
    monkeypatch.setattr(ui, "st", fake)
    with ui.guard("CVAT"):
        raise exc
    assert len(fake.calls) == 1
    assert fake.calls[0][0] == kind and fake.calls[0][1].startswith(text)
