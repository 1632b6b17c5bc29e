"""`ddm serve`: an OpenAI-compatible completions server with continuous batching across requests.

- `ddm.serve.scheduler`: the loop that owns the model and runs one forward over the rows of every active
  request (`Scheduler`), each request being its own `ddm.sample` run (bit-identical to it alone);
- `ddm.serve.request`: a completion request's fields, checked, and its limits (`Limits`);
- `ddm.serve.app`: the FastAPI app (`create_app`): `/v1/completions`, `/v1/models`, `/health`, the page
  at `/`; it needs the `serve` extra (fastapi, uvicorn), imported only there.
"""

from ddm.serve.request import CompletionRequest, Limits
from ddm.serve.scheduler import Cancelled, Job, QueueFull, Scheduler, batch_invariant

__all__ = ["Cancelled", "CompletionRequest", "Job", "Limits", "QueueFull", "Scheduler", "batch_invariant"]
