"""The request path as a list of stages: [cache, providers,] parse, check model, schedule, forward.

Each stage reads and fills the RequestContext; the first stage that returns a Reply ends the pipeline (the
forward stage always does; the cache stage does on a hit, and on a miss adds a reply hook that wraps
whatever a later stage answers, to record it). A stage
refuses a request by raising RequestError or SchedulingError, which become OpenAI-style JSON errors. The
record step runs after the reply has been sent, outside the pipeline (gateway/record.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Protocol

from epp.model_catalog import ModelCatalog
from epp.request import RequestError, stream_flag
from epp.requestcontrol.director import Director
from epp.scheduling.types import SchedulingError
from gateway.context import OUTCOME_REFUSED, Reply, RequestContext, error_json

logger = logging.getLogger(__name__)


class Stage(Protocol):
    """One step of the request path; returns a Reply to answer the request, or None to go on."""

    name: str

    async def run(self, ctx: RequestContext) -> Reply | None: ...


class Pipeline:
    """Runs the stages in order; never raises except for cancellation."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        self.stages = list(stages)

    async def run(self, ctx: RequestContext) -> Reply:
        reply = await self._run_stages(ctx)
        # Taken off the context: a hook usually holds `ctx`, and a cycle through it would leave the request's
        # whole object graph to the garbage collector instead of freeing it as the request ends.
        hooks, ctx.reply_hooks = ctx.reply_hooks, []
        for hook in reversed(hooks):  # an earlier stage's hook wraps what later stages answered
            reply = hook(reply)
        return reply

    async def _run_stages(self, ctx: RequestContext) -> Reply:
        for stage in self.stages:
            try:
                reply = await stage.run(ctx)
            except (RequestError, SchedulingError) as exc:
                ctx.result = OUTCOME_REFUSED
                return error_json(exc)
            except Exception as exc:
                logger.exception("stage %s failed for request_id=%s", stage.name, ctx.request_id)
                ctx.result = OUTCOME_REFUSED
                return error_json(exc)
            if reply is not None:
                return reply
        logger.error("no stage answered request_id=%s", ctx.request_id)
        ctx.result = OUTCOME_REFUSED
        return error_json(RuntimeError("no stage answered"))


class ParseStage:
    """Parse the OpenAI request (model, prompt, InferenceModel rewrite) with the director's parser."""

    name = "parse"

    def __init__(self, director: Director) -> None:
        self._director = director

    async def run(self, ctx: RequestContext) -> Reply | None:
        ctx.parsed_at = time.perf_counter()
        if not ctx.body:  # the director lets an empty body through on paths beyond chat/completions
            raise RequestError(400, "Request body is empty.", code="invalid_body")
        ctx.parsed = parsed = self._director.parse(ctx.body, ctx.headers, ctx.path)
        ctx.stream = stream_flag(parsed.request.body)
        return None


class ModelCheckStage:
    """404 for a model that no pod serves and no InferenceModel or LoRA adapter names."""

    name = "check_model"

    def __init__(self, catalog: ModelCatalog) -> None:
        self._catalog = catalog

    async def run(self, ctx: RequestContext) -> Reply | None:
        assert ctx.parsed is not None, "parse runs first"
        model = ctx.parsed.request.model
        if not await self._catalog.is_served(model):
            raise RequestError(
                404, f"The model `{model}` does not exist.", param="model", code="model_not_found"
            )
        return None


class ScheduleStage:
    """admit -> pick (429 when shed, 503 when none fits); the director records the decision."""

    name = "schedule"

    def __init__(self, director: Director) -> None:
        self._director = director

    async def run(self, ctx: RequestContext) -> Reply | None:
        assert ctx.parsed is not None, "parse runs first"
        ctx.lifecycle = lifecycle = self._director.schedule(ctx.parsed, ctx.parsed_at)
        lifecycle.arrived = ctx.started
        return None
