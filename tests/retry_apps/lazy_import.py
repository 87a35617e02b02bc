"""A library a retry handler imports on first use (as a model library, seconds long
to import): its import waits at the gate (``RETRY_APP_STARTED`` / ``RETRY_APP_GO``)."""

from retry_apps.pipeline import _gate

_gate()
