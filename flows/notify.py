"""Telling someone when a run fails, crashes or trains badly: a Prefect event, and a webhook POST.

`notify_failure` is every flow's `on_failure` and `on_crashed` hook. It emits the event
`faces.run.failed` (or `faces.run.crashed`) about the flow run, with its flow and deployment as related
resources and the reason in the payload, for Prefect automations; and when the run's `notify`
parameter (faces.toml's `[notify]`) names a `webhook`, it POSTs one short JSON message there. One
attempt with a timeout, no retries: a webhook that is down costs a log line, never the run's own
failure, which stays the reason the run failed.

`notify_training_warnings` does the same (`faces.run.warned`, state "Warned") when the train stage
trained and its watch warned (collapse, D overpowering G): the run completes, but an unattended
nightly run that produced a bad generator must not go unnoticed.
"""

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, State
from prefect.context import get_run_context
from prefect.events import emit_event
from prefect.logging.loggers import flow_run_logger

from common.files import read_json
from common.report import StageReport
from flows.config import NotifyConfig


def _deployment_name(flow_run: FlowRun, flow_name: str) -> str | None:
    """`<flow>/<deployment>` of a deployment's run, None for a run started from code or `faces run`."""
    if flow_run.deployment_id is None:
        return None
    with get_client(sync_client=True) as client:
        return f"{flow_name}/{client.read_deployment(flow_run.deployment_id).name}"


def run_message(flow_name: str, flow_run: FlowRun, state: str, reason: str, deployment: str | None) -> dict:
    """The webhook's JSON: `text` for chat tools, and the same facts as fields."""
    reason = " ".join(reason.split())
    where = f" (deployment {deployment})" if deployment else ""
    return {
        "text": f"faces: flow run '{flow_run.name}'{where} {state.lower()}: {reason}",
        "flow": flow_name,
        "flow_run": flow_run.name,
        "flow_run_id": str(flow_run.id),
        "deployment": deployment,
        "state": state,
        "reason": reason,
    }


def emit_run_event(message: dict, flow_run: FlowRun) -> None:
    related: list[dict[str, str]] = [
        {
            "prefect.resource.id": f"prefect.flow.{flow_run.flow_id}",
            "prefect.resource.role": "flow",
            "prefect.resource.name": message["flow"],
        }
    ]
    if flow_run.deployment_id:
        related.append(
            {
                "prefect.resource.id": f"prefect.deployment.{flow_run.deployment_id}",
                "prefect.resource.role": "deployment",
                "prefect.resource.name": message["deployment"] or "",
            }
        )
    emit_event(
        event=f"faces.run.{message['state'].lower()}",
        resource={
            "prefect.resource.id": f"prefect.flow-run.{flow_run.id}",
            "prefect.resource.name": flow_run.name,
        },
        related=related,
        payload={key: message[key] for key in ("flow_run", "deployment", "state", "reason")},
    )


def post_webhook(settings: NotifyConfig, message: dict, logger) -> None:
    """One POST; a failure is logged (naming the host only: webhook URLs often hold a secret)."""
    host = urlsplit(settings.webhook).netloc
    try:
        response = httpx.post(settings.webhook, json=message, timeout=settings.timeout_seconds)
        response.raise_for_status()
    except httpx.HTTPError as e:
        logger.warning("could not notify the webhook at %s: %s", host, " ".join(str(e).split()))
    else:
        logger.info("told the webhook at %s that this run %s", host, message["state"].lower())


def notify_failure(flow: Any, flow_run: FlowRun, state: State) -> None:
    """on_failure / on_crashed hook: the event, then the webhook when `[notify] webhook` is set."""
    reason = state.message or state.name or ""
    _notify(flow.name, flow_run, state.name, reason, flow_run_logger(flow_run, flow))


def notify_training_warnings(report: StageReport) -> None:
    """From the train task that trained and warned: the run's event and webhook, state "Warned"."""
    run_dir = Path(report.outputs["run_dir"])
    warnings = read_json(run_dir / "run.json").get("warnings", [])  # what the watch said, as recorded
    reason = f"training warned ({len(warnings)}): {'; '.join(warnings)}; see runs/{run_dir.name}/run.json"
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(get_run_context().task_run.flow_run_id)
        flow_name = client.read_flow(flow_run.flow_id).name
    _notify(flow_name, flow_run, "Warned", reason, get_run_logger())


def _notify(flow_name: str, flow_run: FlowRun, state: str, reason: str, logger: Any) -> None:
    try:
        deployment = _deployment_name(flow_run, flow_name)
    except Exception as e:  # the alert must still go out when the server cannot be read
        logger.warning("could not read the run's deployment: %s", e)
        deployment = None
    message = run_message(flow_name, flow_run, state, reason, deployment)
    emit_run_event(message, flow_run)
    settings = NotifyConfig.model_validate(flow_run.parameters.get("notify") or {})
    if settings.webhook:
        post_webhook(settings, message, logger)
