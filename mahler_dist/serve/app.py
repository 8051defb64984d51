"""The Ray Serve application: a FastAPI ingress over batched, multiplexed generation.

    mahler serve NAME --root ROOT                   # the CLI (cli.py -> serve/launch.py)
    serve run configs/serve.yaml                    # import_path mahler_dist.serve.app:build_app

Routes: GET / (the web page), GET /healthz, GET /v1/models, POST /v1/generate, GET /docs and
/openapi.json. pred and continue requests that arrive together are decoded in one batch
(`@serve.batch`; `user_config.max_batch_size` sets it, 1 turns batching off); checkpoints are loaded
on demand and kept per replica (`@serve.multiplexed`, id RUN/CHECKPOINT from the body's `model` or
the `serve_multiplexed_model_id` header). Decoding runs in a worker thread so the replica keeps
taking requests (and filling the next batch) while a batch decodes.
"""

# no `from __future__ import annotations`: FastAPI reads the route annotations at runtime, and
# under serve.ingress string annotations of a method turn the request body into a query parameter
import asyncio
import base64
import os
from collections import Counter
from typing import Any

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from mahler_dist import storage
from mahler_dist.errors import MahlerError
from mahler_dist.generate.generator import Generator
from mahler_dist.generate.output import corpus_programs
from mahler_dist.serve import engine
from mahler_dist.serve.catalog import ModelCatalog, UnknownModel, canonical_id
from mahler_dist.serve.limits import LIMITS
from mahler_dist.serve.page import page_html
from mahler_dist.serve.schemas import ErrorOut, GenerateRequest, GenerateResponse, ModelInfo

MAX_BATCH_SIZE = 16             # pred/continue requests decoded together
MAX_ONGOING_REQUESTS = 48       # >= MAX_BATCH_SIZE x 2, so a batch fills while the previous one decodes
MAX_MODELS_PER_REPLICA = 4
# a request body is JSON: the largest upload's base64 plus the other fields
MAX_BODY_BYTES = LIMITS.max_upload_b64 + 64 * 1024

app = FastAPI(title="mahler-dist generation", version="1",
              description="Generate multi-instrument MIDI bar by bar with a trained MahlerNet C-VAE.")


def _error(status: int, message: str, detail: list | None = None) -> JSONResponse:
    return JSONResponse(ErrorOut(error=message, detail=detail).model_dump(exclude_none=True), status_code=status)


@app.exception_handler(RequestValidationError)
async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    # without `input` (an upload echoed back) and `ctx` (may hold exception objects)
    detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")).removeprefix("Value error, "),
               "type": e.get("type", "")} for e in exc.errors()]
    first = detail[0] if detail else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"] if p != "body")
    # a rule across fields (model_validator) has no field of its own: its message names them
    return _error(422, f"{where}: {first['msg']}" if where else first["msg"], detail)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    # FastAPI's own refusals (unparsable body, unknown route, wrong method) in the same shape
    return _error(exc.status_code, str(exc.detail))


@app.exception_handler(engine.RequestError)
async def _bad_request(_: Request, exc: engine.RequestError) -> JSONResponse:
    return _error(exc.status, str(exc))


@app.exception_handler(UnknownModel)
async def _unknown_model(_: Request, exc: UnknownModel) -> JSONResponse:
    return _error(404, str(exc))


@app.middleware("http")
async def _bounded_body(request: Request, call_next):
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        return _error(413, f"request body over {MAX_BODY_BYTES} bytes (an upload may be "
                           f"{LIMITS.max_upload_bytes} bytes of MIDI)")
    return await call_next(request)


def _wants_midi(accept: str | None) -> bool:
    """audio/midi only when asked for before JSON (a browser's */* gets JSON)."""
    if not accept:
        return False
    kinds = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    return "audio/midi" in kinds and ("application/json" not in kinds
                                      or kinds.index("audio/midi") < kinds.index("application/json"))


def _replica_device(device: str) -> str:
    """auto: CUDA exactly when Ray gave this replica a GPU (ray_actor_options.num_gpus), else CPU,
    even on a GPU node: a replica without a GPU must not take one behind Ray's back."""
    if device != "auto":
        return device
    import ray

    return "cuda" if ray.get_gpu_ids() else "cpu"


@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS, health_check_period_s=10,
                  health_check_timeout_s=30, graceful_shutdown_timeout_s=20,
                  ray_actor_options={"num_cpus": 1, "num_gpus": 0})
@serve.ingress(app)
class GenerationService:
    def __init__(self, root: str, default_model: str | None = None, device: str = "auto"):
        self.root = storage.as_root(root)
        self.catalog = ModelCatalog(self.root)
        self.catalog.refresh()
        self.default_model = canonical_id(default_model) if default_model else None
        if self.default_model:
            self.catalog.lookup(self.default_model)        # fail at deploy time, not at the first request
        self.device = _replica_device(device)
        self.programs = corpus_programs(self.root)
        self.batch_sizes: Counter[int] = Counter()

    def reconfigure(self, config: dict) -> None:
        """user_config: {max_batch_size, batch_wait_timeout_s}; changes apply in place."""
        self._decode_batch.set_max_batch_size(int(config.get("max_batch_size", MAX_BATCH_SIZE)))
        self._decode_batch.set_batch_wait_timeout_s(float(config.get("batch_wait_timeout_s", 0.01)))

    def check_health(self) -> None:
        if not storage.is_dir(storage.join(self.root, "runs")):
            raise RuntimeError(f"{storage.join(self.root, 'runs')} is gone: this replica has nothing to serve")

    # -- models ------------------------------------------------------------------------------
    @serve.multiplexed(max_num_models_per_replica=MAX_MODELS_PER_REPLICA)
    async def _load(self, model_id: str) -> Generator:
        """The listed checkpoint, with the temperatures and decoding limits of its run's
        config.yaml (as `mahler generate` uses them)."""
        entry = self.catalog.lookup(model_id)
        return await asyncio.to_thread(Generator.from_run, self.root, entry.run, entry.info.name, self.device)

    async def _model(self, body_model: str | None) -> tuple[str, Generator]:
        header = serve.get_multiplexed_model_id()
        if header and body_model and canonical_id(header) != canonical_id(body_model):
            raise engine.RequestError(f"model: the body asks for {body_model!r}, the header "
                                      f"serve_multiplexed_model_id for {header!r}", 400)
        wanted = body_model or header or self.default_model
        if not wanted:
            raise engine.RequestError("model: this server has no default model; name one (GET /v1/models)", 400)
        entry = self.catalog.lookup(wanted)             # UnknownModel -> 404, before any load
        return entry.id, await self._load(entry.id)

    # -- batched decoding --------------------------------------------------------------------
    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=0.01)
    async def _decode_batch(self, jobs: list[tuple[str, Generator, list]]) -> list[tuple[list, int]]:
        return await asyncio.to_thread(self._decode_now, jobs)

    def _decode_now(self, jobs: list[tuple[str, Generator, list]]) -> list[tuple[list, int]]:
        """One sample_many per model in the batch; each job gets its own chains back."""
        self.batch_sizes[len(jobs)] += 1
        results: list[Any] = [None] * len(jobs)
        by_model: dict[str, list[int]] = {}
        for i, (model_id, _, _) in enumerate(jobs):
            by_model.setdefault(model_id, []).append(i)
        for indices in by_model.values():
            gen = jobs[indices[0]][1]
            flat = [r for i in indices for r in jobs[i][2]]
            decoded = gen.sample_many(flat)
            at = 0
            for i in indices:
                n = len(jobs[i][2])
                results[i] = (decoded[at:at + n], len(jobs))
                at += n
        return results

    # -- routes ------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(page_html())

    @app.get("/healthz")
    async def healthz(self) -> dict:
        self.check_health()
        return {"status": "ok", "default_model": self.default_model, "device": self.device,
                "batches": {str(k): v for k, v in sorted(self.batch_sizes.items())}}

    @app.get("/v1/models", response_model=list[ModelInfo])
    async def models(self) -> list[ModelInfo]:
        return [ModelInfo(id=e.id, run=e.run, checkpoint=e.checkpoint, epoch=e.info.epoch, step=e.info.step,
                          val_score=e.info.val_score, default=e.id == self.default_model)
                for e in self.catalog.entries()]

    @app.post("/v1/generate", response_model=GenerateResponse,
              responses={200: {"content": {"audio/midi": {}}}, 400: {"model": ErrorOut},
                         404: {"model": ErrorOut}, 406: {"model": ErrorOut}, 413: {"model": ErrorOut},
                         422: {"model": ErrorOut}})
    async def generate(self, req: GenerateRequest, accept: str | None = Header(None)) -> Response:
        want_midi = _wants_midi(accept)
        if want_midi and req.samples > 1:
            raise engine.RequestError("Accept: audio/midi answers one sample; ask for samples: 1 or "
                                      "Accept: application/json", 406)
        model_id, gen = await self._model(req.model)
        windows = None
        if req.mode != "pred":
            windows = await asyncio.to_thread(engine.request_windows, req, self.root, engine.LIMITS,
                                              gen.config.data.quantize)
        if req.mode in ("pred", "continue"):
            plan = await asyncio.to_thread(engine.plan_sampling, req, gen, windows)
            decoded, batch_size = await self._decode_batch((model_id, gen, plan.requests))
            answer = engine.finish_sampling(req, plan, decoded, model_id, self.programs, batch_size)
        elif req.mode == "recon":
            answer = await asyncio.to_thread(engine.run_recon, req, gen, windows, model_id, self.programs)
        else:
            answer = await asyncio.to_thread(engine.run_intpol, req, gen, windows, model_id, self.programs)
        if want_midi:
            return Response(base64.b64decode(answer.samples[0].midi), media_type="audio/midi",
                            headers={"X-Mahler-Seed": str(answer.seed), "X-Mahler-Model": model_id,
                                     "Content-Disposition": f'attachment; filename="mahler-{req.mode}-{answer.seed}.mid"'})
        return JSONResponse(engine.finite(answer.model_dump()), headers={"X-Mahler-Seed": str(answer.seed)})


def build_app(args: dict[str, Any]) -> serve.Application:
    """The application builder of `serve run` / `serve deploy` (configs/serve.yaml `args`):
    root (a local ROOT), model (the default RUN or RUN/CHECKPOINT), device (auto | cpu | cuda)."""
    unknown = set(args) - {"root", "model", "device"}
    if unknown:
        raise MahlerError(f"serve args: unknown {', '.join(sorted(unknown))} (use root, model, device)")
    root = args.get("root") or os.environ.get("MAHLER_ROOT")
    if not root:
        raise MahlerError("serve args: root is required (the preprocessed ROOT with runs/)")
    # refused here, by name, rather than in every replica (Path() makes s3://b/x a folder "s3:")
    return GenerationService.bind(str(storage.as_root(root)), args.get("model"), str(args.get("device", "auto")))
