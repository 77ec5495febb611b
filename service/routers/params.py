"""Parameters that several routes share, each declared once: the path ids and the paging query.

``Annotated`` aliases rather than module-level ``Path(...)`` defaults: FastAPI copies the metadata for
every parameter it declares, where a shared default ``FieldInfo`` would be mutated (its alias set) by
every route and application using it. A query parameter's default stays at the endpoint
(``limit: LimitQuery = 50``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

from refrain.service.schemas import MAX_DB_INTEGER

__all__ = ["WorkIdPath", "DecisionIdPath", "DisputeIdPath", "LicenceIdPath", "LimitQuery", "OffsetQuery"]

WorkIdPath = Annotated[int, Path(description="The work's id", ge=1, le=MAX_DB_INTEGER)]
DecisionIdPath = Annotated[str, Path(description="The decision's id (`dec_…`)", max_length=100)]
DisputeIdPath = Annotated[str, Path(description="The dispute's id (`dsp_…`)", max_length=100)]
LicenceIdPath = Annotated[str, Path(description="The licence's id (`lic_…`)", max_length=100)]

#: How many items a page of a listing holds at most.
LimitQuery = Annotated[int, Query(ge=1, le=500)]
#: How many items of a listing come before the page.
OffsetQuery = Annotated[int, Query(ge=0, le=MAX_DB_INTEGER)]
