"""`studio`: run the LoRA Studio (page and REST API) on its own, with Waitress, on 127.0.0.1 by default."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..console import err, out
from ..errors import DevserverLoraError
from ..invocation import train_command


def _cmd_studio(args: argparse.Namespace) -> int:
    try:
        from waitress import create_server

        from ..studio import create_app
    except ImportError as exc:
        raise DevserverLoraError(f"the Studio needs Flask and Waitress ({exc.name} is missing)",
                                 hint="install the extra: pip install -e \".[studio]\"") from None
    app = create_app(data_dir=args.home, jobs_dir=args.jobs_dir, loras_dir=args.loras_dir,
                     schemas_dir=args.schemas, models_dir=args.models_dir, teachers=args.teacher or (),
                     model_checkpoint=args.model_checkpoint.absolute() if args.model_checkpoint else None)
    # Every browser following a job holds one connection (SSE) and so one thread.
    server = create_server(app, host=args.host, port=args.port, threads=args.threads, channel_timeout=120)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"the Studio listens on {args.host}: anyone who reaches it may name themselves as any user "
                  "(standalone has no login); mount it into DevServer for its session login", highlight=False)
    out.print(f"LoRA Studio on http://{args.host}:{server.effective_port}/lora (Ctrl+C stops it)",
              highlight=False)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("studio", help="run the LoRA Studio web page and REST API on its own (Waitress)",
                       description="Serve the LoRA Studio (/lora and /api/lora/...) and DevServer's /api/training/* "
                       "routes. Jobs live in the same job store as the training commands (" + train_command() + ").")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--threads", type=int, default=48, help="worker threads: one per open page following a job")
    p.add_argument("--home", type=Path, help="devserver-lora home: datasets, jobs (env DEVSERVER_LORA_HOME)")
    p.add_argument("--jobs-dir", type=Path, help="where jobs live (default: HOME/jobs)")
    p.add_argument("--loras-dir", type=Path, help="ComfyUI's models/loras, where Install puts LoRAs")
    p.add_argument("--schemas", type=Path, help="DevServer's schemas folder, for the output config Install writes")
    p.add_argument("--models-dir", type=Path, help="base models for the native backend (env DEVSERVER_LORA_MODELS)")
    p.add_argument("--model-checkpoint", type=Path,
                   help="one base checkpoint for native training (e.g. the demo's tiny SD3), instead of --models-dir")
    p.add_argument("--teacher", action="append", metavar="NAME", help="a user who sees every job (repeatable)")
    p.set_defaults(func=_cmd_studio)
