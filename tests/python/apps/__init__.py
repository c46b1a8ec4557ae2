"""Apps served by real servers in the middleware tests (uvicorn, gunicorn) and the
harness that starts, drives and stops them."""
