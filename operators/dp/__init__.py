"""Differentially private counts, sums and means per group and event-time window.

The package: ``params`` (the checked policy block), ``mechanisms`` (noise, plain Python),
``core`` (the stages' logic and a :class:`LocalAggregator` that runs them without a JVM) and
``flink`` (the thin keyed wrappers; the only module that imports PyFlink).

A policy view with a ``differential_privacy:`` block becomes two keyed stages
and a budget gate::

    (subject, group_json, values_json, ts)            # from the job, event-time stamped
      -> stage 1, keyed by a bucket of subjects       # (group_json, window_start, summed contributions)
      -> stage 2, keyed by group                      # (group_json, window_start, release JSON)
      -> budget gate, keyed by view                   # (group_json, headers JSON, value JSON)

Stage 1 bounds what one subject adds to one window: at most
``max_groups_per_subject`` groups, chosen uniformly at random, at most
``max_contributions_per_group`` records per group, chosen uniformly at random,
and every value clamped to its metric's bounds. Stage 2 adds the contributions
of a group, adds noise when the window closes, and releases the group only when
its noisy number of subjects passes a threshold (or when the group is public).
The gate keeps the view's spend under basic composition and stops releases
once ``total_epsilon`` is reached. Everything the three stages hold is Flink
state: a job restored from a checkpoint loses no contribution to an open window
and goes on from the spend it had.

Policy syntax (defaults in brackets)::

    differential_privacy:
      window: 1m                       # required; ms, s, m, h or d
      slide: 30s                       # [none: tumbling]; divides the window
      allowed_lateness: 0s             # [0s]; delays each release; later records are dropped
      group_by: [region]               # required; record fields (dotted paths allowed)
      epsilon: 1.0                     # required; spent per window, for all groups together
      delta: 1.0e-6                    # [1e-6]; used by private group selection and Gaussian noise
      mechanism: laplace               # [laplace] | gaussian
      max_groups_per_subject: 1        # [1]
      max_contributions_per_group: 1   # [1]
      metrics: [count, {sum: purchaseAmount, bounds: [0, 1000]}, {mean: purchaseAmount, bounds: [0, 1000]}]
      public_groups: [[us-west], [us-east]]   # [none: private group selection]
      total_epsilon: 100               # [none: unlimited]; the view stops when it would exceed it
      state_ttl: 1h                    # [max(1h, 4 x (window + allowed_lateness))]
      idle_timeout: 10s                # [10s]; after this long with no record, event time follows the
                                       # wall clock, so a quiet input still closes its windows; none: off

Metric names in the output are ``count``, ``<field>_sum`` and ``<field>_mean``
unless a metric sets ``name``.

References
----------
.. [1] Dwork, C. "Differential Privacy: A Survey of Results." TAMC 2008.
.. [2] Dwork, C., Roth, A. "The Algorithmic Foundations of Differential Privacy." 2014.
.. [3] Wilson, R. J. et al. "Differentially Private SQL with Bounded User Contribution." PoPETs 2020.
.. [4] PipelineDP, ``pipeline_dp/partition_selection.py`` and Google's ``partition-selection.h``
   (Laplace thresholding).
.. [5] Holohan, N., Braghin, S. "Secure Random Sampling in Differential Privacy." 2021.
"""

from operators.dp.core import (
    BudgetLedger,
    ContributionBounder,
    GroupReleaser,
    LocalAggregator,
    SubjectWindow,
    extract_contribution,
    laplace_threshold,
    window_starts,
)
from operators.dp.params import DpParams, Metric

__all__ = [
    "BudgetLedger",
    "ContributionBounder",
    "DpParams",
    "GroupReleaser",
    "LocalAggregator",
    "Metric",
    "SubjectWindow",
    "extract_contribution",
    "laplace_threshold",
    "window_starts",
]
