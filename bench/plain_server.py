"""The baseline of the serving benchmark: the server a user writes from "serve a PyTorch model via FastAPI".

    python -m bench.plain_server --model-dir DIR [--port 8100] [--threads 2]

One uvicorn process, one FastAPI route, one forward pass per request (no batching, no replicas), the same
saved model and the same decoding rules as modelyard's server, so that the benchmark compares serving and
nothing else. Images arrive as multipart `file`, texts as JSON {"text": ...}.
"""

# No `from __future__ import annotations`: FastAPI reads the handler's annotations at runtime.
import argparse
import json


def build(model_dir: str, threads: int):
    import torch
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from modelyard.inference import InvalidInputError, Predictor

    torch.set_num_threads(threads)
    predictor = Predictor.from_dir(model_dir)
    app = FastAPI(title="plain")

    @app.post("/predict")
    async def predict(request: Request):
        try:
            if predictor.preprocessor.kind == "text":
                inputs = predictor.check_batch([json.loads(await request.body())["text"]])
            else:
                form = await request.form()
                inputs = predictor.preprocessor.decode(await form["file"].read())[None]
        except InvalidInputError as exc:
            return JSONResponse({"error": exc.code, "detail": exc.message}, status_code=400)
        return predictor.predict(inputs)[0].to_dict()

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    uvicorn.run(build(args.model_dir, args.threads), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
