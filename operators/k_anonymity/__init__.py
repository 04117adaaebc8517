"""k-anonymity on a live stream: a cascade of keyed stages over a path of generalization levels.

A class is one combination of quasi-identifiers (QIs) generalized to one level of the
path. A record enters the first stage and is counted, at once, in its class at every
level of that stage. Its finest class is released as soon as it holds ``k`` distinct
subjects (and, optionally, ``l`` distinct values of a sensitive attribute); a released
class then passes records straight through until its state TTL runs out. At the
record's deadline in the stage, it is published at the finest level where its class is
already released, or where the buffered records give its class ``k`` subjects (it is
released with the fewest, oldest, that do). Failing both, it moves to the next stage
(the last level, all ``*``, on a single key) through a side output, and past the last
stage it is suppressed: counted and sent to a suppressed output, never to the view.
This is the CASTLE idea (Cao et al. 2011) with Flink's keyed state and timers: every
level sees all the records the stage holds, not the slice that happens to be there.

The policy block, checked by :meth:`KAnonymityParams.from_policy`::

    k_anonymity:
      k: 5
      quasi_identifiers:
        age: {hierarchy: [{range: 5}, {range: 10}, {range: 20}, "*"], domain: [0, 120]}
        zip: {paths: [zip, address.zip], hierarchy: [{truncate: 4}, {truncate: 3}, {truncate: 2}, "*"]}
        location: {lat_field: lat, lon_field: lon, hierarchy: [{geohash: 5}, {geohash: 4}, {geohash: 3}, "*"]}
        # or square cells of a lat/lon grid, each a whole multiple of the one before:
        #   hierarchy: [{grid: 0.02}, {grid: 0.04}, {grid: 0.08}, {grid: 0.16}, "*"]
        signup: {hierarchy: [{date: day}, {date: month}, {date: year}, "*"]}
        occupation: {hierarchy_file: conf/hierarchies/occupation.csv, hierarchy: [exact, {group: 1}, "*"]}
      max_delay: 30s           # total wait bound, split over the stages by their number of levels
      timing: processing       # or event (watermarks drive the timers)
      on_timeout: generalize   # or suppress (no cascade: a timeout at level 0 suppresses)
      l_diversity: {attribute: purchaseBand, l: 2}
      state_ttl: 10m           # how long a released class passes records through
      idle_timeout: 10s        # timing: event only: a quiet input lets event time follow the wall clock

The path (``cheapest_first`` by default, ``lockstep``, or explicit) gives each cascade
level a hierarchy step per QI, each level coarser than the one before. A stage ending at
level ``L`` gives up on a record at ``entered + max_delay * (L + 1) / levels``: the
deadlines are cumulative, so no record waits longer than ``max_delay`` in total, plus
timer slack (:attr:`KAnonymityParams.timer_resolution_ms`).

The QIs are named only here, never in the view's ``fields``: the job extracts their
raw values with :func:`extract_quasi_identifiers` and the operator publishes each
one, generalized, under the QI's name.

References
----------
.. [1] J. Cao, B. Carminati, E. Ferrari, K.-L. Tan, "CASTLE: Continuously Anonymizing
   Data Streams", IEEE TDSC 8(3), 2011.
.. [2] J. Xu, W. Wang, J. Pei, X. Wang, B. Shi, A. W.-C. Fu, "Utility-based
   anonymization using local recoding", KDD 2006 (the NCP measure).
.. [3] A. Machanavajjhala, D. Kifer, J. Gehrke, M. Venkitasubramaniam,
   "l-diversity: privacy beyond k-anonymity", ACM TKDD 1(1), 2007.
"""

from operators.k_anonymity.core import (
    LocalCascade,
    Partition,
    Stage,
    Stager,
    class_key,
    class_keys,
    decode_staged,
    encode_staged,
    extract_quasi_identifiers,
    fast_geohash,
    generalize,
    ncp,
)
from operators.k_anonymity.flink import attach, attach_staged
from operators.k_anonymity.params import KAnonymityParams, LDiversity, Level, QuasiIdentifier

__all__ = [
    "KAnonymityParams",
    "LDiversity",
    "Level",
    "LocalCascade",
    "Partition",
    "QuasiIdentifier",
    "Stage",
    "Stager",
    "attach",
    "attach_staged",
    "class_key",
    "class_keys",
    "decode_staged",
    "encode_staged",
    "extract_quasi_identifiers",
    "fast_geohash",
    "generalize",
    "ncp",
]
