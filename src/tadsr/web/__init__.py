"""The optional web page of ``tadsr serve`` (``pip install 'tadsr[web]'``): ``jobs`` (no Gradio) and ``page``."""
