"""The web console (issue 12, ADR 0054): server-rendered pages with htmx, mounted on the REST edge
at ``/console/``, calling the services with the signed-in user's own token."""

from strongroom_api.console.app import build_console
from strongroom_api.console.web import PREFIX

__all__ = ["PREFIX", "build_console"]
