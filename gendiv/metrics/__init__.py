"""Evaluation: FID with offline Inception weights, KID, FID∞, precision/recall (and exact toy metrics in gendiv.toy)."""
from .fid import BACKENDS, compute_features, evaluate, reference_stats
from .frechet import FeatureStats, fid_infinity, frechet_distance, kid, precision_recall
from .inception import RESIZE_MODES, InceptionFeatures, WeightsError, converted_weights, resolve_weights

__all__ = ["BACKENDS", "compute_features", "evaluate", "reference_stats", "FeatureStats", "fid_infinity",
           "frechet_distance", "kid", "precision_recall", "RESIZE_MODES", "InceptionFeatures", "WeightsError",
           "converted_weights", "resolve_weights"]
