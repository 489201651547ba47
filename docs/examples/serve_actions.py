"""Serve actions from a running training over HTTP, with the latest policy the learner published.

    .venv/bin/apexrl run &                                   # a training (its learner's port is in
                                                             # the run folder's logs/learner.log)
    .venv/bin/python docs/examples/serve_actions.py --learner 127.0.0.1:PORT --port 8000
    curl -s localhost:8000/act -d '{"observations": [[0.01, 0.02, 0.03, 0.04]]}'
    # {"actions": [1], "parameter_version": 812}

POST /act takes {"observations": [...]} (a batch) and answers the actions and the
parameter version that chose them; GET /healthz answers "ok". Only the standard
library and :class:`services.policy_client.PolicyClient` are used.
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from services.policy_client import PolicyClient


def serve(policy: PolicyClient, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer(200, "ok" if self.path == "/healthz" else "not found", "text/plain")

        def do_POST(self) -> None:
            if self.path != "/act":
                self._answer(404, "not found", "text/plain")
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                actions = policy.act_batch(np.asarray(body["observations"], dtype=np.float32))
            except (ValueError, KeyError, TypeError) as error:
                self._answer(400, json.dumps({"error": str(error)}), "application/json")
                return
            reply = {"actions": actions.tolist(), "parameter_version": policy.version}
            self._answer(200, json.dumps(reply), "application/json")

        def _answer(self, status: int, body: str, kind: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return ThreadingHTTPServer((host, port), Handler)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--learner", required=True, help="host:port of the learner")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    arguments = parser.parse_args()
    with PolicyClient(arguments.learner) as policy:
        server = serve(policy, arguments.host, arguments.port)
        print(f"serving actions address={arguments.host}:{server.server_address[1]}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()


if __name__ == "__main__":
    main()
