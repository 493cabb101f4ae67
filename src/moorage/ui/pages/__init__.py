"""The dashboard's pages, one module each (``NAV`` and ``routes(ui)``); ``ui/app.py`` loads those present."""
