from __future__ import annotations

from .api import Api

api = Api()
