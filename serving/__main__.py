"""`python -m serving`: deploy the champion to the Ray cluster at $RAY_ADDRESS (or a local Ray)."""

from __future__ import annotations

import json
import sys

from modelyard.config import load_config
from modelyard.runtime import configure_environment, configure_logging


def main() -> None:
    configure_environment()
    configure_logging()
    cfg = load_config(sys.argv[1] if len(sys.argv) > 1 else "params.yaml")
    from serving.deploy import deploy

    print(json.dumps(deploy(cfg.serve, cfg.registry, model_name=cfg.model_name)))


if __name__ == "__main__":
    main()
