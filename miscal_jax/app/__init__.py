"""The application above the core: CLI, reports, HTML, figures, file IO, text.

Nothing in the core imports from here; the app can be deleted without
touching the library.
"""
