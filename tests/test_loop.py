"""A whole round on a tiny pool: labels in -> train -> evaluate -> score -> queue, record written."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from core.cli import main
from core.loop import import_labels_csv, pending_ids, run_round
from core.rounds import sample_first_batch
from tests.al_helpers import make_pool

COLORS = ("red", "blue")


def _tiny_config(**kw):
    from models.train import TrainConfig

    base = dict(epochs=1, warm_epochs=1, image_size=32, batch_size=16, pretrained=False,
                num_threads=1, augment=False, bf16=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _labels_csv(ws, path, ids):
    with ws.store() as store:
        records = store.images(ids)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "color", "type", "orientation", "source"])
        for i, r in enumerate(records):
            w.writerow([f"images/{r.name}", COLORS[i % 2], "sedan" if i % 3 else "suv", "", "t"])
    return path


def test_round_end_to_end_writes_its_record(workspace, tmp_path):
    ids = make_pool(workspace, 48, splits=("train", "val", "test"))
    with workspace.store() as store:
        number, seed_ids = sample_first_batch(store, 30, seed=0)
    assert number == 0 and len(pending_ids(workspace)) == 30
    csv_path = _labels_csv(workspace, tmp_path / "labels.csv", seed_ids)
    steps = []
    rep = run_round(workspace, labels=csv_path, strategy="entropy", top_k=5, diversity="kcenter",
                    train_config=_tiny_config(), progress=lambda p: steps.append((p.fraction, p.message)))
    assert rep.status == "succeeded" and rep.round_number == 1
    assert steps[-1][0] == pytest.approx(1.0)
    assert [f for f, _ in steps] == sorted(f for f, _ in steps)
    assert {m.split(":")[0] for _, m in steps} >= {"labels", "train", "evaluate", "score", "queue"}
    with workspace.store() as store:
        rnd = store.round(1)
        model = store.current_model()
        test_ids = {r.id for r in store.images(split="test")}
        labelled = store.labelled_ids()
    rec = rnd["record"]
    assert rnd["strategy"] == "entropy" and rnd["size"] == 5 and rnd["model_id"] == model["id"]
    assert rec["imported"]["added"] == 30 and rec["labels"]["total"] == 30
    assert rec["model_id"] == model["id"] and rec["warm_started_from"] is None
    test_metrics = rec["metrics"]["test"]
    assert set(test_metrics["accuracy"]) == {"color", "type", "orientation"}
    assert test_metrics["accuracy"]["color"] is not None and 0 <= test_metrics["mean_accuracy"] <= 1
    assert set(rec["timings"]) >= {"train_s", "evaluate_s", "score_s", "queue_s", "total_s"}
    assert rec["queue"]["diversity"] == "kcenter"
    queued = set(rep.queue.image_ids)
    assert not queued & test_ids and not queued & labelled

    # round 2 through the CLI: labels for the new batch, warm start from the round-1 model
    csv2 = _labels_csv(workspace, tmp_path / "labels2.csv", sorted(queued))
    code = main(["--workspace", str(workspace.root), "round", "--labels", str(csv2), "--top", "4",
                 "--strategy", "margin", "--epochs", "1", "--image-size", "32",
                 "--train-batch-size", "16", "--threads", "1", "--no-pretrained"])
    assert code == 0
    with workspace.store() as store:
        rnd2 = store.round(2)
    assert rnd2["record"]["warm_started_from"] == model["id"]
    assert rnd2["record"]["labels"]["total"] == 35 and rnd2["strategy"] == "margin"


def test_csv_import_skips_unknown_files(workspace, tmp_path):
    ids = make_pool(workspace, 4)
    path = _labels_csv(workspace, tmp_path / "l.csv", ids[:2])
    with open(path, "a", newline="") as fh:
        csv.writer(fh).writerow(["images/missing.jpg", "red", "", "", "t"])
    assert import_labels_csv(workspace, path) == {"added": 2, "unchanged": 0, "skipped": 1}
    assert import_labels_csv(workspace, path) == {"added": 0, "unchanged": 2, "skipped": 1}


def test_rank_and_score_cli(workspace, capsys):
    from tests.al_helpers import make_model

    make_pool(workspace, 20, splits=("train", "test"))
    ws = ["--workspace", str(workspace.root)]
    assert main([*ws, "rank", "--strategy", "bald", "--top", "3"]) == 2   # no model yet
    assert "needs a trained model" in capsys.readouterr().err
    make_model(workspace)
    assert main([*ws, "score", "--threads", "1"]) == 0
    assert "scored 10 images" in capsys.readouterr().out
    assert main([*ws, "rank", "--strategy", "entropy", "--top", "3", "--weights", "orientation=2",
                 "--diversity"]) == 0
    out = capsys.readouterr().out
    assert "recorded as round 0" in out and "kcenter" in out
    assert main([*ws, "rank", "--top", "3", "--weights", "colour=2"]) == 2
    assert "unknown attributes" in capsys.readouterr().err
    assert main([*ws, "rank", "--list"]) == 0
    assert "bald" in capsys.readouterr().out


def test_round_cli_first_model_backbone_is_chosen_and_recorded(workspace, tmp_path, monkeypatch):
    """`round --backbone efficientnet_lite0` builds the first model on Lite0 and records it;
    the next round warm-starts and keeps Lite0 even when --backbone is not given."""
    import core.loop as loop

    seen = []
    real = loop.train_and_promote

    def spy(ws, config, **kw):
        seen.append((config.backbone, config.weights, config.warm_start))
        return real(ws, config, **kw)
    monkeypatch.setattr(loop, "train_and_promote", spy)
    make_pool(workspace, 36, splits=("train", "val", "test"))
    with workspace.store() as store:
        _, seed_ids = sample_first_batch(store, 24, seed=0)
    csv1 = _labels_csv(workspace, tmp_path / "l1.csv", seed_ids)
    ws = ["--workspace", str(workspace.root)]
    tiny = ["--top", "3", "--epochs", "1", "--image-size", "32", "--train-batch-size", "16",
            "--threads", "1", "--strategy", "entropy"]
    assert main([*ws, "round", "--backbone", "nope", *tiny]) == 2      # readable refusal
    assert main([*ws, "round", "--labels", str(csv1), "--backbone", "efficientnet_lite0",
                 *tiny, "--json"]) == 0
    with workspace.store() as store:
        model = store.current_model()
        rec = store.round(1)["record"]
        queued = sorted(pending_ids(workspace))
    assert seen[-1] == ("efficientnet_lite0", None, False)
    assert model["backbone"] == "efficientnet_lite0"
    assert rec["model"]["backbone"] == "efficientnet_lite0"
    assert rec["model"]["weights_origin"]["kind"] == "imagenet-package"
    csv2 = _labels_csv(workspace, tmp_path / "l2.csv", queued)
    assert main([*ws, "round", "--labels", str(csv2), *tiny]) == 0
    with workspace.store() as store:
        rec2 = store.round(2)["record"]
    assert seen[-1][2] is True and rec2["warm_started_from"] == model["id"]
    assert rec2["model"]["backbone"] == "efficientnet_lite0"
    assert rec2["model"]["weights_origin"]["kind"] == "checkpoint"


def test_round_cli_passes_a_backbone_weights_file(workspace, tmp_path, capsys):
    make_pool(workspace, 18, splits=("train", "val", "test"))
    with workspace.store() as store:
        _, seed_ids = sample_first_batch(store, 12, seed=0)
    csv1 = _labels_csv(workspace, tmp_path / "l1.csv", seed_ids)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not torch")
    code = main(["--workspace", str(workspace.root), "round", "--labels", str(csv1),
                 "--backbone", "resnet18", "--backbone-weights", str(bad), "--epochs", "1",
                 "--image-size", "32"])
    assert code == 2 and "not a readable PyTorch weights file" in capsys.readouterr().err
