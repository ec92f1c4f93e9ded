"""moto's S3 + DynamoDB server with requests applied one at a time.

moto handles concurrent requests on threads without locking its in-memory backends, so two
racing conditional writes (or atomic ADDs) to one item can both apply. Real S3 and DynamoDB are
atomic per item; serialising requests gives the tests those semantics. Same arguments as
`moto_server`: -H HOST -p PORT.
"""
import argparse
import threading

from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    args = parser.parse_args()
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialised(environ, start_response):
        with lock:
            # Drain the response inside the lock: the backend work may be lazy.
            return list(app(environ, start_response))

    run_simple(
        args.host,
        args.port,
        serialised,
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
