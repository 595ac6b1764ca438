"""Export a fitted policy with its dynamic behaviour intact, and run it without torch.

* :func:`dyninfer.export.onnx.export_policy` (``dyninfer export POLICY_DIR --format onnx --out OUT``) writes
  every path as an ONNX graph with a dynamic batch axis, the score or decision graph, and the policy as a
  versioned JSON spec (``spec.json``, schema in :mod:`dyninfer.export.spec`); each graph is checked against
  torch as it is written.
* :class:`dyninfer.export.ort_runtime.OrtRuntime` loads ``OUT/`` with numpy and onnxruntime alone: the same
  batching (samples that exit leave the batch), the same knob, the same checks and result vocabulary.
* :mod:`dyninfer.export.quantize`: INT8 (dynamic, static) and FP16 copies of a path, each a new path of
  the pool (:class:`~dyninfer.export.graph.OnnxModule`) with its own measured cost and trace.

Everything here needs the ``onnx`` extra (``pip install dyninfer[onnx]``); the submodules import it lazily.
"""
