"""Dynamic-inference methods built on the shared harness (trace, runtime, cost, report)."""
