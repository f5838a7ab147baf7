"""Augmentation pipelines (albumentations 2.x) for training, and the matching eval transform.

Why these augmentations: vehicle crops from road cameras vary in roll, viewpoint skew, exposure,
sensor noise and JPEG quality, so the training pipeline perturbs exactly those. It is
**colour-safe**: colour is one of the labels, so nothing shifts hue or shuffles channels
(brightness, contrast and gamma keep a red car red).

Both pipelines take one cached uint8 ``H x W x 3`` RGB image and return float32 ``H x W x 3``
normalised with the ImageNet constants. The eval transform is literally
:func:`data.preprocess.normalise_batch` on a batch of one, so what training validates on, what
evaluation measures and what every export sees are the same tensors.
"""
from __future__ import annotations

from typing import Callable

import albumentations as A
import cv2
import numpy as np

from data.preprocess import normalise_batch
from data.preprocess import IMAGENET_MEAN, IMAGENET_STD

ImageTransform = Callable[[np.ndarray], np.ndarray]


def train_augmentations(image_size: int, *, seed: int | None = None) -> A.Compose:
    """The random part of the training pipeline on uint8 images, ending in a resize.

    Kept separate from normalisation so callers (the Balance page, debugging) can look at the
    augmented images themselves.
    """
    return A.Compose(
        [
            # Camera roll. Reflect the border so no black corners teach the net "black car".
            A.Rotate(limit=20, border_mode=cv2.BORDER_REFLECT_101, p=0.5),
            # Viewpoint skew.
            A.Affine(shear=(-10, 10), border_mode=cv2.BORDER_REFLECT_101, p=0.3),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
            # Sensor / transport degradations: at most one per image.
            A.OneOf(
                [
                    A.GaussNoise(std_range=(0.02, 0.08), p=1.0),
                    A.ImageCompression(quality_range=(40, 90), p=1.0),
                    A.RandomGamma(gamma_limit=(80, 120), p=1.0),
                    A.Blur(blur_limit=(3, 5), p=1.0),
                ],
                p=0.5,
            ),
            # Shift-scale: the detector's crop is never exactly centred or tight.
            A.Affine(translate_percent=(-0.0625, 0.0625), scale=(0.9, 1.1),
                     border_mode=cv2.BORDER_REFLECT_101, p=0.5),
            A.Resize(image_size, image_size, interpolation=cv2.INTER_LINEAR),
        ],
        seed=seed,
    )


def train_transform(image_size: int, *, seed: int | None = None) -> A.Compose:
    """Full training pipeline: :func:`train_augmentations` then ImageNet normalisation."""
    return A.Compose(
        [
            *train_augmentations(image_size).transforms,
            A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0),
        ],
        seed=seed,
    )


def eval_transform(image_size: int) -> ImageTransform:
    """Deterministic transform identical to :func:`data.preprocess.normalise_batch`.

    Returns a function ``uint8 HxWx3 -> float32 size x size x 3`` (channels last, like the
    albumentations pipelines) so it can stand in for :func:`train_transform` in a Dataset.
    """

    def apply(image: np.ndarray) -> np.ndarray:
        return normalise_batch(image[None], image_size)[0].transpose(1, 2, 0)

    return apply


def apply_albumentations(pipeline: A.Compose) -> ImageTransform:
    """Adapt an albumentations pipeline to the plain ``image -> image`` call the Dataset uses."""

    def apply(image: np.ndarray) -> np.ndarray:
        return pipeline(image=image)["image"]

    return apply


# -- weak / strong views for semi-supervised consistency training (models/semi.py) ------------

def weak_augmentations(image_size: int, *, seed: int | None = None) -> A.Compose:
    """The FixMatch "weak" view: a small shift-scale only, so the pseudo-label is trustworthy.

    No horizontal flip (unlike FixMatch on CIFAR): a flip turns a "left" car into a "right"
    one, so it would change the orientation pseudo-label. Nothing touches colour either.
    """
    return A.Compose(
        [
            A.Affine(translate_percent=(-0.0625, 0.0625), scale=(0.95, 1.05),
                     border_mode=cv2.BORDER_REFLECT_101, p=1.0),
            A.Resize(image_size, image_size, interpolation=cv2.INTER_LINEAR),
        ],
        seed=seed,
    )


def strong_augmentations(image_size: int, *, seed: int | None = None) -> A.Compose:
    """The FixMatch "strong" view: the training pipeline, always on, plus cut-out.

    RandAugment's colour operations (hue, solarise, posterise, channel shuffles) are left out on
    purpose: colour is a label here. Cut-out (``CoarseDropout``) fills holes with mid-grey,
    which no colour class is defined by.
    """
    return A.Compose(
        [
            A.Rotate(limit=25, border_mode=cv2.BORDER_REFLECT_101, p=0.8),
            A.Affine(shear=(-12, 12), translate_percent=(-0.1, 0.1), scale=(0.85, 1.15),
                     border_mode=cv2.BORDER_REFLECT_101, p=0.8),
            A.RandomBrightnessContrast(brightness_limit=0.3, contrast_limit=0.3, p=0.8),
            A.OneOf(
                [
                    A.GaussNoise(std_range=(0.04, 0.12), p=1.0),
                    A.ImageCompression(quality_range=(25, 70), p=1.0),
                    A.Blur(blur_limit=(3, 7), p=1.0),
                    A.Sharpen(p=1.0),
                ],
                p=0.8,
            ),
            A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(0.25, 0.5),
                            hole_width_range=(0.25, 0.5), fill=128, p=1.0),
            A.Resize(image_size, image_size, interpolation=cv2.INTER_LINEAR),
        ],
        seed=seed,
    )


def normalised(pipeline: A.Compose, *, seed: int | None = None) -> A.Compose:
    """``pipeline`` followed by the ImageNet normalisation every model input gets."""
    return A.Compose(
        [*pipeline.transforms,
         A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0)],
        seed=seed,
    )
