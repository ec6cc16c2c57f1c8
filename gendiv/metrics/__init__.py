"""Evaluation: FID with offline Inception weights, KID, FID∞, IS and IS∞, precision/recall (and exact toy metrics in
gendiv.toy)."""
from .fid import BACKENDS, compute_features, evaluate, reference_stats
from .frechet import FeatureStats, fid_infinity, frechet_distance, kid, precision_recall
from .inception_score import inception_score, is_infinity
from .inception import RESIZE_MODES, InceptionFeatures, WeightsError, converted_weights, resolve_weights

__all__ = ["BACKENDS", "compute_features", "evaluate", "reference_stats", "FeatureStats", "fid_infinity",
           "frechet_distance", "kid", "precision_recall", "inception_score", "is_infinity", "RESIZE_MODES",
           "InceptionFeatures", "WeightsError", "converted_weights", "resolve_weights"]
