"""Executors (one :class:`Runtime` type, sequential and up-front), input checks, cost meters, and the
backbone manager (:mod:`dyninfer.runtime.manager`, imported on use)."""

from .base import Runtime, RuntimeResult
from .cost import (EnergyMeter, LatencyStats, PathCost, co2_grams, count_flops, count_params, model_bytes,
                   torch_threads)
from .sequential import SequentialRuntime, Stage, model_stage
from .validate import PIXEL_RANGE, check_batch

__all__ = ["EnergyMeter", "LatencyStats", "PIXEL_RANGE", "PathCost", "Runtime", "RuntimeResult", "SequentialRuntime",
           "Stage", "check_batch", "co2_grams", "count_flops", "count_params", "model_bytes", "model_stage",
           "torch_threads"]
