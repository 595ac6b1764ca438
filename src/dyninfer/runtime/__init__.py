"""Batched executors, input checks and cost meters."""

from .cost import EnergyMeter, LatencyStats, PathCost, co2_grams, count_flops, count_params, measure_path, model_bytes
from .executor import RuntimeResult, SequentialRuntime, model_stage
from .validate import check_batch

__all__ = ["EnergyMeter", "LatencyStats", "PathCost", "RuntimeResult", "SequentialRuntime", "check_batch", "co2_grams",
           "count_flops", "count_params", "measure_path", "model_bytes", "model_stage"]
