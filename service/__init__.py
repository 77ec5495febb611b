"""The rights-aware HTTP match service (FastAPI), started by ``refrain serve``; see ``docs/service.md``.

``service.app.create_app(settings)`` builds the application; routes are thin shells
over :class:`refrain.api.Refrain` (matching) and :mod:`policy` (verdicts).
"""
