"""Lineage: publishing a licensed upload as a derivative work, and a work's ancestors and descendants.

`POST /v1/matches/{id}/publish` (the uploader that made the upload) registers it as a work
of its principal with a link to each work it was matched to; `GET /v1/works/{id}/lineage`
answers the graph around a work, which the analyst page draws (`/analyst/works/{id}/lineage`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup, escape

from refrain.service.core import MatchService, work_out
from refrain.service.db import ApiKey, Work, WorkLink
from refrain.service.deps import ServiceDep, UploaderKey, require_role
from refrain.service.errors import ApiError
from refrain.service.routers import error_responses
from refrain.service.routers.analyst import _page, _sign_in_page, _signed_in
from refrain.service.routers.params import DecisionIdPath, WorkIdPath
from refrain.service.routers.works import existing_work, policy_from_body, managed_work
from refrain.service.schemas import LineageLinkOut, LineageOut, PublishIn, WorkOut

router = APIRouter(tags=["lineage"])


@router.post("/v1/matches/{decision_id}/publish", status_code=201, response_model=WorkOut,
             summary="Publish a licensed or allowed upload as a derivative work (uploader)",
             responses=error_responses(400, 404, 408, 409))
def publish(body: PublishIn, decision_id: DecisionIdPath, service: ServiceDep, key: UploaderKey) -> WorkOut:
    """Register the upload of a stored decision whose verdict is `allowed` or `licensed` as a new work
    owned by the uploader's principal, with a parent link to every work it was matched to (kind, spans,
    time ratio, pitch shift). It enters the index from the upload's stored fingerprint: later uploads
    that copy or remix it are matched to it and attributed to its ancestors too. Its policy defaults
    to the most permissive its parents allow; a more permissive `policy` is 422. 403 for another
    principal's decision; 409 for another verdict or a decision already published."""
    work = service.publish(decision_id, key, body.title, body.artists, body.isrc,
                           policy_from_body(body.policy) if body.policy is not None else None)
    return WorkOut(**work_out(work, service.db.effective_policies([work.work_id]).get(work.work_id)))


@dataclass(frozen=True)
class Lineage:
    """A work, its ancestors and descendants by id, and every link between them."""

    work: Work
    ancestors: dict[int, Work]
    descendants: dict[int, Work]
    links: list[WorkLink]


def lineage_of(service: MatchService, work_id: int) -> Lineage:
    work = existing_work(service, work_id)
    up, down = service.db.ancestor_links([work_id]), service.db.descendant_links([work_id])
    ancestors = service.db.works_by_id(sorted({link.parent_work_id for link in up}))
    descendants = service.db.works_by_id(sorted({link.work_id for link in down}))
    links = {(link.work_id, link.parent_work_id): link for link in [*up, *down]}
    return Lineage(work, ancestors, descendants, [links[pair] for pair in sorted(links)])


def _link_out(link: WorkLink) -> LineageLinkOut:
    return LineageLinkOut(work_id=link.work_id, parent_work_id=link.parent_work_id, decision_id=link.decision_id,
                          kind=link.kind, score=link.score, confidence=link.confidence, time_ratio=link.time_ratio,
                          pitch_shift_semitones=link.pitch_shift_semitones, covered_seconds=link.covered_seconds,
                          share=link.share, spans=link.spans, created_at=link.created_at)


@router.get("/v1/works/{work_id}/lineage", response_model=LineageOut, summary="A work's ancestors and descendants",
            responses=error_responses(404))
def get_lineage(work_id: WorkIdPath, service: ServiceDep,
                key: Annotated[ApiKey, Depends(require_role("admin", "analyst", "rights_holder",
                                                            "uploader"))]) -> LineageOut:
    """Every work the work derives from (ancestors) and every published derivative of it (descendants),
    with each link's evidence: the derivative's match against its parent when it was published. Admins
    and analysts see any work's lineage; a work's owner sees its own."""
    if key.role not in ("admin", "analyst"):
        managed_work(service, key, work_id)
    found = lineage_of(service, work_id)
    every = [found.work, *found.ancestors.values(), *found.descendants.values()]
    policies = service.db.effective_policies([w.work_id for w in every])

    def out(work: Work) -> WorkOut:
        return WorkOut(**work_out(work, policies.get(work.work_id)))

    return LineageOut(work=out(found.work), ancestors=[out(w) for w in found.ancestors.values()],
                      descendants=[out(w) for w in found.descendants.values()],
                      links=[_link_out(link) for link in found.links])


# -- the analyst page's drawing ------------------------------------------------------------------

_NODE_WIDTH, _NODE_HEIGHT, _COLUMN_GAP, _ROW_GAP, _MARGIN = 220, 46, 30, 70, 20


def _levels(found: Lineage) -> dict[int, int]:
    """Row of each work: ancestors above the work (row 0 is the furthest), descendants below.

    A work's row is one above its nearest child on the way up (ancestors), one below its
    nearest parent on the way down (descendants): the shortest route decides.
    """
    level = {found.work.work_id: 0}
    for direction in (-1, 1):
        frontier = [found.work.work_id]
        while frontier:
            following = []
            for current in frontier:
                for link in found.links:
                    start, end = ((link.work_id, link.parent_work_id) if direction < 0
                                  else (link.parent_work_id, link.work_id))
                    if start == current and end not in level:
                        level[end] = level[current] + direction
                        following.append(end)
            frontier = following
    top = min(level.values())
    return {work_id: row - top for work_id, row in level.items()}


def lineage_svg(found: Lineage) -> Markup:
    """The lineage as a layered graph (SVG): one box per work, one arrow per link from derivative to parent.

    Each arrow is labelled with the link's kind and share; the work asked for is highlighted.
    """
    works = {found.work.work_id: found.work, **found.ancestors, **found.descendants}
    level = _levels(found)
    rows: dict[int, list[int]] = {}
    for work_id in sorted(level):
        rows.setdefault(level[work_id], []).append(work_id)
    columns = max(len(ids) for ids in rows.values())
    width = 2 * _MARGIN + columns * _NODE_WIDTH + (columns - 1) * _COLUMN_GAP
    height = 2 * _MARGIN + len(rows) * _NODE_HEIGHT + (len(rows) - 1) * _ROW_GAP
    place = {}
    for row, ids in rows.items():
        row_width = len(ids) * _NODE_WIDTH + (len(ids) - 1) * _COLUMN_GAP
        for column, work_id in enumerate(ids):
            place[work_id] = ((width - row_width) / 2 + column * (_NODE_WIDTH + _COLUMN_GAP),
                              _MARGIN + row * (_NODE_HEIGHT + _ROW_GAP))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" id="lineage-graph" width="{width:.0f}" height="{height:.0f}"'
             f' viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-labelledby="lineage-title">',
             f'<title id="lineage-title">Lineage of work {found.work.work_id}</title>',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7"'
             ' orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>']
    for link in found.links:
        if link.work_id not in place or link.parent_work_id not in place:
            continue
        (cx, cy), (px, py) = place[link.work_id], place[link.parent_work_id]
        x1, y1 = cx + _NODE_WIDTH / 2, cy + (0 if py < cy else _NODE_HEIGHT)
        x2, y2 = px + _NODE_WIDTH / 2, py + (_NODE_HEIGHT if py < cy else 0)
        parts.append(f'<g class="link" data-child="{link.work_id}" data-parent="{link.parent_work_id}">'
                     f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="#555"'
                     f' marker-end="url(#arrow)"/>'
                     f'<text x="{(x1 + x2) / 2 + 6:.1f}" y="{(y1 + y2) / 2:.1f}" font-size="11">'
                     f'{escape(link.kind)} · {link.share:.0%} · ×{link.time_ratio:.2f}</text></g>')
    for work_id, (x, y) in place.items():
        work = works[work_id]
        focus = work_id == found.work.work_id
        parts.append(f'<g class="work{" focus" if focus else ""}" id="lineage-work-{work_id}">'
                     f'<a href="/analyst/works/{work_id}/lineage">'
                     f'<rect x="{x:.1f}" y="{y:.1f}" width="{_NODE_WIDTH}" height="{_NODE_HEIGHT}" rx="6"'
                     f' fill="{"#fde9b0" if focus else "#eef2f7"}" stroke="#334"/>'
                     f'<text x="{x + 8:.1f}" y="{y + 18:.1f}" font-size="13" font-weight="bold">'
                     f'{escape(work.title[:28])}</text>'
                     f'<text x="{x + 8:.1f}" y="{y + 36:.1f}" font-size="11">work {work_id} · '
                     f'{escape(work.rights_holder[:20])}</text></a></g>')
    parts.append("</svg>")
    return Markup("".join(parts))


@router.get("/analyst/works/{work_id}/lineage", response_class=HTMLResponse, include_in_schema=False)
def show_lineage(work_id: int, request: Request, service: ServiceDep) -> HTMLResponse:
    """The analyst page's drawing of a work's lineage, with each link's evidence in a table."""
    key = _signed_in(request, service)
    if key is None:
        return _sign_in_page("sign in with an analyst key first", 401)
    try:
        found = lineage_of(service, work_id)
    except ApiError as err:
        return _page("error.html", err.status, err.headers, key=key, status=err.status, message=err.message)
    works = {found.work.work_id: found.work, **found.ancestors, **found.descendants}
    return _page("lineage.html", key=key, work=found.work, works=works, links=found.links, graph=lineage_svg(found),
                 decision_url=lambda decision_id: f"/analyst/decisions/{quote(decision_id, safe='')}")
