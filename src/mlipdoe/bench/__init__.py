"""Label-backed validation: learning-curve benchmarks with labels hidden from the selectors."""

from .learning_curve import (
    DEFAULT_STRATEGIES,
    BenchmarkConfig,
    BenchmarkResult,
    FrameErrors,
    data_efficiency,
    frame_errors,
    plot_learning_curves,
    results_csv,
    run_benchmark,
    select_design,
    summary_markdown,
    update_markdown_section,
    write_outputs,
)
from .vault import FrozenDesign, LabelAccessError, LabelVault, strip_labels

__all__ = [
    "DEFAULT_STRATEGIES", "BenchmarkConfig", "BenchmarkResult", "FrameErrors", "data_efficiency", "frame_errors", "FrozenDesign", "LabelAccessError", "LabelVault",
    "plot_learning_curves", "results_csv", "run_benchmark", "select_design", "strip_labels", "summary_markdown",
    "update_markdown_section", "write_outputs",
]
