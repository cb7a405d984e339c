"""Operations that `chirp call` tests run in-process."""

import chirp
from chirptest.messages_pb2 import EchoRequest, EchoResponse


@chirp.operation(name="test-echo", timeout=5)
async def echo(ctx: chirp.Context, req: EchoRequest) -> EchoResponse:
    """Answer with the text, or raise the error `raise_kind` names."""
    if req.raise_kind == "operation":
        raise chirp.OperationError("ECHO_REFUSED", f"refused {req.text!r}", status=409)
    if req.raise_kind == "crash":
        raise RuntimeError("echo crashed")
    return EchoResponse(
        text=req.text,
        ray_id=ctx.ray_id,
        request_id=ctx.request_id,
        depth=len(ctx.trace),
    )
