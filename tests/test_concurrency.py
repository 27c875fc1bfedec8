"""One pipeline called from many threads at once, each call with its own options, as servers and demos do."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image
from transformers import pipeline

LABELS = ["sky, wall, tree, grass", "cat", "dog", "person, person in shirt", "car"]
CALLS = [
    {"pamr_steps": 0},
    {"pamr_steps": 3},
    {"prob_thd": 0.6, "pamr_steps": 0},
    {"gaussian_std": 2.0, "attn_strategy": "gav", "pamr_steps": 0, "slide_crop": 0},
]


@pytest.fixture(scope="module")
def image(golden) -> np.ndarray:
    return np.array(Image.fromarray(golden["img_b/raw"].numpy()).resize((120, 90)))


def test_threads_with_their_own_options_get_what_each_call_gets_alone(tiny_checkpoint, image):
    segmenter = pipeline("naclip-segmentation", model=str(tiny_checkpoint))
    config_before = segmenter.model.config.to_dict()
    common = {"candidate_labels": LABELS, "short_side": 64, "return_probabilities": True, "return_label_map": True}
    alone = [segmenter(image, **common, **options) for options in CALLS]
    # The options really differ in effect, so that a result given to the wrong call would be noticed.
    for i in range(len(alone)):
        for j in range(i + 1, len(alone)):
            same_probabilities = np.array_equal(alone[i]["probabilities"], alone[j]["probabilities"])
            assert not (same_probabilities and np.array_equal(alone[i]["label_map"], alone[j]["label_map"]))

    rounds, threads_per_round = 3, 8
    results: dict[tuple[int, int], dict] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(threads_per_round)

    def work(round_index: int, thread_index: int) -> None:
        try:
            start.wait(timeout=60)
            options = CALLS[thread_index % len(CALLS)]
            results[round_index, thread_index] = segmenter(image, **common, **options)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    for round_index in range(rounds):
        threads = [threading.Thread(target=work, args=(round_index, t)) for t in range(threads_per_round)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
    assert not errors, errors
    assert len(results) == rounds * threads_per_round
    for (round_index, thread_index), result in results.items():
        expected = alone[thread_index % len(CALLS)]
        where = f"round {round_index}, thread {thread_index}"
        np.testing.assert_array_equal(result["label_map"], expected["label_map"], err_msg=where)
        np.testing.assert_allclose(result["probabilities"], expected["probabilities"], rtol=0, atol=1e-6)
    assert segmenter.model.config.to_dict() == config_before
