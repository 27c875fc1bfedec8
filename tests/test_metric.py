"""Mean IoU: hand-computed cases, an independent per-class reference, accumulation, `evaluate` module."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from naclip_hf.evaluation import MeanIoU, compute_mean_iou, load_mean_iou_metric
from naclip_hf.evaluation.metric import MEAN_IOU_MODULE_PATH

RESULT_KEYS = {
    "mean_iou",
    "mean_accuracy",
    "overall_accuracy",
    "per_category_iou",
    "per_category_accuracy",
    "confusion_matrix",
}


def reference_mean_iou(predictions, references, num_labels, ignore_index=255, reduce_labels=False) -> dict:
    """Straightforward per-class loop over boolean masks (no confusion matrix, no bincount)."""
    tp = [0] * num_labels
    fp = [0] * num_labels
    fn = [0] * num_labels
    for prediction, reference in zip(predictions, references):
        prediction = np.asarray(prediction).astype(np.int64)
        reference = np.asarray(reference).astype(np.int64).copy()
        if reduce_labels:
            reference[reference == 0] = 255
            reference = reference - 1
            reference[reference == 254] = 255
        valid = reference != ignore_index
        for c in range(num_labels):
            is_pred = (prediction == c) & valid
            is_ref = (reference == c) & valid
            tp[c] += int((is_pred & is_ref).sum())
            fp[c] += int((is_pred & ~is_ref).sum())
            fn[c] += int((~is_pred & is_ref).sum())
    iou = np.array(
        [tp[c] / (tp[c] + fp[c] + fn[c]) if tp[c] + fp[c] + fn[c] else np.nan for c in range(num_labels)]
    )
    acc = np.array([tp[c] / (tp[c] + fn[c]) if tp[c] + fn[c] else np.nan for c in range(num_labels)])
    return {
        "mean_iou": float(np.nanmean(iou)),
        "mean_accuracy": float(np.nanmean(acc)),
        "overall_accuracy": sum(tp) / (sum(tp) + sum(fn)),
        "per_category_iou": iou,
        "per_category_accuracy": acc,
    }


def assert_same_result(result: dict, expected: dict) -> None:
    for key in ("mean_iou", "mean_accuracy", "overall_accuracy"):
        assert isinstance(result[key], float), key
        if math.isnan(expected[key]):
            assert math.isnan(result[key]), key
        else:
            assert result[key] == expected[key], (key, result[key], expected[key])
    for key in ("per_category_iou", "per_category_accuracy"):
        assert result[key].dtype == np.float64
        np.testing.assert_array_equal(result[key], expected[key], err_msg=key)  # NaN positions must agree too


def random_maps(seed: int, num_labels: int, count: int = 6, absent: tuple[int, ...] = ()):
    """Label maps of varying sizes with some ignore pixels; classes in `absent` never occur as reference."""
    rng = np.random.default_rng(seed)
    present = [c for c in range(num_labels) if c not in absent]
    predictions, references = [], []
    for _ in range(count):
        shape = (int(rng.integers(3, 12)), int(rng.integers(3, 12)))
        reference = rng.choice(present, size=shape)
        reference[rng.random(shape) < 0.15] = 255
        # Mostly correct predictions, so IoUs are neither all 0 nor all 1.
        prediction = np.where(rng.random(shape) < 0.6, reference, rng.integers(0, num_labels, size=shape))
        prediction[prediction == 255] = rng.integers(0, num_labels)
        predictions.append(prediction)
        references.append(reference)
    return predictions, references


# ---------------------------------------------------------------------------------------------- hand computed


def test_hand_computed_with_ignore_pixel():
    # reference     prediction     counted pixels (gt -> pred): 0->0, 0->1, 1->1, 2->2, 1->0; (1, 1) ignored,
    # [[0,   0, 1],  [[0, 1, 1],    so its prediction 2 is not counted.
    #  [2, 255, 1]]   [2, 2, 0]]    confusion (rows gt): [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    # class 0: TP 1, FP 1, FN 1 -> IoU 1/3, acc 1/2;  class 1: same;  class 2: TP 1 -> IoU 1, acc 1
    # mIoU = (1/3 + 1/3 + 1) / 3 = 5/9, mAcc = (1/2 + 1/2 + 1) / 3 = 2/3, overall = 3 / 5
    reference = np.array([[0, 0, 1], [2, 255, 1]])
    prediction = np.array([[0, 1, 1], [2, 2, 0]])
    result = compute_mean_iou(prediction, reference, num_labels=3)
    assert set(result) == RESULT_KEYS
    np.testing.assert_array_equal(result["confusion_matrix"], [[1, 1, 0], [1, 1, 0], [0, 0, 1]])
    assert result["confusion_matrix"].dtype == np.int64
    np.testing.assert_allclose(result["per_category_iou"], [1 / 3, 1 / 3, 1.0])
    np.testing.assert_allclose(result["per_category_accuracy"], [0.5, 0.5, 1.0])
    assert result["mean_iou"] == pytest.approx(5 / 9)
    assert result["mean_accuracy"] == pytest.approx(2 / 3)
    assert result["overall_accuracy"] == pytest.approx(3 / 5)


def test_hand_computed_absent_class_and_prediction_only_class():
    # num_labels = 4.  reference     prediction
    #                  [[0, 0, 1],   [[0, 2, 1],
    #                   [1, 1, 0]]    [1, 1, 0]]
    # class 0: 3 gt pixels, 2 hit, one predicted as 2 -> TP 2, FN 1, FP 0 -> IoU 2/3, acc 2/3
    # class 1: 3 gt pixels, all hit, no FP          -> IoU 1, acc 1
    # class 2: only predicted (1 FP), no gt         -> IoU 0/1 = 0 (counted in the mean), acc NaN
    # class 3: absent from both                     -> IoU NaN, acc NaN (left out of both means)
    # mIoU = (2/3 + 1 + 0) / 3 = 5/9, mAcc = (2/3 + 1) / 2 = 5/6, overall = 5/6
    reference = np.array([[0, 0, 1], [1, 1, 0]])
    prediction = np.array([[0, 2, 1], [1, 1, 0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0/0 classes must not raise RuntimeWarnings
        result = compute_mean_iou(prediction, reference, num_labels=4)
    iou, acc = result["per_category_iou"], result["per_category_accuracy"]
    np.testing.assert_allclose(iou[:3], [2 / 3, 1.0, 0.0])
    assert np.isnan(iou[3])
    np.testing.assert_allclose(acc[:2], [2 / 3, 1.0])
    assert np.isnan(acc[2]) and np.isnan(acc[3])
    assert result["mean_iou"] == pytest.approx(5 / 9)
    assert result["mean_accuracy"] == pytest.approx(5 / 6)
    assert result["overall_accuracy"] == pytest.approx(5 / 6)


def test_hand_computed_reduce_labels():
    # raw reference    reduced (0 -> 255, x -> x - 1, 255 stays)   prediction
    # [[0,   1, 2],    [[255, 0, 1],                                [[2, 0, 0],
    #  [3, 255, 1]]     [  2, 255, 0]]                               [2, 1, 1]]
    # counted (gt -> pred): 0->0, 1->0, 2->2, 0->1; confusion (rows gt): [[1, 1, 0], [1, 0, 0], [0, 0, 1]]
    # class 0: TP 1, FP 1, FN 1 -> IoU 1/3, acc 1/2;  class 1: TP 0, FP 1, FN 1 -> IoU 0, acc 0
    # class 2: TP 1 -> IoU 1, acc 1;  mIoU = 4/9, mAcc = 1/2, overall = 2/4
    reference = np.array([[0, 1, 2], [3, 255, 1]], dtype=np.uint8)
    prediction = np.array([[2, 0, 0], [2, 1, 1]])
    result = compute_mean_iou(prediction, reference, num_labels=3, reduce_labels=True)
    np.testing.assert_array_equal(result["confusion_matrix"], [[1, 1, 0], [1, 0, 0], [0, 0, 1]])
    np.testing.assert_allclose(result["per_category_iou"], [1 / 3, 0.0, 1.0])
    np.testing.assert_allclose(result["per_category_accuracy"], [0.5, 0.0, 1.0])
    assert result["mean_iou"] == pytest.approx(4 / 9)
    assert result["mean_accuracy"] == pytest.approx(0.5)
    assert result["overall_accuracy"] == pytest.approx(0.5)
    # The input is not modified, and without reduce_labels the raw label 3 is out of range for 3 classes.
    np.testing.assert_array_equal(reference, [[0, 1, 2], [3, 255, 1]])
    with pytest.raises(ValueError, match=r"\[3\]"):
        compute_mean_iou(prediction, reference, num_labels=3)


def test_perfect_and_empty():
    reference = np.array([[0, 1], [2, 255]])
    result = compute_mean_iou(np.array([[0, 1], [2, 0]]), reference, num_labels=3)
    assert result["mean_iou"] == 1.0 and result["mean_accuracy"] == 1.0 and result["overall_accuracy"] == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = MeanIoU(num_labels=3).compute()
    assert math.isnan(empty["mean_iou"]) and math.isnan(empty["overall_accuracy"])
    assert np.isnan(empty["per_category_iou"]).all()


# ------------------------------------------------------------------------------------- independent reference


@pytest.mark.parametrize(("seed", "reduce_labels"), [(0, False), (1, False), (2, True), (3, True)])
def test_random_maps_match_per_class_loop(seed, reduce_labels):
    num_labels = 7
    predictions, references = random_maps(seed, num_labels, absent=(5,))
    if reduce_labels:
        # Raw labels 0..num_labels with 0 = unlabelled; 255 stays ignored.
        references = [np.where(r == 255, 255, r + 1) for r in references]
        references[0][0, 0] = 0
    metric = MeanIoU(num_labels=num_labels, reduce_labels=reduce_labels)
    metric.update(predictions, references)
    result = metric.compute()
    expected = reference_mean_iou(predictions, references, num_labels, reduce_labels=reduce_labels)
    assert_same_result(result, expected)
    assert np.isnan(result["per_category_accuracy"][5])  # class 5 never in the references
    assert 0 < result["mean_iou"] < 1


def test_non_default_ignore_index():
    predictions, references = random_maps(4, num_labels=5)
    references = [np.where(r == 255, -1, r) for r in references]
    result = compute_mean_iou(predictions, references, num_labels=5, ignore_index=-1)
    assert_same_result(result, reference_mean_iou(predictions, references, 5, ignore_index=-1))


# ----------------------------------------------------------------------------------------------- accumulation


def test_batches_accumulate_like_one_batch():
    predictions, references = random_maps(5, num_labels=6, count=8)
    whole = MeanIoU(num_labels=6)
    whole.update(predictions, references)

    one_by_one = MeanIoU(num_labels=6)
    for prediction, reference in zip(predictions, references):
        one_by_one.update(prediction, reference)
    np.testing.assert_array_equal(one_by_one.confusion_matrix, whole.confusion_matrix)

    # Same-size maps as [N, H, W] numpy / torch batches, and as nested python lists.
    square_p = [p[:3, :3] for p in predictions]
    square_r = [r[:3, :3] for r in references]
    split = MeanIoU(num_labels=6)
    split.update(np.stack(square_p[:3]), torch.as_tensor(np.stack(square_r[:3])))
    split.update(torch.as_tensor(np.stack(square_p[3:]), dtype=torch.uint8), np.stack(square_r[3:]))
    nested = MeanIoU(num_labels=6)
    for p, r in zip(square_p, square_r):
        nested.update(p.tolist(), r.tolist())
    reference = MeanIoU(num_labels=6)
    reference.update(square_p, square_r)
    np.testing.assert_array_equal(split.confusion_matrix, reference.confusion_matrix)
    np.testing.assert_array_equal(nested.confusion_matrix, reference.confusion_matrix)
    assert reference.confusion_matrix.sum() > 0
    reference.update([], [])  # an empty batch adds nothing
    np.testing.assert_array_equal(nested.confusion_matrix, reference.confusion_matrix)


def test_merge_and_add_confusion_matrix_equal_single_accumulator():
    predictions, references = random_maps(6, num_labels=4, count=6)
    single = MeanIoU(num_labels=4)
    single.update(predictions, references)
    first, second = MeanIoU(num_labels=4), MeanIoU(num_labels=4)
    first.update(predictions[:2], references[:2])
    second.update(predictions[2:], references[2:])
    assert first.merge(second) is first
    np.testing.assert_array_equal(first.confusion_matrix, single.confusion_matrix)
    assert_same_result(first.compute(), single.compute())

    # Summing matrices from "processes", e.g. after an all-reduce of torch tensors.
    gathered = MeanIoU(num_labels=4)
    gathered.add_confusion_matrix(torch.as_tensor(second.confusion_matrix))
    gathered.add_confusion_matrix(single.confusion_matrix - second.confusion_matrix)
    np.testing.assert_array_equal(gathered.confusion_matrix, single.confusion_matrix)

    # The property is a copy, and reset clears the counts.
    single.confusion_matrix[...] = 0
    assert single.confusion_matrix.sum() > 0
    single.reset()
    assert single.confusion_matrix.sum() == 0


# ----------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("num_labels", [0, -3, 2.5, True, "3", None])
def test_bad_num_labels(num_labels):
    with pytest.raises(ValueError, match="num_labels"):
        MeanIoU(num_labels=num_labels)


def test_bad_ignore_index_and_reduce_labels():
    with pytest.raises(ValueError, match="ignore_index"):
        MeanIoU(num_labels=10, ignore_index=3)
    with pytest.raises(ValueError, match="ignore_index"):
        MeanIoU(num_labels=10, ignore_index=1.5)
    with pytest.raises(ValueError, match="reduce_labels"):
        MeanIoU(num_labels=10, reduce_labels="yes")


def test_out_of_range_references_name_the_values():
    metric = MeanIoU(num_labels=3)
    metric.update(np.zeros((2, 2), dtype=np.int64), np.zeros((2, 2), dtype=np.int64))
    before = metric.confusion_matrix
    good = np.zeros((2, 3), dtype=np.int64)
    bad = np.array([[0, 7, 1], [5, 255, -1]])
    with pytest.raises(
        ValueError, match=r"references\[1\] contains label values \[-1, 5, 7\].*ignore_index=255"
    ):
        metric.update([good, good], [good, bad])
    # A failing batch adds nothing, not even its valid first pair.
    np.testing.assert_array_equal(metric.confusion_matrix, before)


def test_out_of_range_predictions():
    reference = np.array([[0, 1, 255]])
    with pytest.raises(ValueError, match=r"predictions\[0\] contains values \[3\]"):
        compute_mean_iou(np.array([[0, 3, 1]]), reference, num_labels=3)
    with pytest.raises(ValueError, match="predictions"):
        compute_mean_iou(np.array([[-1, 1, 1]]), reference, num_labels=3)
    # A prediction at an ignored pixel is not counted, so it is not checked either.
    assert compute_mean_iou(np.array([[0, 1, 99]]), reference, num_labels=3)["mean_iou"] == 1.0


def test_shape_and_count_mismatch():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        compute_mean_iou(np.zeros((2, 3), dtype=int), np.zeros((3, 2), dtype=int), num_labels=2)
    with pytest.raises(ValueError, match="2 prediction map.*3 reference map"):
        compute_mean_iou(np.zeros((2, 4, 4), dtype=int), np.zeros((3, 4, 4), dtype=int), num_labels=2)
    with pytest.raises(ValueError, match="one label map"):
        compute_mean_iou(np.zeros((1, 2, 4, 4), dtype=int), np.zeros((1, 2, 4, 4), dtype=int), num_labels=2)
    with pytest.raises(ValueError, match="non-integer"):
        compute_mean_iou(np.full((2, 2), 0.5), np.zeros((2, 2), dtype=int), num_labels=2)


def test_merge_and_add_errors():
    with pytest.raises(ValueError, match="different settings"):
        MeanIoU(num_labels=3).merge(MeanIoU(num_labels=4))
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        MeanIoU(num_labels=3).add_confusion_matrix(np.zeros((4, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="negative"):
        MeanIoU(num_labels=2).add_confusion_matrix(-np.ones((2, 2), dtype=np.int64))


# ------------------------------------------------------------------------------------------- evaluate module


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_evaluate_module_matches_streaming_accumulator(no_network, tmp_path):
    assert MEAN_IOU_MODULE_PATH.is_file() and (MEAN_IOU_MODULE_PATH.parent / "README.md").is_file()
    predictions, references = random_maps(7, num_labels=5, count=5, absent=(4,))
    metric = load_mean_iou_metric(cache_dir=str(tmp_path))
    assert metric.name == "mean_iou"
    accumulator = MeanIoU(num_labels=5)
    for start in range(0, 5, 2):  # batches of 2, 2, 1
        batch_p, batch_r = predictions[start : start + 2], references[start : start + 2]
        metric.add_batch(predictions=batch_p, references=batch_r)
        accumulator.update(batch_p, batch_r)
    result = metric.compute(num_labels=5, ignore_index=255)
    assert set(result) == RESULT_KEYS
    assert_same_result(result, accumulator.compute())
    np.testing.assert_array_equal(result["confusion_matrix"], accumulator.confusion_matrix)
    assert_same_result(result, reference_mean_iou(predictions, references, 5))


def test_evaluate_module_reduce_labels_and_torch_input(no_network):
    import evaluate

    reference = np.array([[0, 1, 2], [3, 255, 1]], dtype=np.uint8)
    prediction = np.array([[2, 0, 0], [2, 1, 1]])
    metric = evaluate.load(str(MEAN_IOU_MODULE_PATH.parent), keep_in_memory=True)  # the folder works too
    result = metric.compute(
        predictions=torch.as_tensor(prediction[None]),
        references=[reference],
        num_labels=3,
        reduce_labels=True,
    )
    assert result["mean_iou"] == pytest.approx(4 / 9)
    assert_same_result(result, compute_mean_iou(prediction, reference, num_labels=3, reduce_labels=True))


@pytest.mark.slow
def test_evaluate_module_loads_in_a_fresh_offline_process(tmp_path):
    code = textwrap.dedent(
        """
        import socket

        def refuse(*args, **kwargs):
            raise AssertionError("network access attempted")

        socket.socket.connect = refuse
        socket.create_connection = refuse

        import numpy as np
        from naclip_hf.evaluation import load_mean_iou_metric

        metric = load_mean_iou_metric(keep_in_memory=True)
        result = metric.compute(
            predictions=[np.array([[0, 1], [1, 1]])], references=[np.array([[0, 1], [0, 255]])], num_labels=2
        )
        assert result["mean_iou"] == 0.5, result
        print("OK")
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_EVALUATE_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    env["HF_HOME"] = str(tmp_path / "home")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr
