"""A library a retry handler imports on first use (as a model library, slow to
import): its import tells ``RETRY_APP_STARTED`` it began, then takes RETRY_APP_IMPORT_SECONDS (1)."""

import os
import time

started = os.environ.get("RETRY_APP_STARTED")
if started:
    with open(started, "a") as fh:
        fh.write(f"{os.getpid()}\n")
time.sleep(float(os.environ.get("RETRY_APP_IMPORT_SECONDS", "1")))
