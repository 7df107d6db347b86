"""The MNIST sample-quality protocol: the independent digit classifier, the shipped reference features, the recipe."""

import numpy as np
import pytest

from convdiff.data.mnist import mnist_digits
from convdiff.eval.digit_classifier import (as_model_input, class_accuracy, load_digit_classifier, predict_digits,
                                            shipped_heldout_accuracy)
from convdiff.eval.inception import InceptionFeatureExtractor
from convdiff.eval.image_io import mnist_reference
from convdiff.eval.mnist import REFERENCE_FEATURES, score_mnist_samples, shipped_reference_moments
from convdiff.training.config import load_config


def test_shipped_classifier_reads_held_out_digits_as_recorded():
    images, labels = mnist_digits("heldout")
    accuracy = class_accuracy(images, labels)
    assert accuracy >= 0.98
    assert accuracy == pytest.approx(shipped_heldout_accuracy(), abs=1e-4)


def test_classifier_takes_every_digit_layout_alike():
    images = mnist_reference("heldout", n=20)  # (20, 28, 28, 1)
    classifier = load_digit_classifier()
    expected = predict_digits(images, classifier)
    for layout in (images[..., 0], images.transpose(0, 3, 1, 2)):
        np.testing.assert_array_equal(predict_digits(layout, classifier), expected)


def test_classifier_rejects_what_it_cannot_read():
    with pytest.raises(TypeError, match="uint8"):
        as_model_input(np.zeros((2, 28, 28), np.float32))
    with pytest.raises(ValueError, match="28x28"):
        as_model_input(np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        class_accuracy(np.zeros((3, 28, 28), np.uint8), [0, 1])


@pytest.fixture(scope="module")
def extractor():
    return InceptionFeatureExtractor()


def test_shipped_reference_features_are_the_held_out_digits_features(extractor):
    with np.load(REFERENCE_FEATURES) as data:
        shipped, sha = data["features"], str(data["inception_sha256"])
    assert shipped.shape == (500, 2048) and sha == extractor.sha256
    fresh = extractor(mnist_reference("heldout", n=4)).numpy()
    np.testing.assert_allclose(shipped[:4], fresh, rtol=1e-4, atol=1e-4)


def test_shipped_reference_stands_in_only_for_its_own_inception_and_size(extractor):
    assert shipped_reference_moments(500, extractor).n == 500
    assert shipped_reference_moments(501, extractor) is None

    class OtherInception:
        sha256 = "0" * 64

    assert shipped_reference_moments(100, OtherInception()) is None


def test_scores_of_real_digits_say_their_protocol(extractor):
    images, labels = mnist_reference("train", n=30, return_labels=True)
    scores = score_mnist_samples(images, labels, extractor=extractor, progress=False, sampler="none")
    assert scores.accuracy >= 0.9 and scores.fid.fid > 0
    assert "shipped features" in scores.protocol and "rank-deficient" in scores.protocol
    assert "class accuracy" in scores.protocol and "N_A=30 N_B=30" in scores.protocol


def test_main_job_recipe_is_step_based():
    config = load_config("configs/dic-mnist-tiny.yaml")
    assert config.max_train_seconds is None and config.max_train_steps >= 1
