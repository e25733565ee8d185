"""Start a run of the `training-pipeline` deployment on the Prefect server and follow it to the end.

`make run` calls this: it prints each task's state as it changes and the flow's log lines (training's progress
inside an epoch and each epoch's metrics among them), then exits 0 when the run completed (non-zero
otherwise). Parameters not given come from the deployment's form.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, LogFilter, LogFilterFlowRunId
from prefect.client.schemas.sorting import LogSort
from prefect.deployments import run_deployment

DEPLOYMENT = "training-pipeline/training-pipeline"


async def follow(flow_run_id, poll_s: float = 3.0) -> str:
    """Print task state changes and the flow's log lines until the run ends; returns its final state."""
    log_offset = 0
    task_states: dict[str, str] = {}
    start = time.monotonic()
    async with get_client() as client:
        while True:
            run = await client.read_flow_run(flow_run_id)
            tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}))
            for t in sorted(tasks, key=lambda t: t.expected_start_time or t.created):
                state = t.state.name if t.state else "?"
                if task_states.get(t.name) != state:
                    task_states[t.name] = state
                    print(f"[{time.monotonic() - start:6.0f}s] task {t.name:<14} {state}", flush=True)
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                sort=LogSort.TIMESTAMP_ASC, offset=log_offset,
            )
            log_offset += len(logs)
            for entry in logs:
                print(f"         {entry.message.splitlines()[0][:200]}", flush=True)
            if run.state and run.state.is_final():
                print(f"[{time.monotonic() - start:6.0f}s] flow run {run.name}: {run.state.name}", flush=True)
                return run.state.type.value
            await asyncio.sleep(poll_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", help="a named recipe (`modelyard recipes`), sent as the form's recipe field")
    args = parser.parse_args()
    parameters = {"recipe": args.recipe} if args.recipe else None
    flow_run = run_deployment(DEPLOYMENT, parameters=parameters, timeout=0)  # returns at once; followed below
    print(f"flow run {flow_run.name} ({flow_run.id}) started from {DEPLOYMENT}", flush=True)
    state = asyncio.run(follow(flow_run.id))
    return 0 if state == "COMPLETED" else 1


if __name__ == "__main__":
    sys.exit(main())
