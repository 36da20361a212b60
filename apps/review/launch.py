"""`adafocus app`: start the Streamlit review app on 127.0.0.1 with the folders it may read."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from adafocus.apps.review import app as review_app
from adafocus.core.device import resolve_device
from adafocus.core.engine import ENV_ENGINE, ENV_PRECISION, needs_calibration, resolve_engine
from adafocus.core.run import RunFolder


def app_environment(args, base: dict[str, str]) -> dict[str, str]:
    """The app's environment: the folders it may read, the run it scores with, its engine. A missing folder,
    a --model that is not a run folder or a bad engine choice is a one-line error here, before Streamlit."""
    env = dict(base)
    if args.scans is None and args.videos is None:
        raise ValueError("give --scans DIR and/or --videos DIR (the folders the app may read)")
    for value, name, variable in ((args.scans, "--scans", review_app.ENV_SCANS),
                                  (args.videos, "--videos", review_app.ENV_VIDEOS)):
        if value is not None:
            if not Path(value).is_dir():
                raise FileNotFoundError(f"{name} {value} is not a folder")
            env[variable] = str(Path(value).resolve())
    if args.model is not None:
        env[review_app.ENV_MODEL] = str(RunFolder.locate(args.model).path.resolve())
    env[review_app.ENV_MAX_UPLOAD] = str(args.max_upload_mb)
    resolve_engine(args.engine, resolve_device("auto"), args.precision)
    if needs_calibration(args.precision):
        raise ValueError(f"--precision {args.precision} calibrates on the files being scored; the app runs fp32 "
                         "(or bf16)")
    env[ENV_ENGINE], env[ENV_PRECISION] = args.engine, args.precision
    return env


def launch_app(args) -> int:
    """Run Streamlit on 127.0.0.1:PORT until Ctrl-C."""
    env = app_environment(args, os.environ)
    command = [sys.executable, "-m", "streamlit", "run", review_app.__file__, *review_app.STREAMLIT_FLAGS,
               "--server.port", str(args.port), "--server.maxUploadSize", str(max(1, round(args.max_upload_mb)))]
    print(f"review app: http://127.0.0.1:{args.port}/  (Ctrl-C to stop)")
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 0
