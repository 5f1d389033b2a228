"""``ptuning serve``: the tasks of several checkpoints on one backbone over HTTP (FastAPI + uvicorn).

Requests name their task per input. Inputs wait in one queue; a batcher forms batches of any tasks by a token
budget, waiting at most ``max_wait_ms`` after the first input for more, and runs each batch in one inference
thread (the event loop stays free: health and metrics answer while a batch runs); a request's inputs may span
batches and come back in order. Errors are JSON ``{"error", "error_type"}`` with a 4xx status for bad input; every
field of a request body has one JSON type, checked strictly (a 422 names the field).

The modules, from the process down:

- ``runner``: the listening socket and uvicorn (``serve``);
- ``app``: the FastAPI application: background model load, error bodies, request metrics, health and metrics routes,
  and the API's routes included from their modules;
- ``native``: ptuning's own ``/v1`` routes (list, predict, runtime load and unload);
- ``openai_api``: OpenAI's completions and chat completions over the generation tasks (``model`` names the task),
  streamed as server-sent events if asked; ``text_generation``: Hugging Face's text-generation shape, one task a path;
  ``hf_inference``: Hugging Face's Inference API shapes at ``/models/NAME`` (the task's kind says which);
- ``server``: what every route shares (the predictor, the batcher, readiness, the task listing, ``resolve``: the tasks
  a request names, loaded on first use); ``registry``: the registered tasks (``--models-dir``, ``--task-listing``),
  loaded on first use, the least recently used dropped under a budget;
- ``batching``: the queue and the token-budget batcher; ``generating``: the generation prompts' scheduler (prompts
  of any tasks joining one running batch between decoding steps, each row's text streamed after every step);
  ``streams``: a queued generation request answered whole or as server-sent events;
  ``schemas``: the request bodies and their 422s;
  ``errors``: the ``{"error", "error_type"}`` body (a 405 with ``Allow``); ``contract``: the OpenAPI schema (every
  route's body, errors and content types; ``/docs`` served offline); ``metrics``: the Prometheus metrics;
- ``config``: ``ServeConfig``, the settings (this package's import loads no web framework, so ``--help`` stays fast).
"""

from .config import ServeConfig
from .runner import serve

__all__ = ["ServeConfig", "serve"]
