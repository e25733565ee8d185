"""`python -m serving [params.yaml] [--task NAME]`: serve every task's champion (or one task's) on the Ray
cluster at $RAY_ADDRESS, or a local Ray, each under its own route; prints what is served."""

from __future__ import annotations

import argparse
import json

from modelyard.config import load_config
from modelyard.runtime import configure_environment, configure_logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("params", nargs="?", default="params.yaml")
    parser.add_argument("--task", help="one registered model name; default: every model with a champion")
    parser.add_argument("--if-any", action="store_true",
                        help="no champion registered yet is not an error (what `make up` runs after a restart)")
    args = parser.parse_args()
    configure_environment()
    configure_logging()
    cfg = load_config(args.params)
    from serving.deploy import NoChampionError, deploy, deploy_all

    if args.task:
        print(json.dumps(deploy(cfg.resolved_serve(), cfg.registry, model_name=args.task)))
        return
    try:
        print(json.dumps(deploy_all(cfg.resolved_serve(), cfg.registry), indent=1))
    except NoChampionError as err:
        if not args.if_any:
            raise
        print(err)


if __name__ == "__main__":
    main()
