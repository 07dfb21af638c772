"""``ttk serve``: the OpenAI API and a web chat page over the inference engine.

``create_app(models)`` (``app.py``) builds the FastAPI app from ``ServedModel``s (``models.py``);
``protocol.py`` checks requests and builds responses. FastAPI and uvicorn are the optional extra
``serve`` and are imported only here, when a server is made.
"""
