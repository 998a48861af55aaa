"""`histoclass serve`: a run behind a web page and an HTTP API (FastAPI, uvicorn).

    from histoclass.serve import create_app
    app = create_app(histoclass.load_run("runs/idc"), token="secret")

`app.py` builds the app, `schemas.py` holds the typed requests and answers, `batcher.py` batches
concurrent requests for the model, `uploads.py` turns uploaded bytes into images (the training
decoder's guards), and `page.html` is the page, with no outside resources.
"""


def create_app(*args, **kwargs):
    from .app import create_app as _create_app
    return _create_app(*args, **kwargs)


__all__ = ["create_app"]
