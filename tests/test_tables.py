"""core.experiments.report.tables: the report's tables."""

from __future__ import annotations


def test_training_table_names_every_selection_metric_the_trainer_can_record():
    """The training table labels the kept step by what the trainer selected on (a backbone
    selected on rec+knn must not be labelled as selected on reconstruction)."""
    from core.backbone.config import SELECT_METRIC
    from core.backbone.selection import SCORE_METRIC
    from core.experiments.report import SELECTION_METRICS

    assert set(SELECTION_METRICS) == {SELECT_METRIC, SCORE_METRIC}
    assert "k-NN" in SELECTION_METRICS[SCORE_METRIC]
    assert "k-NN" not in SELECTION_METRICS[SELECT_METRIC]
