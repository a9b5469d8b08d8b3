"""The report wing: a study's result as files a paper can use.

    files.py    write_report: the report folder (JSON, tables, summary, figures), and the
                rule that it never overwrites what it did not write
    tables.py   the result's sections as pandas DataFrames
    summary.py  summary.md (markdown.py: its numbers and tables; optimal_summary.py: the
                optimal-ablation section)
    plots.py    the report's figures, plot_all (one module per section: single_plots.py,
                screening_plot.py, cumulative_plot.py, interactions_plot.py,
                comparison_plot.py, patching_plot.py, optimal_plot.py; canvas.py: what
                they share)
    figures.py  `ja.plot`: paper figures of a plain sweep (heads, positions, neurons;
                figure_inputs.py: the values, frames and arrays they accept)
"""

from jaxablate.report.files import (
                                    REPORT_MARKER,
                                    check_report_folder,
                                    fingerprint_differences,
                                    report_fingerprint,
                                    report_names,
                                    write_report,
)
from jaxablate.report.summary import summary_markdown
from jaxablate.report.tables import (
                                    ablation_comparison_frame,
                                    cumulative_frame,
                                    interactions_frame,
                                    optimal_frame,
                                    per_example_frame,
                                    screening_frame,
                                    single_frame,
)

__all__ = ["REPORT_MARKER", "ablation_comparison_frame", "check_report_folder",
           "cumulative_frame", "fingerprint_differences", "interactions_frame",
           "optimal_frame", "per_example_frame", "report_fingerprint", "report_names",
           "screening_frame", "single_frame", "summary_markdown", "write_report"]
