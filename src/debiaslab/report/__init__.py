"""``debiaslab report``: a self-contained HTML report of one or several runs, with its PNG figures.

Per run: a header with the config, data checksums, seed, steps, selection rule and the numbers of
``results.json``; learning curves (loss terms, aligned / conflicting / unbiased accuracy, LR,
the step where DisEnt's feature swap starts); the method's weight W as a detector of the
bias-conflicting training samples (histograms and AP / precision / recall over training); a 2-D
projection (PCA, t-SNE on request) of each feature on test samples, coloured by target and by bias,
with linear-probe accuracies; the (target x bias) test accuracy grid. Several runs add overlaid
curves and a summary table. A figure that cannot be drawn says why instead.

Reading, computing and rendering, one module each: ``runs.py`` reads a run folder,
``evaluation.py`` computes on its checkpoint (features, predictions, projections), ``figures.py``
draws the PNG figures and ``page.py`` writes the HTML page (``make_report``).
"""

from debiaslab.report.evaluation import Evaluated, evaluate_checkpoint
from debiaslab.report.figures import (
    Figure,
    fig_compare,
    fig_curves,
    fig_features,
    fig_heatmap,
    fig_w_detection,
    has_sample_weights,
    probe_table,
)
from debiaslab.report.page import CSS, LOADED_SCRIPT, METRIC_KEYS, header_html, make_report
from debiaslab.report.runs import RunData, load_run

__all__ = [
    "CSS",
    "LOADED_SCRIPT",
    "METRIC_KEYS",
    "Evaluated",
    "Figure",
    "RunData",
    "evaluate_checkpoint",
    "fig_compare",
    "fig_curves",
    "fig_features",
    "fig_heatmap",
    "fig_w_detection",
    "has_sample_weights",
    "header_html",
    "load_run",
    "make_report",
    "probe_table",
]
