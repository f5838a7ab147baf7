"""Manual route: round zip out, Datumaro export in (good, partial, foreign, malicious)."""
from __future__ import annotations

import hashlib
import io
import json
import stat
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from cvat_helpers import add_pool
from core.cli import main
from cvat_bridge.manual import export_round
from data.naming import upload_stem
from data.datumaro_io import DatumaroImportError, import_datumaro

TRACE = Path(__file__).resolve().parents[2] / "shared" / "cvat-trace"
GOOD = {"color": "red", "type": "sedan", "orientation": "front"}


def export_doc(items: list[tuple[str, dict | None]], *, labels=("vehicle",),
               attributes=("color", "occluded", "orientation", "type")) -> dict:
    """A default.json shaped like CVAT 2.23's Datumaro 1.0 export (trace flow e)."""
    out = []
    for frame, (item_id, values) in enumerate(items):
        anns = [] if values is None else [{"id": 0, "type": "label", "attributes": values,
                                           "group": 0, "label_id": 0}]
        out.append({"id": item_id, "annotations": anns, "attr": {"frame": frame},
                    "image": {"path": f"{item_id}.jpg", "size": [24, 32]}})
    return {"info": {}, "categories": {
        "label": {"labels": [{"name": n, "parent": "", "attributes": []} for n in labels],
                  "attributes": list(attributes)}, "points": {"items": []}}, "items": out}


def write_zip(path: Path, doc: dict, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("annotations/default.json", json.dumps(doc))
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def label_rows(ws) -> list:
    with ws.store() as store:
        return store.conn.execute("SELECT * FROM labels").fetchall()


def stems_of(ws, ids) -> list[str]:
    with ws.store() as store:
        return [upload_stem(r.id, r.name) for r in store.images(ids)]


def test_manual_round_trip_through_exported_zip(workspace, tmp_path):
    ids = add_pool(workspace, 5, folders=2)
    with workspace.store() as store:
        number = store.create_round(ids, kind="seed")
        res = export_round(workspace, store, number, tmp_path / "round.zip")
    assert res.images == 5 and not res.missing
    with zipfile.ZipFile(tmp_path / "round.zip") as zf:
        names = zf.namelist()
        readme = zf.read("README.md").decode()
        spec = json.loads(zf.read("labels.json"))
    images = sorted(n for n in names if n.startswith("images/"))
    assert len(images) == 5 and len(set(images)) == 5
    assert "Datumaro 1.0" in readme and "import-datumaro" in readme and "`purple`" in readme
    assert spec[0]["name"] == "vehicle" and spec[0]["type"] == "tag"
    assert [a["name"] for a in spec[0]["attributes"]] == ["color", "type", "orientation"]

    # What CVAT exports after the team labelled the uploaded files (ids = names w/o extension).
    stems = [Path(n).stem for n in images]
    doc = export_doc([(stems[0], GOOD), (stems[1], {"color": "grey", "type": "lorry",
                                                      "orientation": "rear-right"}),
                      (stems[2], None), (stems[3], GOOD), (stems[4], GOOD)])
    report = import_datumaro(workspace, write_zip(tmp_path / "export.zip", doc))
    assert report.counts == {"imported": 4, "unchanged": 0, "unlabelled": 1, "rejected": 0,
                             "skipped": 0, "held": 0}
    with workspace.store() as store:
        lv = store.current_label(int(stems[1].split("_")[0]))
        assert lv.values == {"color": "gray", "type": "truck", "orientation": "back-right"}
        assert lv.source == "import" and lv.source_ref == "file:export.zip"
    again = import_datumaro(workspace, tmp_path / "export.zip")
    assert again.counts["imported"] == 0 and again.counts["unchanged"] == 4


def test_partial_export_imports_good_items_and_reports_the_rest(workspace, tmp_path):
    ids = add_pool(workspace, 4)
    s = stems_of(workspace, ids)
    doc = export_doc([
        (s[0], GOOD),
        (s[1], {"color": "pink", "type": "sedan", "orientation": "front"}),
        (s[2], {"colour": "red", "type": "sedan"}),
        ("999_not-ours", GOOD),
        (s[3], {"color": "blue", "type": "", "orientation": ""}),      # partial label
    ])
    path = tmp_path / "default.json"
    path.write_text(json.dumps(doc))
    report = import_datumaro(workspace, path)
    assert [i for i, _ in report.imported] == [s[0], s[3]]
    rejected = dict(report.rejected)
    assert "pink" in rejected[s[1]]
    assert "colour" in rejected[s[2]]
    assert dict(report.skipped)["999_not-ours"] == "no pool image with this file name"
    with workspace.store() as store:
        assert store.current_label(ids[3]).values == {"color": "blue"}
        assert store.current_label(ids[1]) is None


def test_real_cvat_export_from_trace(workspace, tmp_path):
    trace = TRACE / "trace-e-export-sdk2.80.jsonl"
    if not trace.is_file():
        pytest.skip(f"CVAT traces not available at {TRACE}")
    rec = [json.loads(line) for line in trace.read_text().splitlines()][3]
    doc = rec["response"]["body"]["annotations/default.json"]
    with workspace.store() as store:
        for i in range(6):
            buf = io.BytesIO()
            Image.new("RGB", (64 + 8 * i, 48), (i, 0, 0)).save(buf, "JPEG")
            data = buf.getvalue()
            store.add_image(path=f"trace/img_{i}.jpg", name=f"img_{i}.jpg",
                            sha256=hashlib.sha256(data).hexdigest(), width=64 + 8 * i,
                            height=48, nbytes=len(data), split="train")
    report = import_datumaro(workspace, write_zip(tmp_path / "trace.zip", doc))
    assert report.counts["imported"] == 4 and sorted(report.unlabelled) == ["img_2", "img_4"]
    with workspace.store() as store:
        got = {store.image(i).name: v for i, v in store.current_labels().items()}
    assert got["img_1.jpg"] == {"color": "blue", "orientation": "back-left", "type": "suv"}


@pytest.mark.parametrize("doc, match", [
    (export_doc([("a", GOOD)], labels=("car", "person")), "not made with our label spec"),
    (export_doc([("a", {"colour": "red"})], attributes=("colour", "kind")), "none of ours"),
    ({"info": {}, "categories": {}, "items": []}, "no items|not made"),
])
def test_foreign_exports_are_refused_and_nothing_written(workspace, tmp_path, doc, match):
    add_pool(workspace, 2)
    with pytest.raises(DatumaroImportError, match=match):
        import_datumaro(workspace, write_zip(tmp_path / "foreign.zip", doc))
    assert label_rows(workspace) == []


def _zip_with_member(path: Path, info: zipfile.ZipInfo, data: bytes, doc: dict) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("annotations/default.json", json.dumps(doc))
        zf.writestr(info, data)
    return path


@pytest.mark.parametrize("member", ["../../evil.json", "/tmp/evil-abs.json",
                                    "annotations/../../evil.json", "C:/evil.json", "symlink"])
def test_malicious_zip_entries_refuse_the_whole_archive(workspace, tmp_path, member):
    ids = add_pool(workspace, 1)
    doc = export_doc([(stems_of(workspace, ids)[0], GOOD)])
    if member == "symlink":
        info = zipfile.ZipInfo("annotations/link.json")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        data = b"/etc/passwd"
    else:
        info = zipfile.ZipInfo(member)
        data = b"{}"
    bad = _zip_with_member(tmp_path / "bad.zip", info, data, doc)
    with pytest.raises(DatumaroImportError, match="outside the extraction folder"):
        import_datumaro(workspace, bad)
    assert label_rows(workspace) == []
    assert not (tmp_path.parent / "evil.json").exists() and not Path("/tmp/evil-abs.json").exists()


@pytest.mark.parametrize("content, match", [
    (b"{not json", "not a readable Datumaro export"),
    (b"PK\x03\x04 broken", "not a valid zip|not a readable"),
])
def test_malformed_files(workspace, tmp_path, content, match):
    path = tmp_path / ("x.json" if content.startswith(b"{") else "x.zip")
    path.write_bytes(content)
    with pytest.raises(DatumaroImportError, match=match):
        import_datumaro(workspace, path)


def test_zip_without_annotations_is_not_datumaro(workspace, tmp_path):
    path = tmp_path / "images.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("images/a.jpg", b"x")
    with pytest.raises(DatumaroImportError, match="no annotations"):
        import_datumaro(workspace, path)


def test_ambiguous_base_names_are_skipped(workspace, tmp_path):
    add_pool(workspace, 2, folders=2)                     # cam0/img_000.jpg, cam1/img_000.jpg
    report = import_datumaro(workspace, write_zip(tmp_path / "e.zip",
                                                  export_doc([("img_000", GOOD)])))
    assert "ambiguous" in dict(report.skipped)["img_000"]
    assert label_rows(workspace) == []


def test_cli_import_datumaro(workspace, tmp_path, capsys):
    ids = add_pool(workspace, 2)
    s = stems_of(workspace, ids)
    good = write_zip(tmp_path / "ok.zip", export_doc([(s[0], GOOD), (s[1], {"color": "pink"})]))
    assert main(["--workspace", str(workspace.root), "import-datumaro", str(good)]) == 0
    out = capsys.readouterr().out
    assert "imported 1" in out and "rejected 1" in out and "pink" in out
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert main(["--workspace", str(workspace.root), "import-datumaro", str(bad)]) == 2
    assert "error:" in capsys.readouterr().err
