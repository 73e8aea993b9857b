"""The MLflow server app ``make ui`` runs (``mlflow server --app-name study-ui``): MLflow's
own app, with its start page set up for a study that sends no usage data.

MLflow 3.17's home page shows a "MLflow collects usage data" notice whether or not
telemetry is off (its UI hides it only once a browser has dismissed it, a flag in the
browser's local storage), and opens its assistant panel on a browser's first visit. With
telemetry off on the server (``study.tracking.ui`` sets ``MLFLOW_DISABLE_TELEMETRY``), the notice is
false: the page MLflow serves gets a few lines that set those two flags, in the browser,
before MLflow's script reads them; a reader who opens the assistant keeps it open.

Registered as the ``mlflow.app`` entry point ``study-ui`` (pyproject.toml). This module is
imported by the ``mlflow`` command too, to see that ``create_app`` is a factory: MLflow's
server modules are imported inside it, so that check stays cheap.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

# MLflow 3.17's local-storage flags (key -> value as its UI stores them).
FLAGS = {
    "mlflow.telemetry.info.alert.dismissed_v1": "true",
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
    "mlflow.assistant.panelOpen_v1": "false",
}
SCRIPT = (
    "<script>(function(){var f=" + json.dumps(FLAGS) + ";for(var k in f){try{"
    "if(localStorage.getItem(k)===null){localStorage.setItem(k,f[k]);}}catch(e){}}})();</script>"
)


@functools.cache
def index_html(static_folder: str) -> str:
    text = (Path(static_folder) / "index.html").read_text()
    return text.replace("<head>", "<head>" + SCRIPT, 1)


def create_app() -> Any:
    """MLflow's ASGI app (what ``mlflow server`` runs under uvicorn), its index page
    carrying :data:`SCRIPT`."""
    from flask import Response, request
    from mlflow.server import app as flask_app
    from mlflow.server.fastapi_app import app

    @flask_app.after_request
    def _set_flags(response: Response) -> Response:
        if (
            response.status_code == 200
            and response.mimetype == "text/html"
            and (request.endpoint == "serve")
        ):
            return Response(index_html(flask_app.static_folder), mimetype="text/html")
        return response

    return app
