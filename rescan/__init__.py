"""Batch rescans over a whole index: the catalogue against itself, and past uploads against today's rules.

Above :mod:`refrain` and :mod:`service` in the layering (re-deciding an upload
needs the service's works, policies and licences). ``refrain rescan`` is a thin
shell over these calls::

    from refrain.rescan import RescanOptions, rescan_catalogue, rescan_uploads

    report = rescan_catalogue("catalogue-index", "scan/", RescanOptions(jobs=2))
    for group in report.groups:
        print(group["track_ids"], [(p["track_id"], p["related_track_id"], p["kind"]) for p in group["pairs"]])

    report = rescan_uploads("catalogue-index", "catalogue-index.service.sqlite", "recheck/",
                            review_confidence=DEFAULT_REVIEW_CONFIDENCE, apply=False)  # from refrain.policy
    print(report.changed, "verdicts would change")

Modules: :mod:`rescan.jobs` (the runner: local processes or Dask, checkpoint and
resume, ordered outputs), :mod:`rescan.catalogue` (self-scan and grouping),
:mod:`rescan.uploads` (re-deciding stored decisions, applying the changes).
"""

from refrain.rescan.catalogue import CatalogueReport, rescan_catalogue
from refrain.rescan.jobs import RescanOptions, RunResult, RunUsageError
from refrain.rescan.uploads import UploadsReport, rescan_uploads

__all__ = ["RescanOptions", "RunResult", "RunUsageError", "CatalogueReport", "UploadsReport",
           "rescan_catalogue", "rescan_uploads"]
