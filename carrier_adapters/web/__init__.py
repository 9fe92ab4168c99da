"""The holder's page: the carrier adapter's web front end over its own HolderService.

Served over HTTP on loopback (``holder_web_listen``), for the carrier to put behind its TLS front
end or embed in its app; zh and en; tested in a real browser. See docs/portal.md.
"""

from __future__ import annotations

__all__: list[str] = []
