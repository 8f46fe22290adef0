"""Endpoints for machines: liveness, the governance health verdict, and Prometheus metrics.

/health/live/ and /health/governance/ are open (uptime monitors carry no credentials); they say
nothing but statuses, run ids and times. /metrics is restricted: a bearer token when METRICS_TOKEN
is set, otherwise loopback clients only.
"""

import hmac
import logging

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_safe
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .health import governance_health
from .metrics import registry

logger = logging.getLogger(__name__)

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


# require_safe (GET and HEAD): uptime monitors often probe with HEAD, and a 405 reads as "down".
@never_cache
@require_safe
def live(request):
    """The web process answers: nothing else is checked."""
    return JsonResponse({"status": "live"})


@never_cache
@require_safe
def governance(request):
    """200 when both jobs are healthy, 503 otherwise, with the same verdict as `governance_health`."""
    try:
        verdict = governance_health()
    except DatabaseError as exc:
        logger.error("Governance health check could not read the run history: %s", type(exc).__name__)
        return JsonResponse(
            {"status": "unhealthy", "summary": "unhealthy: the run history cannot be read (database error)",
             "checked_at": timezone.now().isoformat()},
            status=503,
        )
    return JsonResponse(verdict.as_json(), status=200 if verdict.healthy else 503)


def _metrics_allowed(request):
    token = settings.METRICS_TOKEN
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
    return request.META.get("REMOTE_ADDR") in LOOPBACK


@never_cache
@require_GET
def metrics(request):
    if not _metrics_allowed(request):
        response = HttpResponse("Forbidden: /metrics needs a bearer token (METRICS_TOKEN) or a loopback client.\n",
                                status=401 if settings.METRICS_TOKEN else 403, content_type="text/plain")
        if settings.METRICS_TOKEN:
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
